"""What the frames' timestamps in the prompt buy: two tiny STORM models trained with the same recipe
on the synthetic "when" task (at what second does a shape appear; clips last 2 to 8 seconds, so
frame positions alone cannot tell the second), one with `prompt_timestamps`, one without. Reports
held-out accuracy and the mean error in seconds of the chosen option.

    python benchmarks/timestamps.py [--train-videos 1200] [--steps 300 900] [--seeds 0]

Both trainings run side by side (one core each); reruns resume.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from ablation_synthetic import train_all

ROOT = Path(__file__).resolve().parents[1]


def recipe(train: Path, out: Path, steps, seed: int, timestamps: bool) -> dict:
    storm = dict(
        temporal_pool=4, spatial_pool=2, temporal_layers=2, mamba_head_dim=32, mamba_state_size=32,
        video_position="after", choice_mode="likelihood", prompt_timestamps=timestamps,
    )  # fmt: skip
    return {
        "output_dir": str(out),
        "seed": seed,
        "data": {
            "train": [str(train / "annotations.jsonl"), str(train / "captions.jsonl")],
            "num_frames": 16,
            "open_ended_ratio": 1.0,
        },
        "model": {
            "init": "tiny",
            "tiny": dict(hidden=128, llm_layers=3, vision_hidden=64, vision_layers=2, image_size=64, patch_size=8),
            "storm": storm,
        },
        "stages": [
            {
                "name": "captions",
                "train": "all",
                "steps": steps[0],
                "lr": 2e-3,
                "data": [str(train / "captions.jsonl")],
            },  # noqa: E501
            {"name": "sft", "train": "all", "steps": steps[1], "lr": 2e-3},
        ],
        "batch_size": 16,
        "warmup_steps": 50,
        "save_every": 200,
    }


def seconds_error(eval_dir: Path, records: dict) -> list[float]:
    """|seconds of the chosen option - true seconds| per question."""
    from stormvl.data.synthetic import option_seconds

    errs = []
    for line in (eval_dir / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        rec = records[row["id"]]
        chosen = rec["options"]["ABCD".index(row["pred"])]
        errs.append(abs(option_seconds(chosen) - rec["extra"]["truth"]["seconds"]))
    return errs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=1200)
    ap.add_argument("--eval-videos", type=int, default=300)
    ap.add_argument("--steps", type=int, nargs=2, default=[300, 900], help="caption stage, QA stage")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "timestamps"))
    a = ap.parse_args()
    from stormvl.data.synthetic import generate_split

    out = Path(a.out).resolve()
    train, heldout = out / "synth_train", out / "synth_heldout"
    generate_split(train, a.train_videos, frames=16, seed=2000, tasks=["when"])
    generate_split(heldout, a.eval_videos, frames=16, seed=4242, tasks=["when"])
    from stormvl.data.records import read_jsonl

    records = {r["id"]: r for r in read_jsonl(heldout / "annotations.jsonl")}
    names = {(ts, s): f"{'with' if ts else 'without'}_s{s}" for s in a.seeds for ts in (True, False)}
    todo = []
    for (ts, s), name in names.items():
        cfg_path = out / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(recipe(train, out / name, a.steps, s, ts)))
        if not (out / name / "final" / "config.json").is_file():
            todo.append(cfg_path)
    train_all(todo, a.jobs)
    rows = {}
    for (ts, _), name in names.items():
        ev = out / f"eval_{name}"
        if not (ev / "summary.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "stormvl.cli", "eval", "--benchmark", "synthetic", "--annotations",
                 str(heldout / "annotations.jsonl"), "--model", str(out / name / "final"), "--out", str(ev),
                 "--no-progress"],
                check=True,
            )  # fmt: skip
        errs = seconds_error(ev, records)
        summary = json.loads((ev / "summary.json").read_text())
        rows.setdefault(ts, []).append((summary["overall"], statistics.mean(errs)))
    from stormvl.data.synthetic import option_seconds

    # A random pick among each question's options, on average.
    chance = statistics.mean(
        statistics.mean(abs(option_seconds(o) - r["extra"]["truth"]["seconds"]) for o in r["options"])
        for r in records.values()
    )
    lines = ["| prompt | accuracy % | mean error s | seeds |", "|---|---|---|---|"]
    for ts in (False, True):
        acc = [r[0] for r in rows[ts]]
        err = [r[1] for r in rows[ts]]
        spread = lambda v: f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""
        label = "frames' times (`prompt_timestamps: true`)" if ts else "no times"
        lines.append(
            f"| {label} | {statistics.mean(acc):.1f}{spread(acc)} | {statistics.mean(err):.2f}{spread(err)} "
            f"| {len(acc)} |"
        )
    lines.append(f"| a random option (expected) | 25.0 | {chance:.2f} | |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
