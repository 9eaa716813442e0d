"""The vision side's own layers: pixel shuffle of a frame's patch tokens and the projector to the
LLM width. (Image preprocessing lives in `processing.py`; the vision tower is a transformers
model.)"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError


def pixel_shuffle(tokens: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """(F, grid*grid, C) -> (F, (g/f)^2, C*f^2): each f x f patch neighbourhood becomes one token.
    A grid not divisible by f is zero-padded on the bottom/right."""
    n, length, c = tokens.shape
    if length != grid * grid:
        raise ValueError(f"vision tower gave {length} tokens, expected a {grid}x{grid} grid")
    x = tokens.reshape(n, grid, grid, c)
    pad = (-grid) % factor
    if pad:
        x = F.pad(x, (0, 0, 0, pad, 0, pad))
    g = (grid + pad) // factor
    x = x.reshape(n, g, factor, g, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, factor * factor * c)


def cut_vision_tower(tower: nn.Module, layer: int) -> None:
    """Make `tower`'s last_hidden_state its hidden state `layer` (transformers' numbering: 0 the
    embeddings, -1 the last layer's output): the later layers and the final LayerNorm go, in
    place. Removed rather than skipped, so no parameter is dead weight (unused parameters break
    DDP) and saved folders hold only what runs. Needs a SigLIP- or CLIP-like tower."""
    body = getattr(tower, "vision_model", tower)  # transformers 5 dropped the `vision_model` level
    layers = getattr(getattr(body, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(body, "post_layernorm"):
        raise ConfigError(f"vision_feature_layer needs a SigLIP- or CLIP-like vision tower, not {type(tower).__name__}")
    states = len(layers) + 1  # the embeddings, then each layer's output
    if not -states <= layer < states:
        raise ConfigError(f"vision_feature_layer {layer} is out of range for a tower of {len(layers)} layers")
    body.encoder.layers = layers[: layer % states]
    body.post_layernorm = nn.Identity()


class TanhGELU(nn.Module):
    """GELU's tanh approximation, the activation of SigLIP towers (transformers' "gelu_pytorch_tanh"),
    at inference on CPU as x * sigmoid(2z), which equals 0.5 x (1 + tanh z) for z = sqrt(2/pi)
    (x + 0.044715 x^3): the same function, in one product and five in-place steps. PyTorch's CPU
    kernel for it is slow: on a (32, 64, 256) tensor (two threads) 516 us against 312 us for these
    steps and 92 us for the exact GELU, which made it 11% of the embedded tower's time. Where
    autograd needs the input's gradient, on other devices and in 16-bit floats PyTorch's kernel
    runs (in-place steps have no gradient; GPUs fuse it; each step would round to 16 bits, where
    the kernel computes in float32 and rounds once)."""

    SCALE = 2 * math.sqrt(2 / math.pi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
        if not fast or (torch.is_grad_enabled() and x.requires_grad):
            return F.gelu(x, approximate="tanh")
        y = x * x
        y.mul_(0.044715 * self.SCALE).add_(self.SCALE).mul_(x)  # 2z
        return y.sigmoid_().mul_(x)


def use_fast_gelu(module: nn.Module) -> None:
    """Swap transformers' tanh-GELU modules inside `module` for `TanhGELU`, in place. They hold no
    weights, so saved folders do not change."""
    from transformers.activations import ACT2CLS

    slow = ACT2CLS["gelu_pytorch_tanh"]
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is slow:
                setattr(parent, name, TanhGELU())


class Projector(nn.Module):
    """Pixel-shuffled vision features -> LLM width. "linear" is STORM's; "mlp" is VILA's
    (LayerNorm, Linear, GELU, Linear: its "mlp_downsample" projector after the 2x2 shuffle);
    "mlp2x_gelu" is LLaVA's (Linear, GELU, Linear)."""

    def __init__(self, in_dim: int, out_dim: int, kind: str):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
            )
        elif kind == "mlp2x_gelu":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        else:
            raise ValueError(f"unknown projector {kind!r}")

    def forward(self, x):
        return self.net(x)
