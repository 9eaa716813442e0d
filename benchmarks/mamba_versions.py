"""Mamba-1 (the paper's block) against Mamba-2 in the temporal encoder, with everything else equal:
the same small recipe (examples/train_tiny.yaml's model, more data and steps), the same data, the
same seeds; accuracy on a held-out split per question type, mean and spread over seeds, and the
training time of each.

    python benchmarks/mamba_versions.py [--train-videos 1000] [--steps 400 800] [--seeds 0 1 2]

Reruns resume: finished trainings and evaluations are reused.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=1000)
    ap.add_argument("--eval-videos", type=int, default=250)
    ap.add_argument("--steps", type=int, nargs=2, default=[400, 800], help="caption stage, QA stage")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "runs" / "mamba_versions"))
    a = ap.parse_args()
    from stormvl.data.synthetic import generate_split

    out = Path(a.out)
    train, heldout = out / "synth_train", out / "synth_heldout"
    generate_split(train, a.train_videos, frames=16, seed=2000)
    generate_split(heldout, a.eval_videos, frames=16, seed=4242)
    recipe = yaml.safe_load((ROOT / "examples" / "train_tiny.yaml").read_text())
    results = {}
    for seed in a.seeds:  # seed-major: each seed's pair of versions finishes together
        for version in (1, 2):
            name = f"m{version}_s{seed}"
            cfg = json.loads(json.dumps(recipe))
            cfg.update(output_dir=str(out / name), seed=seed, save_every=200)
            cfg["data"]["train"] = [str(train / "annotations.jsonl"), str(train / "captions.jsonl")]
            cfg["stages"][0].update(steps=a.steps[0], data=[str(train / "captions.jsonl")])
            cfg["stages"][1].update(steps=a.steps[1])
            cfg["model"]["storm"]["mamba_version"] = version
            (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            final = out / name / "final"
            timing = out / name / "train_seconds.json"
            if not (final / "config.json").is_file():
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "stormvl.cli", "train", str(out / f"{name}.yaml")], check=True)
                timing.write_text(json.dumps(time.perf_counter() - t))
            ev = out / f"eval_{name}"
            if not (ev / "summary.json").is_file():
                subprocess.run(
                    [sys.executable, "-m", "stormvl.cli", "eval", "--benchmark", "synthetic", "--annotations",
                     str(heldout / "annotations.jsonl"), "--model", str(final), "--out", str(ev), "--no-progress"],
                    check=True,
                )  # fmt: skip
            summary = json.loads((ev / "summary.json").read_text())
            summary["train_seconds"] = json.loads(timing.read_text()) if timing.exists() else None
            results[name] = summary
    tasks = sorted(next(iter(results.values()))["per_task"])
    lines = ["| block | " + " | ".join(tasks) + " | overall | train min / run |", "|---" * (len(tasks) + 3) + "|"]
    for version in (1, 2):
        runs = [results[f"m{version}_s{s}"] for s in a.seeds]

        def cell(values):
            m = statistics.mean(values)
            return f"{m:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{m:.1f}"

        row = [cell([r["per_task"][t]["accuracy"] for r in runs]) for t in tasks]
        minutes = [r["train_seconds"] / 60 for r in runs if r["train_seconds"]]
        lines.append(
            f"| Mamba-{version} | " + " | ".join(row) + f" | {cell([r['overall'] for r in runs])} "
            f"| {statistics.mean(minutes):.1f} |"
            if minutes
            else f"| Mamba-{version} | " + " | ".join(row) + f" | {cell([r['overall'] for r in runs])} | |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
