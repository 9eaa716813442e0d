"""The bench's outputs: a markdown table, bench.json (rows and the run's settings) and a plot."""

from __future__ import annotations

import json
import os


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


def write_outputs(rows, out_dir, meta: dict):
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".bench.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "bench.json"))
    table = format_table(rows)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(table + "\n")
    plotted = plot(rows, os.path.join(out_dir, "bench.png"))
    return table, plotted
