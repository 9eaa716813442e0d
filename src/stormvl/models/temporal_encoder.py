"""STORM's temporal encoder: L pre-norm residual Mamba layers, X = X + Mixer(LayerNorm(X)), over
every token of the video in one sweep (left-to-right, top-to-bottom, frame-to-frame).

Because the scan runs across frame boundaries, each output token carries the history of the
tokens before it (and, bidirectionally, after it); that is what lets the reducer average or drop
frames afterwards without losing the video's dynamics.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .mamba import Mamba1Mixer, Mamba2Mixer, MambaState


class TemporalEncoderLayer(nn.Module):
    def __init__(self, d_model: int, *, bidirectional: bool, merge: str, version: int = 2, **mixer_kwargs):
        super().__init__()
        mixer_cls = {1: Mamba1Mixer, 2: Mamba2Mixer}[version]
        self.norm = nn.LayerNorm(d_model)
        self.forward_mixer = mixer_cls(d_model, **mixer_kwargs)
        self.bidirectional = bidirectional
        self.merge = merge
        if bidirectional:
            self.backward_mixer = mixer_cls(d_model, **mixer_kwargs)
            if merge == "concat":
                self.merge_proj = nn.Linear(2 * d_model, d_model, bias=False)

    def forward(self, x, state: MambaState | None = None, return_state: bool = False):
        h = self.norm(x)
        if not self.bidirectional:
            out = self.forward_mixer(h, state=state, return_state=return_state)
            if return_state:
                out, state = out
                return x + out, state
            return x + out
        if self.merge == "add" and not torch.is_grad_enabled():
            # Inference adds both directions into one buffer: no whole-video flips or sums.
            out = x.clone()
            self.forward_mixer(h, add_to=out)
            self.backward_mixer(h, reverse=True, add_to=out)
            return out
        fwd = self.forward_mixer(h)
        bwd = self.backward_mixer(h, reverse=True)
        mixed = self.merge_proj(torch.cat([fwd, bwd], -1)) if self.merge == "concat" else fwd + bwd
        return x + mixed


class TokenMLP(nn.Module):
    """in_proj -> GELU -> out_proj on each token alone."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, hidden)
        self.out_proj = nn.Linear(hidden, d_model)

    def forward(self, x):
        return self.out_proj(nn.functional.gelu(self.in_proj(x)))


class TokenMLPLayer(nn.Module):
    """The ablation's capacity-matched control for a temporal encoder layer: the same pre-norm
    residual form and, by choice of `hidden`, the same parameter count, but every token is
    transformed alone, so nothing moves between tokens or frames. What STORM gains over this
    control is the temporal mixing, not the extra layers."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.forward_mixer = TokenMLP(d_model, hidden)

    def forward(self, x, state=None, return_state: bool = False):
        if state is not None or return_state:
            raise ValueError("the token_mlp control has no scan state to stream")
        return x + self.forward_mixer(self.norm(x))


def matched_mlp_hidden(mamba_layer_params: int, d_model: int) -> int:
    """Hidden width h with LayerNorm (2d) + Linear(d, h) + Linear(h, d) as close as possible to
    `mamba_layer_params`: 2d + (d + 1)h + (h + 1)d = p."""
    return max(1, round((mamba_layer_params - 3 * d_model) / (2 * d_model + 1)))


class TemporalEncoder(nn.Module):
    """Input and output (B, T, N, D): T frames of N = h*w tokens in row-major order."""

    def __init__(
        self,
        d_model: int,
        num_layers: int = 2,
        *,
        bidirectional: bool = True,
        merge: str = "add",
        state_size: int = 64,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        conv_kernel: int = 4,
        chunk_size: int = 64,
        scan_impl: str = "auto",
        version: int = 2,
        dt_rank: int | None = None,
        mixer: str = "mamba",
    ):
        super().__init__()
        if merge not in ("add", "concat"):
            raise ValueError(f"temporal encoder merge must be 'add' or 'concat', got {merge!r}")
        if num_layers < 1:
            raise ValueError("temporal encoder needs at least one layer")
        if mixer not in ("mamba", "token_mlp"):
            raise ValueError(f"temporal mixer must be 'mamba' or 'token_mlp', got {mixer!r}")
        if version not in (1, 2):
            raise ValueError(f"mamba version must be 1 or 2, got {version!r}")
        mamba = dict(
            state_size=state_size, expand=expand, conv_kernel=conv_kernel, scan_impl=scan_impl, version=version
        )
        if version == 2:  # heads, groups and the SSD chunk are Mamba-2's; dt_rank is Mamba-1's
            mamba.update(head_dim=head_dim, n_groups=n_groups, chunk_size=chunk_size)
        else:
            mamba.update(dt_rank=dt_rank)
        self.bidirectional = bidirectional

        def mamba_layer():
            return TemporalEncoderLayer(d_model, bidirectional=bidirectional, merge=merge, **mamba)

        if mixer == "token_mlp":
            with torch.device("meta"):  # only to count the parameters to match
                params = sum(p.numel() for p in mamba_layer().parameters())
            hidden = matched_mlp_hidden(params, d_model)
            self.layers = nn.ModuleList(TokenMLPLayer(d_model, hidden) for _ in range(num_layers))
        else:
            self.layers = nn.ModuleList(mamba_layer() for _ in range(num_layers))

    def forward(self, x: torch.Tensor, state: list[MambaState] | None = None, return_state: bool = False):
        """`state`/`return_state` stream a uni-directional encoder: the state returned for one clip,
        passed with the next, gives the same tokens as encoding both clips at once."""
        if x.dim() != 4:
            raise ValueError(f"temporal encoder expects (B, T, N, D), got {tuple(x.shape)}")
        if (state is not None or return_state) and self.bidirectional:
            raise ValueError("streaming state needs a uni-directional temporal encoder (bidirectional=False)")
        b, t, n, d = x.shape
        h = x.reshape(b, t * n, d)  # row-major flatten == the paper's sweep order
        new_states = []
        for i, layer in enumerate(self.layers):
            if return_state or state is not None:
                h, s = layer(h, state=None if state is None else state[i], return_state=True)
                new_states.append(s)
            else:
                h = layer(h)
        h = h.reshape(b, t, n, d)
        return (h, new_states) if return_state else h
