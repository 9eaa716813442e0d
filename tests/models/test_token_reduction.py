import math

import pytest
import torch

from stormvl.models.token_reduction import (
    reduce_tokens,
    reduced_token_count,
    spatial_pool,
    temporal_pool,
    temporal_sample,
)


def test_temporal_pool_values_and_ragged_tail():
    x = torch.arange(5, dtype=torch.float64).view(1, 5, 1, 1).expand(1, 5, 4, 2)
    y = temporal_pool(x, 2)
    assert y.shape == (1, 3, 4, 2)
    assert y[0, :, 0, 0].tolist() == [0.5, 2.5, 4.0]  # last group averages only frame 4


def test_spatial_pool_values():
    grid = torch.arange(16, dtype=torch.float64).view(1, 1, 16, 1)
    y = spatial_pool(grid, 2, (4, 4))
    assert y[0, 0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    with pytest.raises(ValueError, match="divisible"):
        spatial_pool(torch.zeros(1, 1, 9, 1), 2, (3, 3))


def test_temporal_sample_keeps_every_sth_frame():
    x = torch.arange(7.0).view(1, 7, 1, 1)
    assert temporal_sample(x, 2)[0, :, 0, 0].tolist() == [0, 2, 4, 6]
    with pytest.raises(ValueError):
        temporal_sample(x, 0)


@pytest.mark.parametrize("T", [1, 7, 32, 33, 64])
@pytest.mark.parametrize("kt,ks,s", [(1, 1, 1), (4, 1, 1), (1, 2, 1), (1, 1, 2), (4, 2, 1), (4, 1, 2), (4, 2, 2)])
def test_token_counts(T, kt, ks, s):
    x = torch.zeros(1, T, 16, 3)
    y = reduce_tokens(x, grid=(4, 4), temporal_pool_k=kt, spatial_pool_k=ks, temporal_sample_s=s)
    expected = math.ceil(math.ceil(T / kt) / s) * (16 // ks // ks)
    assert y.shape[1] * y.shape[2] == expected == reduced_token_count(T, (4, 4), kt, ks, s)


def test_bilinear_spatial_pool_takes_odd_grids_and_counts_with_ceil():
    x = torch.randn(2, 3, 25, 4, dtype=torch.float64)  # a 5x5 grid, as LLaVA-OneVision's 27x27 is odd
    y = spatial_pool(x, 2, (5, 5), "bilinear")
    assert y.shape == (2, 3, 9, 4) and reduced_token_count(3, (5, 5), 1, 2, 1) == 27
    flat = spatial_pool(torch.full((1, 1, 25, 2), 7.0, dtype=torch.float64), 2, (5, 5), "bilinear")
    assert torch.allclose(flat, torch.full((1, 1, 9, 2), 7.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown spatial pooling mode"):
        spatial_pool(x, 2, (5, 5), "nearest")
