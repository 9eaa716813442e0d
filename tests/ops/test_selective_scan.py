import functools

import pytest
import torch

from stormvl.ops.selective_scan import selective_scan, selective_scan_chunked, selective_scan_ref


def _inputs(b=2, d=8, n=4, l=50, g=1, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(
        u=r(b, d, l), delta=r(b, d, l), A=-torch.exp(r(d, n)), B=r(b, g, n, l), C=r(b, g, n, l), D=r(d), z=r(b, d, l),
        delta_bias=r(d), delta_softplus=True,
    )  # fmt: skip


@pytest.mark.parametrize("l", [1, 5, 63, 64, 65, 300])
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("doubling", [False, True])
def test_chunked_matches_reference(l, g, dtype, tol, doubling):
    kw = _inputs(l=l, g=g, dtype=dtype)
    h0 = torch.randn(2, 8, 4, dtype=dtype)
    want, want_h = selective_scan_ref(**kw, return_last_state=True, initial_state=h0)
    got, got_h = selective_scan_chunked(
        **kw, return_last_state=True, initial_state=h0, chunk_size=64, doubling=doubling
    )
    scale = want.abs().max()
    assert (want - got).abs().max() <= tol * scale and (want_h - got_h).abs().max() <= tol * want_h.abs().max()


def test_reference_is_the_recurrence():
    kw = _inputs(b=1, d=2, n=3, l=6, g=1)
    y = selective_scan_ref(**kw)
    u, A, B, C, D, z = (kw[k] for k in ("u", "A", "B", "C", "D", "z"))
    dt = torch.nn.functional.softplus(kw["delta"] + kw["delta_bias"][None, :, None])
    for d in range(2):
        h = [0.0] * 3
        for t in range(6):
            for n in range(3):
                h[n] = float(torch.exp(dt[0, d, t] * A[d, n])) * h[n] + float(dt[0, d, t] * B[0, 0, n, t] * u[0, d, t])
            out = sum(float(C[0, 0, n, t]) * h[n] for n in range(3)) + float(D[d] * u[0, d, t])
            out *= float(torch.nn.functional.silu(z[0, d, t]))
            assert abs(out - float(y[0, d, t])) < 1e-12


@pytest.mark.parametrize("impl", ["ref", "chunked"])
def test_state_threading_equals_whole_scan(impl):
    kw = _inputs(l=40)
    whole, h_whole = selective_scan(**kw, return_last_state=True, impl=impl, chunk_size=16)
    first = {k: (v[..., :13] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    second = {k: (v[..., 13:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in kw.items()}
    a, h = selective_scan(**first, return_last_state=True, impl=impl, chunk_size=16)
    b, h2 = selective_scan(**second, return_last_state=True, initial_state=h, impl=impl, chunk_size=16)
    assert torch.allclose(torch.cat([a, b], -1), whole, atol=1e-12) and torch.allclose(h2, h_whole, atol=1e-12)


@pytest.mark.parametrize("doubling", [False, True])
def test_gradcheck_chunked(doubling):
    kw = _inputs(b=1, d=4, n=3, l=11)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    tensors = [kw[k].clone().requires_grad_() for k in names]
    h0 = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)

    def f(*ts):
        return selective_scan_chunked(**dict(zip(names, ts[:-1])), delta_softplus=True, initial_state=ts[-1],
                                      chunk_size=4, doubling=doubling)  # fmt: skip

    assert torch.autograd.gradcheck(f, (*tensors, h0))


def test_gradients_match_reference():
    kw = _inputs(l=37)
    names = ["u", "delta", "A", "B", "C"]
    grads = []
    doubled = functools.partial(selective_scan_chunked, doubling=True, chunk_size=16)
    for fn in (selective_scan_ref, selective_scan_chunked, doubled):
        ts = {k: kw[k].clone().requires_grad_() for k in names}
        fn(**{**kw, **ts}).pow(2).sum().backward()
        grads.append([ts[k].grad for k in names])
    for got in grads[1:]:
        for a, b in zip(grads[0], got):
            assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.slow
def test_100k_tokens_in_float32_stay_finite_and_match():
    kw = _inputs(b=1, d=4, n=4, l=100_000, dtype=torch.float32, seed=3)
    want = selective_scan_ref(**kw)
    for doubling in (False, True):
        got = selective_scan_chunked(**kw, doubling=doubling)
        assert torch.isfinite(got).all()
        assert (want - got).abs().max() <= 1e-4 * want.abs().max()


def test_bad_shapes_and_impl():
    kw = _inputs()
    with pytest.raises(ValueError, match="u, delta"):
        selective_scan(**{**kw, "A": kw["A"][:3]})
    with pytest.raises(ValueError, match="g dividing d"):
        selective_scan(**{**kw, "B": torch.randn(2, 3, 4, 50, dtype=torch.float64),
                          "C": torch.randn(2, 3, 4, 50, dtype=torch.float64)})  # fmt: skip
    with pytest.raises(ValueError, match="unknown selective_scan impl"):
        selective_scan(**kw, impl="fast")
    with pytest.raises(RuntimeError, match="needs the mamba_ssm package"):
        selective_scan(**kw, impl="kernel")


def test_low_precision_inputs_accumulate_in_float32():
    kw = _inputs(l=400, dtype=torch.float32, seed=5)
    want = selective_scan_ref(**kw)
    low = {k: (v.bfloat16() if torch.is_tensor(v) and k != "A" else v) for k, v in kw.items()}
    got = selective_scan_chunked(**low)
    assert got.dtype == torch.bfloat16
    # bf16 inputs (about 3 significant digits) and a bf16 result, but no drift along the sequence.
    assert (got.float() - want).abs().max() <= 0.03 * want.abs().max()
