"""Mamba-1 selective state-space scan (S6), per channel d and state index n:

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * u_t[d]          (then y *= silu(z) when z is given)

The scan the STORM paper names ("We employ Mamba [12]", Gu & Dao's Mamba-1). Hand-written for the
same reason as `ssd.py`: `mamba_ssm`'s kernels build only on some CUDA setups. Shapes follow
`mamba_ssm.ops.selective_scan_interface.selective_scan_fn` so implementations can be swapped:

    u (b, d, l), delta (b, d, l), A (d, n), B (b, n, l) or (b, g, n, l), C likewise, D (d,),
    z (b, d, l) -> y (b, d, l) [, last state (b, d, n)]

with `g` groups of B/C shared by `d // g` consecutive channels, plus an `initial_state` (b, d, n)
so a stream can continue from where the last clip ended.

S6 has no matmul form (its decay differs per channel and state index), so there is no chunked
matrix trick as for Mamba-2. The fast path keeps the recurrence but makes each step one fused
multiply-add over a contiguous (b, d, n) slab: the decays exp(dt * A) and the inputs dt * B * u are
computed for a whole chunk of positions at once, the scan runs as `addcmul` into a preallocated
buffer, and its backward pass is the mirrored reverse scan (a custom autograd function), so there
is no per-step autograd graph. Decays are products of numbers in (0, 1]: nothing can overflow
however long the sequence, and chunks of positions carry the state, so memory does not grow with
the length.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked"]


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    if u.dim() != 3 or delta.shape != u.shape or A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(
            f"selective_scan expects u, delta (b, d, l) and A (d, n); got u {tuple(u.shape)}, "
            f"delta {tuple(delta.shape)}, A {tuple(A.shape)}"
        )
    b, d, l = u.shape
    n = A.shape[1]
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]  # (b, 1, n, l)
    if B.dim() != 4 or B.shape[0] != b or B.shape[2:] != (n, l) or C.shape != B.shape or d % B.shape[1]:
        raise ValueError(
            f"selective_scan: B and C must be (b, n, l) or (b, g, n, l) with g dividing d; got "
            f"B {tuple(B.shape)}, C {tuple(C.shape)} for u {tuple(u.shape)}, A {tuple(A.shape)}"
        )
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta, B, C


def _per_channel(B, d):
    """(b, g, n, l) -> (b, d, n, l): each group of d // g consecutive channels shares one B or C."""
    return B.repeat_interleave(d // B.shape[1], dim=1)


def _finish(y, u, D, z):
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
):  # fmt: skip
    """Sequential reference: one step per position, exactly the recurrence above. Slow, obvious."""
    dt, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, l = u.shape
    Bd, Cd = _per_channel(B, d), _per_channel(C, d)  # (b, d, n, l)
    h = initial_state.to(u.dtype) if initial_state is not None else u.new_zeros(b, d, A.shape[1])  # (b, d, n)
    ys = []
    for t in range(l):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bd[..., t]
        ys.append((h * Cd[..., t]).sum(-1))  # (b, d)
    y = _finish(torch.stack(ys, dim=-1), u, D, z)  # (b, d, l)
    return (y, h) if return_last_state else y


def _scan_steps(a, x, h0=None):
    """h_t = a_t * h_{t-1} + x_t along dim 0 from h_{-1} = h0 (or 0), one position per step: T
    launches, the least arithmetic (the CPU path)."""
    h = torch.empty_like(x)  # (T, ...)
    if h0 is None:
        h[0] = x[0]
    else:
        torch.addcmul(x[0], a[0], h0, out=h[0])
    for t in range(1, x.shape[0]):
        torch.addcmul(x[t], a[t], h[t - 1], out=h[t])
    return h


def _scan_doubling(a, x):
    """The same recurrence as `_scan_steps` in ceil(log2 T) rounds (Hillis-Steele): after the round
    with offset k, position t holds the sum over its last 2k inputs with their decays. About log2 T
    times the arithmetic, but a few dozen launches instead of T, which is what a GPU running this
    tiny model waits on. Only products of decays in (0, 1] are formed, so nothing can overflow."""
    # Two fresh buffers per sequence take turns as each round's output; the inputs are only read.
    xb, ab = (torch.empty_like(x), torch.empty_like(x)), (torch.empty_like(a), torch.empty_like(a))  # (T, ...)
    k, n, r = 1, x.shape[0], 0
    while k < n:
        xn = xb[r % 2]
        xn[:k] = x[:k]
        torch.addcmul(x[k:], a[k:], x[:-k], out=xn[k:])
        if 2 * k < n:  # the last round needs no decay products
            an = ab[r % 2]
            an[:k] = a[:k]
            torch.mul(a[k:], a[:-k], out=an[k:])
            a = an
        x, k, r = xn, 2 * k, r + 1
    return x.clone() if r == 0 else x


