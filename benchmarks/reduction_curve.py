"""Accuracy against visual tokens: STORM's own reductions against training-free baselines applied to
the same trained model at the same token count, on the held-out synthetic split.

    python benchmarks/reduction_curve.py [--model DIR] [--num 500] [--frames 16 32] [--strides 1 2 4 8] [--seed 0]

Clips are rendered with as many frames as are read (--frames; the embedded model trained on 16).
At each budget (the model's tokens for that many frames, divided by a stride s):
  storm          the model as trained (temporal pooling and spatial pooling), then test-time temporal
                 sampling by s after the temporal encoder: the encoder sees every frame
  frame-drop     uniform frame dropping before the encoder: decode 1/s of the frames
  random-drop    every frame through encoder and pooling, then a random 1/s of the tokens kept
  merge          every frame through encoder and pooling, then the most similar tokens of adjacent
                 frames merged until 1/s remain (DyCoke / FrameFusion's redundancy)
Deterministic by --seed (random-drop's choices; the split is fixed). Writes results.json and
table.md under --out and the plot to docs/reduction_curve.png.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["storm", "frame-drop", "random-drop", "merge"]


def reduce_after_pooling(model, method, generator):
    """The model's reduction with its test-time sampling replaced by `method` at the same count."""
    from stormvl.bench.baselines import merge_adjacent, random_drop

    pool_only = model.reduce_video_tokens

    def reduce(x, temporal_sample=None):
        s = temporal_sample or 1
        pooled = pool_only(x, 1)  # (b, T', N', D)
        k = math.ceil(pooled.shape[1] / s) * pooled.shape[2]
        if method == "random-drop":
            out = [random_drop(v, k, generator) for v in pooled]
        else:
            out = [merge_adjacent(v, k) for v in pooled]
        return torch.stack(out)[:, None]  # (b, 1, k, D): get_reduced_features flattens it

    return reduce


def evaluate(pipe, records, video_root, frames, method, stride, seed):
    from stormvl.evaluation.runner import resolve_video

    model = pipe.model
    saved = model.reduce_video_tokens
    if method in ("random-drop", "merge"):
        model.reduce_video_tokens = reduce_after_pooling(model, method, torch.Generator().manual_seed(seed))
    try:
        # Frame dropping reads fewer frames; every other method reads them all and reduces after.
        kw = (
            dict(num_frames=frames // stride, temporal_sample=1)
            if method == "frame-drop"
            else dict(num_frames=frames, temporal_sample=stride)
        )
        items = [(resolve_video(r, video_root), r.question, r.options) for r in records]
        t = time.perf_counter()
        answers = pipe.answer_batch(items, batch_size=16, **kw)
        seconds = time.perf_counter() - t
    finally:
        model.reduce_video_tokens = saved
    per_task: dict[str, list[int]] = {}
    for r, a in zip(records, answers):
        per_task.setdefault(r.task_type, []).append(int(a.letter == r.answer))
    tokens = {a.visual_tokens for a in answers}
    assert len(tokens) == 1, tokens
    return {
        "frames": frames,
        "method": method,
        "stride": stride,
        "visual_tokens": tokens.pop(),
        "accuracy": 100 * sum(sum(v) for v in per_task.values()) / len(records),
        "per_task": {k: 100 * sum(v) / len(v) for k, v in sorted(per_task.items())},
        "s_per_answer": seconds / len(records),
    }


def table(rows) -> str:
    tasks = list(rows[0]["per_task"])
    lines = [
        "| frames read | method | LLM visual tokens | " + " | ".join(tasks) + " | overall | ms / answer |",
        "|---" * (len(tasks) + 5) + "|",
    ]
    for r in rows:
        cells = " | ".join(f"{r['per_task'][t]:.1f}" for t in tasks)
        ms = 1000 * r["s_per_answer"]
        lines.append(
            f"| {r['frames']} | {r['method']} | {r['visual_tokens']} | {cells} | {r['accuracy']:.1f} | {ms:.1f} |"
        )
    return "\n".join(lines)


def plot(rows, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    frame_counts = sorted({r["frames"] for r in rows})
    fig, axes = plt.subplots(1, len(frame_counts), figsize=(5 * len(frame_counts), 4), squeeze=False)
    for ax, f in zip(axes[0], frame_counts):
        for m in METHODS:
            # The stride-1 point (the model as trained) starts every curve.
            pts = {(r["visual_tokens"], r["accuracy"]) for r in rows if r["frames"] == f and r["method"] == m}
            pts |= {(r["visual_tokens"], r["accuracy"]) for r in rows if r["frames"] == f and r["stride"] == 1}
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LLM visual tokens per video")
        ax.set_ylabel("held-out accuracy (%)")
        ax.axhline(25, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(f"{f} frames read")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a STORM model folder (default: the embedded model)")
    ap.add_argument("--num", type=int, default=500, help="held-out questions (seed 4242)")
    ap.add_argument("--frames", type=int, nargs="+", default=None, help="frames read (default: the model's)")
    ap.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "reduction_curve"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "reduction_curve.png"))
    a = ap.parse_args()
    import stormvl
    from stormvl.data.synthetic import generate_split

    torch.set_num_threads(2)
    pipe = stormvl.load(a.model)
    rows = []
    for frames in a.frames or [pipe.config.num_frames]:
        split = Path(a.out) / f"heldout_{frames}f"
        records = generate_split(split, a.num, frames=frames, seed=4242)
        for s in a.strides:
            if frames % s or frames // s < pipe.config.temporal_pool:
                continue  # frame dropping could not reach this count
            for m in METHODS if s > 1 else ["storm"]:  # at stride 1 every method is the model as trained
                rows.append(evaluate(pipe, records, split, frames, m, s, a.seed))
                r = rows[-1]
                print(f"{frames}f {m:12s} s={s} tokens={r['visual_tokens']:4d} acc={r['accuracy']:.1f}", flush=True)
    out = Path(a.out)
    (out / "results.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    md = table(rows)
    (out / "table.md").write_text(md + "\n")
    print(md)
    if plot(rows, Path(a.plot)):
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
