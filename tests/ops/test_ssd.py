import pytest
import torch

from stormvl.ops.ssd import ssd_chunked_flops, ssd_scan, ssd_scan_chunked, ssd_scan_ref


def _inputs(b, l, h, p, g, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    x = r(b, l, h, p)
    dt = torch.nn.functional.softplus(r(b, l, h)) * 0.3
    A = -torch.rand(h, generator=gen, dtype=dtype) * 3 - 0.1
    return x, dt, A, r(b, l, g, n), r(b, l, g, n), r(h)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(params=["factored", "stable"])
def path(request, monkeypatch):
    """Runs a test on each inference path of the chunked scan: the factored one (the default
    without gradients) and the stable one (training's, and the fallback for wide decays)."""
    from stormvl.ops import ssd

    if request.param == "stable":
        monkeypatch.setattr(ssd, "FACTORED_RANGE", {})
    else:  # the stable path must not be reached
        monkeypatch.setattr(ssd, "_segment_stable", None)
    return request.param


@pytest.mark.parametrize("l", [1, 5, 16, 33, 64, 100, 257])
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_chunked_matches_reference(l, g, dtype, tol, path):
    x, dt, A, B, C, D = _inputs(2, l, 4, 8, g, 16, dtype, seed=l)
    s0 = torch.randn(2, 4, 8, 16, dtype=dtype, generator=torch.Generator().manual_seed(l))
    for init in (None, s0):
        y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D, initial_state=init, return_final_state=True)
        y, s = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=16, initial_state=init, return_final_state=True)
        assert y.shape == (2, l, 4, 8) and s.shape == (2, 4, 8, 16)
        assert _rel(y, y_ref) < tol
        assert _rel(s, s_ref) < tol


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_heads_with_wide_decay_take_the_stable_path_and_the_rest_stay_factored(g, dtype, tol, monkeypatch):
    from stormvl.ops import ssd

    x, dt, A, B, C, D = _inputs(2, 150, 4, 8, g, 16, dtype, seed=21)
    # Heads 1 and 3 decay by far more than FACTORED_RANGE within a 32-step chunk (> 3000 nats at
    # dt >= 0.3 * softplus(-4)), heads 0 and 2 by far less.
    A = torch.tensor([-0.2, -30000.0, -0.5, -20000.0], dtype=dtype)
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D, return_final_state=True)
    heads = []
    stable = ssd._segment_stable
    monkeypatch.setattr(ssd, "_segment_stable", lambda x, *a: heads.append(x.shape[2]) or stable(x, *a))
    y, s = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=32, return_final_state=True)
    assert heads == [2]  # one stable call, for the two wide heads only
    assert torch.isfinite(y).all() and _rel(y, y_ref) < tol and _rel(s, s_ref) < tol
    # Without the range check, the factored path overflows on those heads: the check is needed.
    monkeypatch.setattr(ssd, "FACTORED_RANGE", {dtype: float("inf")})
    y_unchecked = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=32)
    assert not torch.isfinite(y_unchecked[:, :, 1::2]).all() and torch.isfinite(y_unchecked[:, :, ::2]).all()


def test_reference_is_the_recurrence():
    # One head, one step by hand: S = dt*x B^T, y = S C + D x.
    x = torch.tensor([[[[2.0]]]], dtype=torch.float64)
    dt = torch.tensor([[[0.5]]], dtype=torch.float64)
    A = torch.tensor([-1.0], dtype=torch.float64)
    B = torch.tensor([[[[3.0]]]], dtype=torch.float64)
    C = torch.tensor([[[[4.0]]]], dtype=torch.float64)
    D = torch.tensor([0.25], dtype=torch.float64)
    y = ssd_scan_ref(x, dt, A, B, C, D)
    assert y.item() == pytest.approx(0.5 * 2 * 3 * 4 + 0.25 * 2)
    # Two steps with zero input at step 2: the state decays by exp(dt*A).
    x2 = torch.cat([x, torch.zeros_like(x)], 1)
    y2 = ssd_scan_ref(x2, dt.repeat(1, 2, 1), A, B.repeat(1, 2, 1, 1), C.repeat(1, 2, 1, 1), D)
    assert y2[0, 1].item() == pytest.approx(0.5 * 2 * 3 * 4 * torch.exp(torch.tensor(-0.5)).item())