class _Recurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + x_t along the first dimension: a, x (T, ...), h0 (...) -> h (T, ...).
    Forward is the scan; backward is the same scan run in reverse on the gradients (no per-step
    autograd graph). `doubling` picks `_scan_doubling` (the GPU path) over `_scan_steps`."""

    @staticmethod
    def forward(ctx, a, x, h0, doubling):
        scan = _scan_doubling if doubling else _scan_steps
        if doubling:
            x0 = x.clone()
            x0[0] += a[0] * h0  # the initial state enters through the first input
            h = scan(a, x0)
        else:
            h = scan(a, x, h0)
        ctx.save_for_backward(a, h, h0)
        ctx.scan = scan
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        # g_t = dL/dh_t including what flows back from later steps: g_t = grad_h_t + a_{t+1} g_{t+1},
        # the forward recurrence on the reversed sequence with decays shifted by one.
        a_next = torch.cat([a[1:], torch.zeros_like(a[:1])]).flip(0)
        g = ctx.scan(a_next, grad_h.flip(0)).flip(0)  # (T, ...)
        prev = torch.cat([h0[None], h[:-1]])  # (T, ...): h_{t-1}
        return g * prev, g, a[0] * g[0], None


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None, chunk_size=256, doubling=None,
):  # fmt: skip
    """The same scan, `chunk_size` positions at a time (module docstring): the same arithmetic as
    the reference, so it matches it to rounding over any length, with gradients. Computes in at
    least float32 and returns u's dtype. (Under autograd each chunk keeps its decays and states
    for the backward pass, so training memory grows with the length; inference memory does not.)
    `doubling` (default: on CUDA) runs each chunk's recurrence in log2(chunk) rounds, not one step
    per position: more arithmetic, far fewer kernel launches."""
    doubling = u.is_cuda if doubling is None else doubling
    out_dtype = u.dtype
    # The state accumulates in at least float32 (and in A's precision): bf16 sums drift.
    cd = torch.promote_types(torch.promote_types(u.dtype, A.dtype), torch.float32)
    u, delta, A, B, C = (t.to(cd) for t in (u, delta, A, B, C))
    delta_bias = None if delta_bias is None else delta_bias.to(cd)
    dt, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, l = u.shape
    g, n = B.shape[1], A.shape[1]
    h = initial_state.to(u.dtype) if initial_state is not None else u.new_zeros(b, d, n)  # (b, d, n)
    ys = []
    for c0 in range(0, l, chunk_size):
        c1 = min(l, c0 + chunk_size)
        # 1. decays and inputs of the chunk, position-major so each step reads contiguous memory
        # (.contiguous(): the products inherit their inputs' layout, and a step must read one slab.)
        dtc = dt[:, :, c0:c1].permute(2, 0, 1).contiguous()  # (T, b, d)
        a = torch.exp(dtc[..., None] * A)  # (T, b, d, n)
        dtu = (dtc * u[:, :, c0:c1].permute(2, 0, 1)).unflatten(-1, (g, d // g))  # (T, b, g, d/g)
        Bc = B[..., c0:c1].permute(3, 0, 1, 2).contiguous()  # (T, b, g, n)
        x = (dtu[..., None] * Bc[:, :, :, None, :]).flatten(2, 3)  # (T, b, d, n)
        # 2. the recurrence
        hs = _Recurrence.apply(a, x, h, doubling)  # (T, b, d, n)
        # 3. read out with C, carry the last state into the next chunk
        hs_g = hs.unflatten(2, (g, d // g))  # (T, b, g, d/g, n)
        ys.append(torch.einsum("tbgen,bgnt->bget", hs_g, C[..., c0:c1]).flatten(1, 2))  # (b, d, T)
        h = hs[-1]
    y = _finish(torch.cat(ys, dim=-1), u, None if D is None else D.to(cd), None if z is None else z.to(cd))
    y = y.to(out_dtype)  # (b, d, l)
    return (y, h) if return_last_state else y


@functools.cache
def mamba_ssm_selective_scan():
    """`mamba_ssm`'s CUDA selective scan, or None when the package is not installed (resolved once;
    a broken install is raised, not silently replaced)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "mamba_ssm":
            return None
        raise
    return selective_scan_fn


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None, chunk_size=256, impl="auto",
):  # fmt: skip
    """Dispatch: impl in {"auto", "chunked", "ref", "kernel"}. "auto" uses `mamba_ssm`'s kernel on
    CUDA when installed (it takes no initial state: streaming uses the PyTorch path), else the
    chunked PyTorch path."""
    kw = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state)
    if impl == "ref":
        return selective_scan_ref(u, delta, A, B, C, initial_state=initial_state, **kw)
    if impl not in ("auto", "chunked", "kernel"):
        raise ValueError(f"unknown selective_scan impl {impl!r}; use auto, chunked, ref or kernel")
    kernel = mamba_ssm_selective_scan() if u.is_cuda and impl != "chunked" and initial_state is None else None
    if kernel is not None:
        return kernel(u, delta, A, B, C, **kw)
    if impl == "kernel":
        raise RuntimeError("impl='kernel' needs the mamba_ssm package on a CUDA device and no initial state")
    return selective_scan_chunked(u, delta, A, B, C, initial_state=initial_state, chunk_size=chunk_size, **kw)
