import pytest
import torch
import torch.nn.functional as F

from stormvl.models.mamba import Mamba1Mixer, Mamba2Mixer, causal_depthwise_conv


def test_mixer_matches_transformers_mamba2():
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer

    torch.manual_seed(0)
    cfg = Mamba2Config(
        hidden_size=32,
        state_size=16,
        expand=2,
        head_dim=8,
        n_groups=2,
        conv_kernel=4,
        chunk_size=16,
        num_heads=8,
        num_hidden_layers=1,
        use_bias=False,
        use_conv_bias=True,
    )
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


# transformers computes A = -exp(A_log.float()) in float32 even for a float64 model: that bounds the
# float64 agreement; the float64 reference check is ops/test_selective_scan.py's.
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_mamba1_mixer_matches_transformers_mamba_mixer(dtype, tol):
    """Same weights (loaded by name, strictly), same outputs as transformers' MambaMixer torch path."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    torch.manual_seed(0)
    cfg = MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, time_step_rank=4, use_bias=False,
                      use_conv_bias=True)  # fmt: skip
    ref = MambaMixer(cfg, layer_idx=0).to(dtype).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the initialisation's symmetries
    ours = Mamba1Mixer(32, state_size=8, expand=2, conv_kernel=4, dt_rank=4, chunk_size=16).to(dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 70, 32, dtype=dtype)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert (want - got).abs().max() < tol * want.abs().max()


def test_mamba1_mixer_streaming_state():

    torch.manual_seed(1)
    m = Mamba1Mixer(16, state_size=8, chunk_size=8).double()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    whole = m(x)
    outs, s = [], None
    for lo, hi in [(0, 1), (1, 3), (3, 11), (11, 30)]:  # pieces shorter than the conv kernel too
        o, s = m(x[:, lo:hi], state=s, return_state=True)
        outs.append(o)
    assert torch.allclose(torch.cat(outs, 1), whole, atol=1e-12)
    assert s.ssm.shape == (1, 32, 8) and s.conv.shape == (1, 32, 3)


@pytest.mark.parametrize("group_size", [4, 8])  # two groups, and one (the fused kernel with its weight)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_gated_norm_computes_in_the_inputs_precision(dtype, tol, group_size):
    from stormvl.models.mamba import GatedRMSNorm

    torch.manual_seed(0)
    norm = GatedRMSNorm(8, group_size=group_size).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    y, z = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)

    def reference(y, z, w):  # float64, written out
        h = (y * z * torch.sigmoid(z)).view(3, -1, group_size)
        return (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + norm.eps)).view(3, 8) * w

    want = reference(y, z, norm.weight.double())
    got = norm(y.to(dtype), z.to(dtype))
    assert got.dtype == dtype and (got.double() - want).abs().max() < tol
    with torch.no_grad():  # inference's own in-place path
        got = norm(y.to(dtype), z.to(dtype))
    assert got.dtype == dtype and (got.double() - want).abs().max() < tol
    if dtype == torch.float64:  # gradients too, for every input
        yr, zr = y.clone().requires_grad_(), z.clone().requires_grad_()
        g = torch.randn(3, 8, dtype=torch.float64)
        (norm(yr, zr) * g).sum().backward()
        ref = [t.clone().requires_grad_() for t in (y, z, norm.weight.detach())]
        (reference(*ref) * g).sum().backward()
        for a, b in zip((yr.grad, zr.grad, norm.weight.grad), (r.grad for r in ref)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("version", [1, 2])
def test_long_inputs_without_gradients_run_in_segments_exactly(version, monkeypatch):
    """Inference splits long inputs into segments carrying the state: outputs and final state
    equal one pass with gradients (which never segments), at every segment boundary."""
    import stormvl.models.mamba as mamba

    torch.manual_seed(4)
    kind = {1: dict(cls=Mamba1Mixer), 2: dict(cls=Mamba2Mixer, head_dim=8)}[version]
    mixer = kind.pop("cls")(16, state_size=8, chunk_size=8, **kind).double()
    calls = []
    mix = mixer._mix
    monkeypatch.setattr(mixer, "_mix", lambda h, s, r: calls.append(h.shape[1]) or mix(h, s, r))
    monkeypatch.setattr(mamba, "SEGMENT_TOKENS", 7)
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    start = mixer.init_state(2, dtype=torch.float64)
    start.ssm.normal_()
    whole, whole_state = mixer(x, state=start, return_state=True)  # gradients on: one pass
    assert calls == [30]
    with torch.no_grad():
        got, got_state = mixer(x, state=start, return_state=True)
        plain = mixer(x)
    assert calls[1:6] == [7, 7, 7, 7, 2]
    assert torch.allclose(got, whole, atol=1e-12) and torch.allclose(got_state.ssm, whole_state.ssm, atol=1e-12)
    assert torch.allclose(got_state.conv, whole_state.conv, atol=1e-12)
    assert torch.allclose(plain, mixer(x).detach(), atol=1e-12)
    assert not torch.allclose(plain, got, atol=1e-3)  # the start state mattered
    # The backward direction: reversed segments added into a buffer equal one flipped pass.
    with torch.no_grad():
        buffer = torch.ones_like(x)
        mixer(x, reverse=True, add_to=buffer)
    assert torch.allclose(buffer - 1, mixer(x.flip(1)).detach().flip(1), atol=1e-12)


@pytest.mark.parametrize("version", [1, 2])
def test_bidirectional_encoder_inference_equals_training_pass(version, monkeypatch):
    import stormvl.models.mamba as mamba
    from stormvl.models.temporal_encoder import TemporalEncoder

    torch.manual_seed(5)
    enc = TemporalEncoder(16, 2, state_size=8, head_dim=8, chunk_size=4, version=version).double()
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    want = enc(x)  # gradients on: one pass per direction, flipped whole
    monkeypatch.setattr(mamba, "SEGMENT_TOKENS", 7)
    with torch.no_grad():
        got = enc(x)
    assert torch.allclose(got, want, atol=1e-12) and not torch.allclose(got, x, atol=1e-3)