@pytest.mark.parametrize("impl", ["ref", "chunked"])
def test_state_threading_equals_whole_scan(impl):
    x, dt, A, B, C, D = _inputs(1, 90, 4, 8, 1, 8, torch.float64, seed=3)
    whole, s_whole = ssd_scan(x, dt, A, B, C, D, chunk_size=16, return_final_state=True, impl=impl)
    y1, s1 = ssd_scan(
        x[:, :37], dt[:, :37], A, B[:, :37], C[:, :37], D, chunk_size=16, return_final_state=True, impl=impl
    )
    y2, s2 = ssd_scan(
        x[:, 37:],
        dt[:, 37:],
        A,
        B[:, 37:],
        C[:, 37:],
        D,
        chunk_size=16,
        initial_state=s1,
        return_final_state=True,
        impl=impl,
    )
    assert _rel(torch.cat([y1, y2], 1), whole) < 1e-12
    assert _rel(s2, s_whole) < 1e-12


def test_dt_bias_and_softplus_options():
    x, dt, A, B, C, D = _inputs(1, 20, 2, 4, 1, 4, torch.float64, seed=5)
    bias = torch.randn(2, dtype=torch.float64)
    a = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=8, dt_bias=bias, dt_softplus=True)
    b = ssd_scan_ref(x, torch.nn.functional.softplus(dt + bias), A, B, C, D)
    assert _rel(a, b) < 1e-12


def test_gradcheck_chunked():
    x, dt, A, B, C, D = _inputs(1, 7, 2, 2, 1, 3, torch.float64, seed=7)
    args = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D)]
    assert torch.autograd.gradcheck(lambda *a: ssd_scan_chunked(*a, chunk_size=3), args)


def test_gradients_match_reference():
    x, dt, A, B, C, D = _inputs(2, 45, 4, 4, 2, 8, torch.float64, seed=9)
    grads = []
    for fn in (ssd_scan_ref, lambda *a: ssd_scan_chunked(*a, chunk_size=16)):
        args = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D)]
        (fn(*args) ** 2).sum().backward()
        grads.append([a.grad for a in args])
    for g_ref, g in zip(*grads):
        assert g is not None and _rel(g, g_ref) < 1e-10


def test_bad_shapes_and_impl():
    x, dt, A, B, C, D = _inputs(1, 8, 4, 2, 3, 2, torch.float64, seed=1)
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd_scan(x, dt, A, B, C, D)
    x, dt, A, B, C, D = _inputs(1, 8, 4, 2, 1, 2, torch.float64, seed=1)
    with pytest.raises(ValueError, match="shape mismatch"):
        ssd_scan(x, dt[:, :4], A, B, C, D)
    with pytest.raises(ValueError, match="unknown ssd_scan impl"):
        ssd_scan(x, dt, A, B, C, D, impl="fast")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        ssd_scan(x, dt, A, B, C, D, impl="kernel")


@pytest.mark.parametrize("b,l,h,p,n,g,c", [(1, 4, 1, 2, 3, 1, 4), (2, 37, 4, 8, 6, 2, 8), (1, 64, 8, 16, 16, 1, 16)])
def test_flop_count_matches_the_counted_scan(b, l, h, p, n, g, c):
    from torch.utils.flop_counter import FlopCounterMode

    x, dt, A = torch.randn(b, l, h, p), torch.rand(b, l, h), -torch.rand(h)
    B, C = torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        ssd_scan_chunked(x, dt, A, B, C, chunk_size=c)
    assert fc.get_total_flops() == ssd_chunked_flops(b, l, h, p, n, g, c)


def test_long_inputs_run_in_segments_with_the_same_result():
    from stormvl.ops import ssd

    x, dt, A, B, C, D = _inputs(1, 300, 2, 4, 1, 4, torch.float64, seed=11)
    assert 300 > ssd.SEGMENT_CHUNKS * 4  # several segments at chunk size 4
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D, return_final_state=True)
    y, s = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=4, return_final_state=True)
    assert _rel(y, y_ref) < 1e-10 and _rel(s, s_ref) < 1e-10


def test_mamba_ssm_kernel_absent_is_none_but_a_broken_install_is_reported(monkeypatch):
    import importlib.abc
    import sys

    from stormvl.ops import ssd

    ssd.mamba_ssm_kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # not installed
    assert ssd.mamba_ssm_kernel() is None

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith("mamba_ssm"):
                raise ImportError("libcudart.so.12: cannot open shared object file")

    ssd.mamba_ssm_kernel.cache_clear()
    monkeypatch.delitem(sys.modules, "mamba_ssm")
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(ImportError, match="libcudart"):
        ssd.mamba_ssm_kernel()
    ssd.mamba_ssm_kernel.cache_clear()
