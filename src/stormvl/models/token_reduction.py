"""STORM's token reduction on (B, T, N, D) tokens with N = h*w on a row-major grid.

Counts, with T frames on an h x w grid:
  temporal pooling by k_t   -> ceil(T / k_t) frames; the last group averages only the frames it has
                               (no padding frames are invented), so T need not divide by k_t
  spatial pooling by k_s    -> (h / k_s) * (w / k_s) tokens per frame; h and w must divide by k_s;
                               bilinear mode (LLaVA-OneVision's) resizes to ceil(h / k_s) x ceil(w / k_s)
  temporal sampling by s    -> ceil(T' / s) frames: frames 0, s, 2s, ... of what reaches it
Pooling runs first, then sampling, so a model trained with pooling sees the same kind of token
at test time (each still an average of k_t consecutive encoded frames).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def temporal_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    if k < 1:
        raise ValueError(f"temporal pooling factor must be >= 1, got {k}")
    if k == 1:
        return x
    b, t, n, d = x.shape
    groups = math.ceil(t / k)
    full = (t // k) * k
    out = x[:, :full].reshape(b, t // k, k, n, d).mean(2)
    if full < t:
        out = torch.cat([out, x[:, full:].mean(1, keepdim=True)], dim=1)
    assert out.shape[1] == groups
    return out


def spatial_pool(x: torch.Tensor, k: int, grid: tuple[int, int], mode: str = "average") -> torch.Tensor:
    if k < 1:
        raise ValueError(f"spatial pooling factor must be >= 1, got {k}")
    if k == 1:
        return x
    h, w = grid
    b, t, n, d = x.shape
    if n != h * w:
        raise ValueError(f"spatial pooling: {n} tokens do not form a {h}x{w} grid")
    y = x.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # (b*t, d, h, w)
    if mode == "bilinear":
        size = (math.ceil(h / k), math.ceil(w / k))
        y = F.interpolate(y, size=size, mode="bilinear")
    elif mode == "average":
        if h % k or w % k:
            raise ValueError(f"spatial pooling by {k} needs a grid divisible by {k}, got {h}x{w}")
        y = F.avg_pool2d(y, kernel_size=k, stride=k)
    else:
        raise ValueError(f"unknown spatial pooling mode {mode!r}")
    return y.permute(0, 2, 3, 1).reshape(b, t, y.shape[2] * y.shape[3], d)


def temporal_sample(x: torch.Tensor, s: int) -> torch.Tensor:
    if s < 1:
        raise ValueError(f"temporal sampling stride must be >= 1, got {s}")
    return x if s == 1 else x[:, ::s]


def reduce_tokens(x, *, grid, temporal_pool_k=1, spatial_pool_k=1, temporal_sample_s=1, spatial_mode="average"):
    x = temporal_pool(x, temporal_pool_k)
    x = spatial_pool(x, spatial_pool_k, grid, spatial_mode)
    return temporal_sample(x, temporal_sample_s)


def reduced_token_count(
    num_frames: int, grid: tuple[int, int], temporal_pool_k=1, spatial_pool_k=1, temporal_sample_s=1
) -> int:
    """Frame tokens after the reduction (either spatial mode: average pooling needs a divisible grid)."""
    t = math.ceil(math.ceil(num_frames / temporal_pool_k) / temporal_sample_s)
    return t * math.ceil(grid[0] / spatial_pool_k) * math.ceil(grid[1] / spatial_pool_k)
