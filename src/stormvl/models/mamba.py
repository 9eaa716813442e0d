"""The Mamba mixers of the temporal encoder: Mamba-2 on top of `ops.ssd`, Mamba-1 on top of
`ops.selective_scan`.

Mamba-2's parameter names and layout match `transformers`' `Mamba2Mixer` (in_proj, conv1d, dt_bias, A_log,
D, norm, out_proj), so weights move between the two and a test pins the outputs together. The
STORM paper names Mamba-1 (Gu & Dao's selective SSM); `Mamba1Mixer` below is that block, with
transformers' `MambaMixer` weight names. Mamba-2 is offered beside it because its scan is
matmul-bound and fast on CPU and GPU alike; `StormConfig.mamba_version` picks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.selective_scan import selective_scan
from ..ops.ssd import ssd_scan


@dataclass
class MambaState:
    """What a stream carries from one clip to the next: the last (kernel - 1) conv inputs and the
    SSM state."""

    conv: torch.Tensor  # (b, conv_dim, kernel - 1)
    ssm: torch.Tensor  # Mamba-2: (b, heads, head_dim, state_size); Mamba-1: (b, d_inner, state_size)


class GatedRMSNorm(nn.Module):
    """RMSNorm of y * silu(z), normalised per group of channels (Mamba-2's norm_before_gate=False)."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y, z):
        dtype = y.dtype
        cd = torch.promote_types(dtype, torch.float32)  # at least float32 (half-precision sums drift)
        h = F.silu(z.to(cd)).mul_(y.to(cd))  # in place: one pass fewer over (..., c)
        if not torch.is_grad_enabled():
            # Inference: one reduction and two in-place scalings, where F.rms_norm makes four
            # passes over (..., c) on CPU (square, mean, scale, weight).
            hg = h.unflatten(-1, (-1, self.group_size))
            sq = torch.linalg.vector_norm(hg, dim=-1, keepdim=True).square_()
            hg.mul_(sq.div_(self.group_size).add_(self.eps).rsqrt_())
            return h.mul_(self.weight.to(cd)).to(dtype)
        if h.shape[-1] == self.group_size:  # one group: the fused kernel applies the weight too
            return F.rms_norm(h, (self.group_size,), self.weight.to(cd), self.eps).to(dtype)
        hg = F.rms_norm(h.unflatten(-1, (-1, self.group_size)), (self.group_size,), eps=self.eps)
        return self.weight * hg.flatten(-2).to(dtype)


def causal_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, history: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal depthwise conv over time in token-major layout: x (b, l, c), weight (c, 1, k) as in
    `nn.Conv1d(c, c, k, groups=c)`, history (b, k - 1, c) = the inputs before x (zeros if None).

    Written as k shifted multiply-adds because oneDNN's grouped conv1d is 3-4x slower than this
    on CPU at STORM's lengths (thousands of tokens, ~1k channels) and needs two transposes; each
    tap adds into a slice of the output, so the input is never padded or copied."""
    b, l, c = x.shape
    k = weight.shape[-1]
    w = weight[:, 0, :].to(x.dtype)  # (c, k): tap k - 1 reads x[t], tap k - 1 - s reads x[t - s]
    out = x * w[:, k - 1] if bias is None else torch.addcmul(bias.to(x.dtype), x, w[:, k - 1])
    for s in range(1, k):
        out[:, s:].addcmul_(x[:, : l - s], w[:, k - 1 - s])
        if history is not None and l > 0:  # the first rows read the inputs before x
            m = min(s, l)
            out[:, :m].addcmul_(history[:, k - 1 - s : k - 1 - s + m].to(x.dtype), w[:, k - 1 - s])
    return out


def dt_bias_init(n: int, dt_min: float, dt_max: float, dt_floor: float) -> torch.Tensor:
    """Mamba's dt initialisation: dt log-uniform in [dt_min, dt_max] (floored), stored as the bias
    whose softplus gives it. (n,)"""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def conv_history(history: torch.Tensor | None, conv_in: torch.Tensor, kernel: int) -> torch.Tensor:
    """The conv state a stream carries to its next clip: the last (kernel - 1) conv inputs, from
    the previous history (b, k - 1, c) and this clip's inputs (b, l, c) -> (b, c, k - 1)."""
    b, l, c = conv_in.shape
    k = kernel - 1
    prev = history if history is not None else conv_in.new_zeros(b, k, c)
    # Only the tail is needed: concatenating the whole clip would copy it for three rows.
    tail = torch.cat([prev.to(conv_in.dtype), conv_in[:, max(0, l - k) :]], dim=1)
    return tail[:, tail.shape[1] - k :].transpose(1, 2).detach()


SEGMENT_TOKENS = 2048


def segmented(mix, hidden_states: torch.Tensor, state, return_state: bool, *, reverse=False, add_to=None):
    """Run a mixer's `mix(h, state, return_state) -> (out, state)` over (b, l, d) inputs.

    Without gradients, inputs longer than SEGMENT_TOKENS go through `mix` a segment at a time,
    carrying the conv and SSM state, which is exact (the stream's own mechanism) and keeps every
    intermediate (up to ~7 wide copies of each token) cache-sized, so the elementwise passes run
    from cache instead of memory (with Mamba2Mixer's split projections, the encoder ran 1.4x faster
    at 8k tokens and 1.8x at 64k on CPU), and peak memory stops growing with the video. Training
    keeps one pass, since the carried state is detached.

    `reverse` scans from the last token to the first (a bidirectional layer's backward mixer),
    flipping one segment at a time rather than the whole video; `add_to` (b, l, d_model) takes the
    output added in place instead of a new tensor."""
    l = hidden_states.shape[1]
    size = max(l, 1) if torch.is_grad_enabled() or l <= SEGMENT_TOKENS else SEGMENT_TOKENS
    bounds = [(s, min(l, s + size)) for s in range(0, max(l, 1), size)]
    if reverse:
        bounds = [(l - e, l - s) for s, e in bounds]
    outs = []
    for s, e in bounds:
        h = hidden_states[:, s:e]
        out, state = mix(h.flip(1) if reverse else h, state, return_state or len(bounds) > 1)
        out = out.flip(1) if reverse else out
        if add_to is None:
            outs.append(out)
        else:
            add_to[:, s:e] += out
    if add_to is not None:
        out = add_to
    elif len(outs) > 1:
        out = torch.cat(outs[::-1] if reverse else outs, dim=1)  # (b, l, d_model)
    return (out, state) if return_state else out


class Mamba2Mixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        *,
        state_size: int = 64,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        conv_kernel: int = 4,
        chunk_size: int = 64,
        eps: float = 1e-5,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        scan_impl: str = "auto",
    ):
        super().__init__()
        self.d_model = d_model
        self.d_inner = expand * d_model
        if self.d_inner % head_dim:
            raise ValueError(f"expand*d_model ({self.d_inner}) must be a multiple of head_dim ({head_dim})")
        self.head_dim = head_dim
        self.num_heads = self.d_inner // head_dim
        if self.num_heads % n_groups:
            raise ValueError(f"mamba heads ({self.num_heads}) must be a multiple of n_groups ({n_groups})")
        self.n_groups = n_groups
        self.state_size = state_size
        self.conv_kernel = conv_kernel
        self.chunk_size = chunk_size
        self.scan_impl = scan_impl
        self.conv_dim = self.d_inner + 2 * n_groups * state_size
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.num_heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim, padding=conv_kernel - 1, bias=True
        )
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // n_groups, eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._dt_range = (dt_min, dt_max, dt_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        # Mamba-2's initialisation: A = -[1..H], D = 1, dt log-uniform in [dt_min, dt_max].
        dt_min, dt_max, dt_floor = self._dt_range
        self.A_log.copy_(torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        self.dt_bias.copy_(dt_bias_init(self.num_heads, dt_min, dt_max, dt_floor))

    def init_state(self, batch: int, device=None, dtype=None) -> MambaState:
        return MambaState(
            conv=torch.zeros(batch, self.conv_dim, self.conv_kernel - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.num_heads, self.head_dim, self.state_size, device=device, dtype=dtype),
        )

    def forward(
        self, hidden_states, state: MambaState | None = None, return_state=False, *, reverse=False, add_to=None
    ):
        return segmented(self._mix, hidden_states, state, return_state, reverse=reverse, add_to=add_to)

    def _mix(self, hidden_states: torch.Tensor, state: MambaState | None, return_state: bool):
        b, l, _ = hidden_states.shape
        # Three products on row blocks of in_proj instead of one: a 1676-wide output runs at about
        # half the matmul speed of 768/896-wide ones on CPU, and xBC comes out contiguous for the conv.
        w_z, w_xBC, w_dt = self.in_proj.weight.split([self.d_inner, self.conv_dim, self.num_heads])
        z, xBC, dt = F.linear(hidden_states, w_z), F.linear(hidden_states, w_xBC), F.linear(hidden_states, w_dt)
        history = None if state is None else state.conv.transpose(1, 2)
        conv_in = xBC  # before the conv: its last (kernel - 1) rows are the next clip's history
        xBC = F.silu(causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias, history))
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.state_size, self.n_groups * self.state_size], dim=-1)
        # The scan runs in at least float32 (bf16 cumulative decays drift); float64 stays float64.
        cd = torch.promote_types(hidden_states.dtype, torch.float32)
        A = -torch.exp(self.A_log.to(cd))
        y, ssm_state = ssd_scan(
            x.reshape(b, l, self.num_heads, self.head_dim).to(cd),
            dt.to(cd),
            A,
            B.reshape(b, l, self.n_groups, self.state_size).to(cd),
            C.reshape(b, l, self.n_groups, self.state_size).to(cd),
            self.D.to(cd),
            chunk_size=self.chunk_size,
            dt_bias=self.dt_bias.to(cd),
            dt_softplus=True,
            initial_state=None if state is None else state.ssm.to(cd),
            return_final_state=True,
            impl=self.scan_impl,
        )
        y = self.norm(y.reshape(b, l, self.d_inner), z.to(cd))
        out = self.out_proj(y.to(hidden_states.dtype))
        if not return_state:
            return out, None
        return out, MambaState(conv=conv_history(history, conv_in, self.conv_kernel), ssm=ssm_state.detach())


