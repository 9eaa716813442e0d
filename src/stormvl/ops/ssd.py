"""Mamba-2 selective state-space scan (SSD), per head h:

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T        S: (p, n)
    y_t = S_t C_t + D_h * x_t

Hand-written because it is the core STORM adds and the fused kernels (`mamba_ssm`) do not build
on CPU or on many GPU setups; this module is the one place that knows the scan. Shapes follow
`mamba_ssm`'s chunk scan so implementations can be swapped:

    x (b, l, h, p), dt (b, l, h), A (h,), B (b, l, g, n), C (b, l, g, n), D (h,) -> y (b, l, h, p)

with `g` groups of B/C shared by `h // g` consecutive heads, and an optional state (b, h, p, n)
passed in and out so a stream can continue from where the last clip ended.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["ssd_scan", "ssd_scan_ref", "ssd_scan_chunked", "ssd_chunked_flops"]

SEGMENT_CHUNKS = 32  # chunks per segment for long inputs


def _prepare_dt(dt, dt_bias, dt_softplus, dt_limit):
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit is not None and (dt_limit[0] > 0.0 or dt_limit[1] != float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _check(x, dt, A, B, C):
    if x.dim() != 4 or dt.dim() != 3 or B.dim() != 4 or C.dim() != 4 or A.dim() != 1:
        raise ValueError("ssd_scan expects x (b,l,h,p), dt (b,l,h), A (h,), B/C (b,l,g,n)")
    b, l, h, _ = x.shape
    g = B.shape[2]
    if dt.shape != (b, l, h) or A.shape[0] != h or B.shape[:2] != (b, l) or C.shape != B.shape:
        raise ValueError(
            f"ssd_scan shape mismatch: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    if h % g:
        raise ValueError(f"ssd_scan: heads ({h}) must be a multiple of groups ({g})")


def ssd_scan_ref(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    *,
    initial_state=None,
    return_final_state=False,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=None,
):
    """Sequential reference: one step per position, exactly the recurrence above. Slow, obvious."""
    _check(x, dt, A, B, C)
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dt = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)
    rep = h // g
    Bh = B.repeat_interleave(rep, dim=2)  # (b, l, h, n)
    Ch = C.repeat_interleave(rep, dim=2)
    state = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros(b, h, p, n)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        state = decay[..., None, None] * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y = (state @ Ch[:, t, :, :, None]).squeeze(-1)  # (b, h, p)
        if D is not None:
            y = y + D[:, None] * x[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return (y, state) if return_final_state else y


def ssd_scan_chunked(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    *,
    chunk_size=64,
    initial_state=None,
    return_final_state=False,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=None,
):
    """Chunked SSD: within a chunk the scan is a masked (Q x Q) matrix product; across chunks
    only a (p x n) state per head is carried. Almost all work is batched matmuls. Without
    gradients it takes the factored form where that is exact (see `_segment`)."""
    _check(x, dt, A, B, C)
    l = x.shape[1]
    dt = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)
    Q = max(1, min(int(chunk_size), l)) if l > 0 else 1
    seg_len = SEGMENT_CHUNKS * Q
    if l > seg_len:
        # Long inputs run segment by segment, passing the state on: the (Q x Q) intermediates of
        # one segment stay in cache instead of streaming through memory (several x faster on CPU).
        ys, state = [], initial_state
        for s in range(0, l, seg_len):
            e = min(l, s + seg_len)
            y_s, state = _segment(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D, Q, state, True)
            ys.append(y_s)
        y = torch.cat(ys, dim=1)
        return (y, state) if return_final_state else y
    return _segment(x, dt, A, B, C, D, Q, initial_state, return_final_state)


# Widest in-chunk decay range |sum(dt * A)| (in nats) the factored inference path takes: its
# exponents stay within half of it, far from float32's overflow at 88.
FACTORED_RANGE = {torch.float32: 100.0, torch.float64: 1000.0}


def _segment(x, dt, A, B, C, D, Q, initial_state, return_final_state):
    """One segment's scan. Without gradients, heads whose decay stays within FACTORED_RANGE over
    every chunk take the factored path (about 1.8x faster on CPU); the others, and training, take
    the stable one. Splitting by head is exact: heads never mix in the scan."""
    limit = FACTORED_RANGE.get(x.dtype)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dt, A, B, C, D))
    if limit is None or needs_grad or x.shape[1] == 0:
        return _segment_stable(x, dt, A, B, C, D, Q, initial_state, return_final_state)
    b, l, h, p = x.shape
    c = -(-l // Q)
    a = torch.cumsum(F.pad(dt * A, (0, 0, 0, c * Q - l)).reshape(b, c, Q, h), dim=2)  # b c Q h
    ok = ((a - a[:, :, -1:] * 0.5).abs().amax(dim=(0, 1, 2)) <= limit / 2).tolist()  # per head
    if all(ok):
        return _segment_factored(x, dt, A, B, C, D, Q, initial_state, return_final_state, a)
    if not any(ok):
        return _segment_stable(x, dt, A, B, C, D, Q, initial_state, return_final_state)
    g = B.shape[2]
    y = x.new_empty(b, l, h, p)
    state = x.new_empty(b, h, p, B.shape[3])
    for fast in (True, False):
        idx = torch.tensor([i for i in range(h) if ok[i] == fast], device=x.device)
        # A subset of heads keeps one shared B/C group when there is one; otherwise each head
        # takes its own group's B/C (g' = heads), which is the same scan.
        grp = slice(None) if g == 1 else idx // (h // g)
        args = (x[:, :, idx], dt[:, :, idx], A[idx], B[:, :, grp], C[:, :, grp], None if D is None else D[idx], Q,
                None if initial_state is None else initial_state[:, idx], True)  # fmt: skip
        y_i, s_i = _segment_factored(*args, a[..., idx]) if fast else _segment_stable(*args)
        y[:, :, idx] = y_i
        state[:, idx] = s_i
    return (y, state) if return_final_state else y


def _segment_factored(x, dt, A, B, C, D, Q, initial_state, return_final_state, a):
    """The chunked scan with each chunk's decay factored around its midpoint m (per head):
    exp(a_i - a_j) = exp(a_i - m) * exp(m - a_j), where a is the in-chunk cumulative dt * A.
    The per-head (Q x Q) decay matrices of the stable path (their exp, mask and product: most of
    its elementwise work) become two (Q, h) scalings, and all heads of a group share one masked
    C B^T, so the intra-chunk term is one (Q x Q) @ (Q x r*p) product in the input's own layout.
    Exact while every exponent stays in range: |a_i - m|, |m - a_j| <= half the chunk's range,
    which `_segment` checks, passing the cumulative sums it computed: `a` (b, c, Q, h), zero-padded
    to whole chunks. Inference only (in-place ops)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    pad = (-l) % Q
    if pad:  # padded steps have dt = 0: decay 1 and no input
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (l + pad) // Q
    dtc = dt.reshape(b, c, Q, h)
    m = a[:, :, -1:] * 0.5  # b c 1 h
    xc = x.reshape(b, c, Q, h, p)
    xt = xc * torch.exp(m - a).mul_(dtc)[..., None]  # b c Q h p: exp(m - a_j) dt_j x_j
    Bc = B.reshape(b, c, Q, g, n).transpose(2, 3)  # b c g Q n
    Cc = C.reshape(b, c, Q, g, n).transpose(2, 3)  # b c g Q n
    xg = xt.reshape(b, c, Q, g, r * p).transpose(2, 3)  # b c g Q rp (a view when g == 1)

    # 1) intra-chunk: y_i = exp(a_i - m) sum_{j<=i} (C_i . B_j) exp(m - a_j) dt_j x_j
    y = (Cc @ Bc.transpose(-1, -2)).tril_() @ xg  # b c g Q rp

    # 2) each chunk's state at its end: exp(a_end - m) = exp(m) times the same scaled inputs
    em = torch.exp(m[:, :, 0])[..., None, None]  # b c h 1 1
    chunk_states = (xg.transpose(-1, -2) @ Bc).reshape(b, c, h, p, n).mul_(em)  # b c h p n

    # 3) carry the state across chunks
    chunk_decay = torch.exp(a[:, :, -1])[..., None, None]  # b c h 1 1
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x.dtype)
    starts = x.new_empty(b, c, h, p, n)
    for k in range(c):
        starts[:, k] = state
        state = torch.addcmul(chunk_states[:, k], chunk_decay[:, k], state)

    # 4) the start state's part, exp(a_i) C_i . S = exp(a_i - m) C_i . (exp(m) S), joins the sum
    y += Cc @ starts.mul_(em).reshape(b, c, g, r * p, n).transpose(-1, -2)
    y = y.transpose(2, 3).reshape(b, c, Q, h, p) if g > 1 else y.reshape(b, c, Q, h, p)
    y.mul_(torch.exp(a - m)[..., None])
    if D is not None:
        y.addcmul_(xc, D[:, None])
    y = y.reshape(b, c * Q, h, p)[:, :l]
    return (y, state) if return_final_state else y


