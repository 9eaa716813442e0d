import math

import pytest
import torch
import torch.nn.functional as F

from stormvl.models.mamba import Mamba2Mixer, causal_depthwise_conv
from stormvl.models.temporal_encoder import TemporalEncoder
from stormvl.models.token_reduction import (reduce_tokens, reduced_token_count, spatial_pool, temporal_pool,
                                            temporal_sample)


def test_mixer_matches_transformers_mamba2():
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer

    torch.manual_seed(0)
    cfg = Mamba2Config(hidden_size=32, state_size=16, expand=2, head_dim=8, n_groups=2, conv_kernel=4,
                       chunk_size=16, num_heads=8, num_hidden_layers=1, use_bias=False, use_conv_bias=True)
    hf = HFMixer(cfg, 0).eval()
    with torch.no_grad():  # non-trivial weights everywhere
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = Mamba2Mixer(32, state_size=16, expand=2, head_dim=8, n_groups=2, conv_kernel=4, chunk_size=16)
    ours.load_state_dict(hf.state_dict())
    x = torch.randn(2, 45, 32)
    with torch.no_grad():
        ref, got = hf(x), ours(x)
    assert (got - ref).abs().max().item() < 1e-5
    assert ref.abs().max().item() > 1e-2


@pytest.mark.parametrize("k,l", [(4, 37), (4, 2), (3, 1), (1, 5)])
def test_causal_depthwise_conv_matches_conv1d(k, l):
    torch.manual_seed(3)
    c = 6
    x = torch.randn(2, l, c, dtype=torch.float64)
    history = torch.randn(2, k - 1, c, dtype=torch.float64)
    w, b = torch.randn(c, 1, k, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), w, b, groups=c).transpose(1, 2)
    assert torch.allclose(causal_depthwise_conv(x, w, b), ref, atol=1e-13)
    ref_h = F.conv1d(torch.cat([history, x], 1).transpose(1, 2), w, None, groups=c).transpose(1, 2)
    assert torch.allclose(causal_depthwise_conv(x, w, None, history), ref_h, atol=1e-13)


def test_mixer_streaming_state():
    torch.manual_seed(1)
    m = Mamba2Mixer(16, state_size=8, head_dim=8, chunk_size=8).double()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    whole = m(x)
    a, s = m(x[:, :11], return_state=True)
    b, _ = m(x[:, 11:], state=s, return_state=True)
    assert torch.allclose(torch.cat([a, b], 1), whole, atol=1e-12)
    # Pieces shorter than the conv kernel carry its history across more than one call.
    outs, s = [], None
    for lo, hi in [(0, 1), (1, 3), (3, 4), (4, 30)]:
        o, s = m(x[:, lo:hi], state=s, return_state=True)
        outs.append(o)
    assert torch.allclose(torch.cat(outs, 1), whole, atol=1e-12)


def _encoder(bidirectional, merge="add"):
    torch.manual_seed(2)
    enc = TemporalEncoder(16, 2, bidirectional=bidirectional, merge=merge, state_size=8, head_dim=8, chunk_size=8).double()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc


@pytest.mark.parametrize("bidirectional,merge", [(True, "add"), (True, "concat"), (False, "add")])
def test_encoder_shape_and_gradients(bidirectional, merge):
    enc = _encoder(bidirectional, merge)
    x = torch.randn(2, 3, 4, 16, dtype=torch.float64, requires_grad=True)
    y = enc(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_unidirectional_is_causal_and_bidirectional_is_not():
    x = torch.randn(1, 4, 4, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 3] += torch.randn(4, 16, dtype=torch.float64)  # change only the last frame
    uni, bi = _encoder(False), _encoder(True)
    assert torch.allclose(uni(x)[:, :3], uni(x2)[:, :3])
    assert not torch.allclose(bi(x)[:, :3], bi(x2)[:, :3])


def test_sweep_order_is_row_major_frame_by_frame():
    # In a uni-directional encoder, token (t, i) may depend only on tokens earlier in the sweep.
    enc = _encoder(False)
    x = torch.randn(1, 2, 4, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 1, 2] += torch.randn(16, dtype=torch.float64)  # frame 1, token 2
    diff = (enc(x) - enc(x2)).abs().sum(-1)[0]
    assert diff[0].max() == 0 and diff[1, :2].max() == 0
    assert diff[1, 2] > 0 and diff[1, 3] > 0


def test_streaming_clips_equal_one_pass():
    enc = _encoder(False)
    x = torch.randn(1, 6, 4, 16, dtype=torch.float64)
    whole = enc(x)
    a, s = enc(x[:, :2], return_state=True)
    b, s = enc(x[:, 2:5], state=s, return_state=True)
    c, _ = enc(x[:, 5:], state=s, return_state=True)
    assert torch.allclose(torch.cat([a, b, c], 1), whole, atol=1e-12)
    with pytest.raises(ValueError, match="uni-directional"):
        _encoder(True)(x, return_state=True)


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
