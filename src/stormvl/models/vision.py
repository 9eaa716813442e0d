"""Frames -> per-frame patch tokens at the LLM width: image preprocessing, the vision tower run in
frame chunks (memory stays bounded however long the video), 2x2 pixel shuffle and the projector."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def preprocess_frames(frames, image_size: int, mean, std) -> torch.Tensor:
    """uint8 RGB (T, H, W, 3) -> float (T, 3, S, S), resized with antialiasing and normalised."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


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


class Projector(nn.Module):
    """Pixel-shuffled vision features -> LLM width. "linear" is STORM's; "mlp" is VILA's."""

    def __init__(self, in_dim: int, out_dim: int, kind: str):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        else:
            raise ValueError(f"unknown projector {kind!r}")

    def forward(self, x):
        return self.net(x)