class Mamba1Mixer(nn.Module):
    """Mamba-1 (S6) mixer, the block the STORM paper names. Parameter names and layout match
    `transformers`' `MambaMixer` (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so its
    weights load directly and a test pins the outputs together."""

    def __init__(self, d_model: int, *, state_size: int = 16, expand: int = 2, conv_kernel: int = 4,
                 dt_rank: int | None = None, chunk_size: int = 256, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_floor: float = 1e-4, scan_impl: str = "auto"):  # fmt: skip
        super().__init__()
        self.d_model = d_model
        self.d_inner = expand * d_model
        self.state_size = state_size
        self.conv_kernel = conv_kernel
        self.dt_rank = dt_rank or math.ceil(d_model / 16)  # Mamba's default
        self.chunk_size = chunk_size
        self.scan_impl = scan_impl
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, conv_kernel, groups=self.d_inner,
                                padding=conv_kernel - 1, bias=True)  # fmt: skip
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, state_size))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._dt_range = (dt_min, dt_max, dt_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        # Mamba-1's initialisation: S4D-real A = -[1..n] per channel, D = 1, dt log-uniform in
        # [dt_min, dt_max] through the dt_proj bias (inverse softplus), dt_proj weight ~ U(+-rank^-0.5).
        dt_min, dt_max, dt_floor = self._dt_range
        a = torch.arange(1, self.state_size + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(a).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        bound = self.dt_rank**-0.5
        self.dt_proj.weight.uniform_(-bound, bound)
        self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_floor))

    def init_state(self, batch: int, device=None, dtype=None) -> MambaState:
        return MambaState(
            conv=torch.zeros(batch, self.d_inner, self.conv_kernel - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.state_size, device=device, dtype=dtype),
        )

    def forward(
        self, hidden_states, state: MambaState | None = None, return_state=False, *, reverse=False, add_to=None
    ):
        return segmented(self._mix, hidden_states, state, return_state, reverse=reverse, add_to=add_to)

    def _mix(self, hidden_states: torch.Tensor, state: MambaState | None, return_state: bool):
        b, l, _ = hidden_states.shape
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (b, l, d_inner) each
        history = None if state is None else state.conv.transpose(1, 2)
        conv_in = x  # before the conv: its last (kernel - 1) rows are the next clip's history
        x = F.silu(causal_depthwise_conv(x, self.conv1d.weight, self.conv1d.bias, history))  # (b, l, d_inner)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        dt = dt @ self.dt_proj.weight.t()  # (b, l, d_inner); the bias goes in as the scan's delta_bias
        # The scan runs in at least float32 (bf16 decays drift); float64 stays float64.
        cd = torch.promote_types(hidden_states.dtype, torch.float32)
        y, ssm_state = selective_scan(
            x.transpose(1, 2).to(cd), dt.transpose(1, 2).to(cd), -torch.exp(self.A_log.to(cd)),
            B.transpose(1, 2).to(cd), C.transpose(1, 2).to(cd), self.D.to(cd), z=z.transpose(1, 2).to(cd),
            delta_bias=self.dt_proj.bias.to(cd), delta_softplus=True, return_last_state=True,
            initial_state=None if state is None else state.ssm.to(cd), chunk_size=self.chunk_size,
            impl=self.scan_impl,
        )  # fmt: skip
        out = self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))  # (b, l, d_model)
        if not return_state:
            return out, None
        return out, MambaState(conv=conv_history(history, conv_in, self.conv_kernel), ssm=ssm_state.detach())
