"""Time the two scans of the temporal encoder against their sequential references and
transformers' pure-PyTorch paths, and report GFLOP/s beside a plain matmul measured in the same run:

- Mamba-2 (SSD): stormvl's chunked scan (its factored inference path, and the stable path that
  training and wide decays take) vs transformers' Mamba2 chunk scan;
- Mamba-1 (S6): stormvl's chunked scan vs transformers' MambaMixer selective-scan fallback, at the
  same channel count (heads x head dim) with Mamba-1's usual state size.

    python benchmarks/ssd_scan.py [--lengths 4096 16384] [--repeats 5]
"""

import argparse
import statistics
import time

import torch

from stormvl.ops import ssd
from stormvl.ops.selective_scan import selective_scan_chunked, selective_scan_ref
from stormvl.ops.ssd import ssd_chunked_flops, ssd_scan_chunked, ssd_scan_ref


def timeit(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--state", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--state1", type=int, default=16, help="Mamba-1 state size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-max-length", type=int, default=16384, help="skip the slow reference above this")
    a = ap.parse_args()
    try:
        import transformers.utils.logging as tl
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

        tl.set_verbosity_error()
    except ImportError:
        mamba2_chunk_scan = None
    torch.manual_seed(0)
    n = 1024
    m1, m2 = torch.randn(n, n), torch.randn(n, n)
    mm = 2 * n**3 / timeit(lambda: m1 @ m2, 10) / 1e9
    print(f"threads={torch.get_num_threads()}  float32 matmul {n}x{n}: {mm:.1f} GFLOP/s")
    print(
        "| length | chunked (ms) | stable path (ms) | reference (ms) | transformers (ms) | stable/chunked "
        "| ref/chunked | hf/chunked | chunked GFLOP/s | % of matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    h, p, s = a.heads, a.head_dim, a.state
    with torch.no_grad():
        for L in a.lengths:
            x = torch.randn(1, L, h, p)
            dt = torch.rand(1, L, h) * 0.1
            A = -torch.rand(h) * 4
            B, C = torch.randn(1, L, 1, s), torch.randn(1, L, 1, s)
            D = torch.randn(h)
            t_c = timeit(lambda: ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=a.chunk), a.repeats)
            factored, ssd.FACTORED_RANGE = ssd.FACTORED_RANGE, {}  # no dtype factors: the stable path
            t_s = timeit(lambda: ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=a.chunk), a.repeats)
            ssd.FACTORED_RANGE = factored
            t_r = timeit(lambda: ssd_scan_ref(x, dt, A, B, C, D), 1) if L <= a.ref_max_length else float("nan")
            t_h = (
                timeit(lambda: mamba2_chunk_scan(x, dt, A, B, C, chunk_size=a.chunk, D=D), a.repeats)
                if mamba2_chunk_scan
                else float("nan")
            )
            gf = ssd_chunked_flops(1, L, h, p, s, 1, a.chunk) / t_c / 1e9
            print(
                f"| {L} | {t_c * 1e3:.1f} | {t_s * 1e3:.1f} | {t_r * 1e3:.1f} | {t_h * 1e3:.1f} | {t_s / t_c:.2f}x "
                f"| {t_r / t_c:.1f}x | {t_h / t_c:.2f}x | {gf:.1f} | {100 * gf / mm:.0f}% |",
                flush=True,
            )

    mamba1(a, mm)


def mamba1(a, mm):
    try:
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan
    except ImportError:
        mamba_selective_scan = None
    d, n = a.heads * a.head_dim, a.state1
    print(f"\nMamba-1 selective scan: {d} channels, state {n}")
    print("| length | chunked (ms) | reference (ms) | transformers (ms) | ref/chunked | hf/chunked | chunked GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for L in a.lengths:
            u, dl = torch.randn(1, d, L), torch.randn(1, d, L) - 4
            A = -torch.arange(1, n + 1.0).repeat(d, 1)
            B, C, D = torch.randn(1, n, L), torch.randn(1, n, L), torch.randn(d)
            kw = dict(D=D, delta_softplus=True)
            t_c = timeit(lambda: selective_scan_chunked(u, dl, A, B, C, **kw), a.repeats)
            t_r = timeit(lambda: selective_scan_ref(u, dl, A, B, C, **kw), 1) if L <= a.ref_max_length else float("nan")
            t_h = (
                timeit(lambda: mamba_selective_scan(u, dl, A, B, C, **kw), 1) if mamba_selective_scan else float("nan")
            )
            # Per position and (channel, state): exp, 2 multiply-adds for the state, 1 for the read-out.
            gf = 7 * L * d * n / t_c / 1e9
            print(
                f"| {L} | {t_c * 1e3:.1f} | {t_r * 1e3:.1f} | {t_h * 1e3:.1f} | {t_r / t_c:.1f}x | {t_h / t_c:.2f}x "
                f"| {gf:.1f} ({100 * gf / mm:.0f}% of matmul) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