def _segment_stable(x, dt, A, B, C, D, Q, initial_state, return_final_state):
    """The chunked scan with the exact per-head (Q x Q) decay matrices (exp(a_i - a_j) formed
    directly, never overflowing): training, and heads whose decay range is too wide to factor."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    pad = (-l) % Q
    if pad:
        # Zero-padded steps have dt = 0: decay 1 and no input, so the final state is unaffected.
        x_p = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt_p = F.pad(dt, (0, 0, 0, pad))
        B_p = F.pad(B, (0, 0, 0, 0, 0, pad))
        C_p = F.pad(C, (0, 0, 0, 0, 0, pad))
    else:
        x_p, dt_p, B_p, C_p = x, dt, B, C
    c = (l + pad) // Q

    # Layout (b, c, g, r, Q, ...): chunk-major so the state pass below reads contiguous blocks,
    # and heads sharing a B/C group broadcast without copies.
    xs = x_p.reshape(b, c, Q, g, r, p).permute(0, 1, 3, 4, 2, 5)  # b c g r Q p
    dts = dt_p.reshape(b, c, Q, g, r).permute(0, 1, 3, 4, 2)  # b c g r Q
    Bs = B_p.reshape(b, c, Q, g, n).transpose(2, 3).unsqueeze(3)  # b c g 1 Q n
    Cs = C_p.reshape(b, c, Q, g, n).transpose(2, 3).unsqueeze(3)  # b c g 1 Q n
    acum = torch.cumsum(dts * A.reshape(g, r, 1), dim=-1)  # b c g r Q  (<= 0)
    xdt = xs * dts[..., None]

    # 1) intra-chunk: y_i += sum_{j<=i} (C_i . B_j) exp(acum_i - acum_j) dt_j x_j
    # The causal mask is added as -inf above the diagonal (exp -> 0): a broadcast add is ~2x
    # faster on CPU than masked_fill with a broadcast bool mask, and its gradient there is 0.
    above = torch.full((Q, Q), float("-inf"), dtype=acum.dtype, device=x.device).triu_(1)
    decay = (acum[..., :, None] - acum[..., None, :]).add_(above).exp_()  # b c g r Q Q
    scores = (Cs @ Bs.transpose(-1, -2)) * decay
    y = scores @ xdt  # b c g r Q p

    # 2) each chunk's contribution to the state at its end: sum_j exp(acum_Q - acum_j) dt_j x_j B_j^T
    decay_to_end = torch.exp(acum[..., -1:] - acum)  # b c g r Q
    # Heads of a group share B, so fold them into one (r*p, Q) @ (Q, n) product per chunk.
    chunk_states = (
        (xdt * decay_to_end[..., None]).transpose(-1, -2).reshape(b, c, g, r * p, Q) @ Bs.squeeze(3)
    ).reshape(b, c, g, r, p, n)  # b c g r p n

    # 3) carry the state across chunks: c cheap steps on (p, n) states
    chunk_decay = torch.exp(acum[..., -1])[..., None, None]  # b c g r 1 1
    if initial_state is not None:
        state = initial_state.to(x.dtype).reshape(b, g, r, p, n)
    else:
        state = x.new_zeros(b, g, r, p, n)
    starts = []
    for k in range(c):
        starts.append(state)
        state = torch.addcmul(chunk_states[:, k], chunk_decay[:, k], state)
    start_states = torch.stack(starts, dim=1)  # b c g r p n

    # 4) what each position reads from the state its chunk started with
    from_state = Cs.squeeze(3) @ start_states.reshape(b, c, g, r * p, n).transpose(-1, -2)
    # In place on y (its matmul's backward does not read it): each saves a pass over (l, h, p).
    y.addcmul_(from_state.reshape(b, c, g, Q, r, p).transpose(3, 4), torch.exp(acum)[..., None])
    if D is not None:
        y.addcmul_(xs, D.reshape(g, r, 1, 1))
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * Q, h, p)[:, :l]
    if return_final_state:
        return y, state.reshape(b, h, p, n)
    return y


def ssd_chunked_flops(b, l, h, p, n, g=1, chunk_size=64):
    """Multiply-add FLOPs (x2) of the matmuls in `ssd_scan_chunked`, for throughput reports."""
    Q = min(chunk_size, l)
    c = -(-l // Q)
    cb = 2 * b * g * c * Q * Q * n
    intra = 2 * b * h * c * Q * Q * p
    states = 2 * b * h * c * Q * p * n
    out = 2 * b * h * c * Q * n * p
    return cb + intra + states + out


@functools.cache
def mamba_ssm_kernel():
    """`mamba_ssm`'s fused chunk scan, or None when the package is not installed. Resolved once, on
    the first CUDA call (importing it pulls in triton). Only the package being absent counts as
    "not installed": a broken install (a missing CUDA library, an ABI mismatch) is raised, not
    silently replaced by the slower path."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "mamba_ssm":
            return None
        raise
    return mamba_chunk_scan_combined


def ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    *,
    chunk_size=64,
    initial_state=None,
    return_final_state=False,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=None,
    impl="auto",
):
    """Dispatch: impl in {"auto", "chunked", "ref", "kernel"}. "auto" uses `mamba_ssm`'s kernel on
    CUDA when installed, else the chunked PyTorch path."""
    kw = dict(
        initial_state=initial_state,
        return_final_state=return_final_state,
        dt_bias=dt_bias,
        dt_softplus=dt_softplus,
        dt_limit=dt_limit,
    )
    if impl == "ref":
        return ssd_scan_ref(x, dt, A, B, C, D, **kw)
    if impl in ("auto", "kernel") and x.is_cuda:
        kernel = mamba_ssm_kernel()
        if kernel is not None:
            return kernel(
                x,
                dt,
                A,
                B,
                C,
                chunk_size,
                D=D,
                dt_bias=dt_bias,
                dt_softplus=dt_softplus,
                initial_states=initial_state,
                return_final_states=return_final_state,
                dt_limit=dt_limit or (0.0, float("inf")),
            )
        if impl == "kernel":
            raise RuntimeError("impl='kernel' needs the mamba_ssm package on a CUDA device")
    elif impl == "kernel":
        raise RuntimeError("impl='kernel' needs the mamba_ssm package on a CUDA device")
    elif impl not in ("auto", "chunked"):
        raise ValueError(f"unknown ssd_scan impl {impl!r}; use auto, chunked, ref or kernel")
    return ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=chunk_size, **kw)
