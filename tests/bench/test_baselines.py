import pytest
import torch

from stormvl.bench.baselines import merge_adjacent, random_drop


def test_random_drop_keeps_k_tokens_in_order_and_is_seeded():
    t, n, d = 4, 3, 5
    x = torch.arange(t * n, dtype=torch.float64)[:, None].expand(-1, d).reshape(t, n, d).clone()
    out = random_drop(x, 5, torch.Generator().manual_seed(1))
    assert out.shape == (5, d)
    ids = out[:, 0].tolist()
    assert ids == sorted(ids) and len(set(ids)) == 5  # distinct tokens, temporal order kept
    again = random_drop(x, 5, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def _brute_force_merge(x, k):
    """Reference: runs as python lists of (first frame, [frames]), similarity of plain means."""
    t, n, _ = x.shape
    runs = [[[i] for i in range(t)] for _ in range(n)]
    while sum(len(r) for r in runs) > k:
        best = None
        for p, r in enumerate(runs):
            for j in range(len(r) - 1):
                u, v = x[r[j], p].mean(0), x[r[j + 1], p].mean(0)
                s = float(torch.dot(u, v) / (u.norm() * v.norm()))
                if best is None or s > best[0]:
                    best = (s, p, j)
        _, p, j = best
        runs[p][j : j + 2] = [runs[p][j] + runs[p][j + 1]]
    kept = sorted((frames[0], p, x[frames, p].mean(0)) for p, r in enumerate(runs) for frames in r)
    return torch.stack([tok for _, _, tok in kept])


@pytest.mark.parametrize("k", [12, 9, 5, 3])
def test_merge_adjacent_matches_a_brute_force_reference(k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(merge_adjacent(x, k), _brute_force_merge(x, k), rtol=0, atol=1e-12)


def test_merge_adjacent_merges_the_repeated_frame_first():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 8, generator=g)
    x[2] = x[1]  # frame 2 repeats frame 1 at every position
    out = merge_adjacent(x, 6)
    # Both positions of frame 2 merged into frame 1: frames 0, 1, 3 remain, each token unchanged.
    torch.testing.assert_close(out, x[[0, 1, 3]].reshape(6, 8))


def test_bad_counts_are_refused():
    x = torch.zeros(2, 2, 3)
    for f in (random_drop, merge_adjacent):
        with pytest.raises(ValueError, match="cannot keep"):
            f(x, 5)
        with pytest.raises(ValueError, match="cannot keep"):
            f(x, 0)
    with pytest.raises(ValueError, match=r"\(T, N, D\)"):
        merge_adjacent(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="one token per position"):
        merge_adjacent(torch.zeros(3, 2, 4), 1)
