import pytest
import torch

from stormvl.models.temporal_encoder import TemporalEncoder

VERSIONS = pytest.mark.parametrize("version", [1, 2])


def _encoder(bidirectional, merge="add", version=2):
    torch.manual_seed(2)
    enc = TemporalEncoder(
        16, 2, bidirectional=bidirectional, merge=merge, state_size=8, head_dim=8, chunk_size=8, version=version
    ).double()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc


@VERSIONS
@pytest.mark.parametrize("bidirectional,merge", [(True, "add"), (True, "concat"), (False, "add")])
def test_encoder_shape_and_gradients(bidirectional, merge, version):
    enc = _encoder(bidirectional, merge, version)
    x = torch.randn(2, 3, 4, 16, dtype=torch.float64, requires_grad=True)
    y = enc(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


@VERSIONS
def test_unidirectional_is_causal_and_bidirectional_is_not(version):
    x = torch.randn(1, 4, 4, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 3] += torch.randn(4, 16, dtype=torch.float64)  # change only the last frame
    uni, bi = _encoder(False, version=version), _encoder(True, version=version)
    assert torch.allclose(uni(x)[:, :3], uni(x2)[:, :3])
    assert not torch.allclose(bi(x)[:, :3], bi(x2)[:, :3])


@VERSIONS
def test_sweep_order_is_row_major_frame_by_frame(version):
    # In a uni-directional encoder, token (t, i) may depend only on tokens earlier in the sweep.
    enc = _encoder(False, version=version)
    x = torch.randn(1, 2, 4, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 1, 2] += torch.randn(16, dtype=torch.float64)  # frame 1, token 2
    diff = (enc(x) - enc(x2)).abs().sum(-1)[0]
    assert diff[0].max() == 0 and diff[1, :2].max() == 0
    assert diff[1, 2] > 0 and diff[1, 3] > 0


@VERSIONS
def test_streaming_clips_equal_one_pass(version):
    enc = _encoder(False, version=version)
    x = torch.randn(1, 6, 4, 16, dtype=torch.float64)
    whole = enc(x)
    a, s = enc(x[:, :2], return_state=True)
    b, s = enc(x[:, 2:5], state=s, return_state=True)
    c, _ = enc(x[:, 5:], state=s, return_state=True)
    assert torch.allclose(torch.cat([a, b, c], 1), whole, atol=1e-12)
    with pytest.raises(ValueError, match="uni-directional"):
        _encoder(True)(x, return_state=True)


@VERSIONS
@pytest.mark.parametrize("bidirectional", [True, False])
def test_token_mlp_control_matches_capacity_and_mixes_nothing(version, bidirectional):
    kw = dict(bidirectional=bidirectional, state_size=8, head_dim=8, version=version)
    mamba = TemporalEncoder(16, 2, **kw)
    control = TemporalEncoder(16, 2, mixer="token_mlp", **kw).double()
    n_mamba = sum(p.numel() for p in mamba.parameters())
    n_control = sum(p.numel() for p in control.parameters())
    # Within one hidden unit's worth of parameters (2d + 1 per layer).
    assert abs(n_control - n_mamba) <= 2 * (2 * 16 + 1)
    # Changing one token changes that token's output only: no mixing across tokens or frames.
    x = torch.randn(1, 3, 4, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 1, 2] += 1.0
    changed = (control(x) - control(x2)).abs().sum(-1) > 0
    expected = torch.zeros(1, 3, 4, dtype=torch.bool)
    expected[0, 1, 2] = True
    assert torch.equal(changed, expected)
    with pytest.raises(ValueError, match="no scan state" if not bidirectional else "uni-directional"):
        control(x, return_state=True)


def test_token_mlp_control_starts_as_identity_in_the_model(tiny_model):
    model, _ = tiny_model(temporal_mixer="token_mlp")
    x = torch.randn(1, 2, 4, model.config.text_config.hidden_size)
    assert torch.equal(model.temporal_encoder(x), x)
    assert model.temporal_encoder.layers[0].forward_mixer.in_proj.out_features > 1
