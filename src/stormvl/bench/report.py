"""The bench's outputs: a markdown table, bench.json (rows and the run's settings) and a plot."""

from __future__ import annotations

import json
import os
import time

from ..data.records import write_atomic

OUTPUTS = ("bench.json", "bench.md", "bench.png")


def format_table(rows) -> str:
    decoded = any(r.get("end_to_end_s") is not None for r in rows)
    extra = " decode s | end-to-end s |" if decoded else ""
    lines = [
        "| frames | setting | LLM visual tokens | tokens / | GFLOPs vision / temporal / LLM | vision s | temporal s "
        "| prefill s | s / token | TTFT s | TTFT speed-up | answer s | temporal share | peak MiB |" + extra,
        "|---" * (14 + 2 * decoded) + "|",
    ]
    for r in rows:
        if "skipped" in r:
            cells = 11 + 2 * decoded
            head = f"| {r['frames']} | {r['setting']} | {r['llm_visual_tokens']} | not run: {r['skipped']} |"
            lines.append(head + " |" * (cells - 1))
            continue
        g, s = r["gflops"], r["seconds"]
        tail = f" {r['decode_s']:.3f} | {r['end_to_end_s']:.3f} |" if decoded else ""
        tokens_x = f"{r['token_reduction_x']}x" if "token_reduction_x" in r else ""
        speedup = f"{r['ttft_speedup_x']}x" if "ttft_speedup_x" in r else "(baseline not run)"
        lines.append(
            f"| {r['frames']} | {r['setting']} | {r['llm_visual_tokens']} | {tokens_x} "
            f"| {g['vision']:.0f} / {g['temporal']:.0f} / {g['llm_prefill']:.0f} | {s['vision']:.3f} "
            f"| {s['temporal']:.3f} | {s['prefill']:.3f} | {s['per_token']:.4f} | {r['ttft_s']:.3f} "
            f"| {speedup} | {r['answer_s']:.3f} | {100 * r['temporal_share']:.1f}% "
            f"| {r['peak_mem_mib']:.0f} |" + tail
        )
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in rows if "skipped" not in r]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in settings:
        pts = sorted((r for r in rows if r["setting"] == s), key=lambda r: r["frames"])
        frames = [p["frames"] for p in pts]
        axes[0].plot(frames, [p["ttft_s"] for p in pts], marker="o", label=s)
        axes[1].plot(frames, [p["llm_visual_tokens"] for p in pts], marker="o", label=s)
    axes[0].set(xlabel="input frames", ylabel="time to first token (s)", title="Latency")
    axes[1].set(xlabel="input frames", ylabel="LLM visual tokens", title="Tokens", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return True


def keep_earlier(out_dir) -> str | None:
    """Move an earlier run's outputs in `out_dir` to previous/<when they were written>/, so a rerun
    into the same folder (the default one) replaces nothing. Returns that folder, if any."""
    names = [n for n in OUTPUTS if os.path.exists(os.path.join(out_dir, n))]
    if not names:
        return None
    when = max(os.path.getmtime(os.path.join(out_dir, n)) for n in names)
    base = os.path.join(out_dir, "previous", time.strftime("%Y%m%d-%H%M%S", time.localtime(when)))
    os.makedirs(os.path.dirname(base), exist_ok=True)
    dest, k = base, 1
    while True:  # made, not just looked for: two runs finishing in one second get a folder each
        try:
            os.mkdir(dest)
            break
        except FileExistsError:
            dest, k = f"{base}-{k}", k + 1
    for n in names:
        os.replace(os.path.join(out_dir, n), os.path.join(dest, n))
    return dest


def write_outputs(rows, out_dir, meta: dict):
    """bench.json, bench.md and bench.png (with matplotlib), each written whole or not at all, an
    earlier run's moved aside first. Returns the table, whether it plotted, and where the earlier
    outputs went (None: there were none)."""
    os.makedirs(out_dir, exist_ok=True)
    kept = keep_earlier(out_dir)
    write_atomic(os.path.join(out_dir, "bench.json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = format_table(rows)
    write_atomic(os.path.join(out_dir, "bench.md"), table + "\n")
    plotted = plot(rows, os.path.join(out_dir, "bench.png"))
    return table, plotted, kept
