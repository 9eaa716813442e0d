"""Training-free token reductions from the literature, to compare STORM's against at equal token
counts (benchmarks/reduction_curve.py). Each takes one video's tokens after the model's own
pooling, (T, N, D) on T frames (or pooled frame groups) of N tokens, and returns (K, D) tokens in
temporal order, K <= T * N.

  random_drop      keep K tokens chosen at random (order kept): the floor any method must beat
  merge_adjacent   merge the most similar pair of same-position tokens in adjacent frames, again
                   and again, until K remain (the redundancy DyCoke and FrameFusion remove)

Uniform frame dropping before the encoder needs no code here: decode fewer frames.
"""

from __future__ import annotations

import torch


def _check(x: torch.Tensor, k: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected one video's tokens (T, N, D), got {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0] * x.shape[1]:
        raise ValueError(f"cannot keep {k} of {x.shape[0] * x.shape[1]} tokens")


def random_drop(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    _check(x, k)
    flat = x.reshape(-1, x.shape[-1])  # (T * N, D), time-major
    keep = torch.randperm(flat.shape[0], generator=generator)[:k].sort().values
    return flat[keep]


def merge_adjacent(x: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy: while more than K tokens remain, average (weighted by how many tokens each already
    holds) the pair with the highest cosine similarity among tokens at the same spatial position
    in consecutive kept frames. The merged token takes the earlier frame's place."""
    _check(x, k)
    t, n, d = x.shape
    if k < n:
        raise ValueError(f"merging across frames keeps at least one token per position ({n}), cannot keep {k}")
    # One run of tokens per spatial position: [(first frame, sum of tokens, count), ...].
    runs = [[(i, x[i, p].double(), 1) for i in range(t)] for p in range(n)]

    def sim(a, b):
        u, v = a[1] / a[2], b[1] / b[2]
        return float(torch.nn.functional.cosine_similarity(u, v, dim=0))

    total = t * n
    while total > k:
        best = max(
            ((sim(r[j], r[j + 1]), p, j) for p, r in enumerate(runs) for j in range(len(r) - 1)), key=lambda s: s[0]
        )
        _, p, j = best
        a, b = runs[p][j], runs[p][j + 1]
        runs[p][j : j + 2] = [(a[0], a[1] + b[1], a[2] + b[2])]
        total -= 1
    kept = sorted((first, p, s / c) for p, r in enumerate(runs) for first, s, c in r)
    return torch.stack([tok for _, _, tok in kept]).to(x.dtype)  # (K, D), by frame then position
