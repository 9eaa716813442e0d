"""The paper's central claim at small scale, with matched training (same data, steps, seed):

  (a) no temporal encoder + temporal pooling 4x       (VILA-style projector, pooled)
  (b) STORM temporal encoder + temporal pooling 4x
  (c) no temporal encoder, no pooling                 (4x the LLM visual tokens)
  (d) model (b) on twice the frames with test-time temporal sampling 2x
and two controls for (d) on the same 2x-frame clips: (b) reading all 2x frames unsampled (2x the
LLM visual tokens it was trained on), and (b) decoding only half the frames (sampling before the
encoder instead of after it).

    python benchmarks/ablation_synthetic.py [--train-videos 6000] [--out runs/ablation] [--jobs 2]

Prints a markdown table: accuracy per question type, LLM visual tokens, seconds per answer.
Reruns resume: finished trainings and evaluations are reused.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Every variant is the embedded model's recipe (scripts/default_model.yaml: data, steps, seed,
# tiny sizes) with only the encoder and the temporal pooling changed; (b) *is* that recipe, so the
# embedded model's own run is reused when it exists.
RECIPE = ROOT / "scripts" / "default_model.yaml"
VARIANTS = {
    "a": {"use_temporal_encoder": False, "projector_type": "mlp", "temporal_pool": 4},
    "b": {},
    "c": {"use_temporal_encoder": False, "projector_type": "mlp", "temporal_pool": 1},
    "b1": {"mamba_version": 1},  # (b) with the paper's Mamba-1 block in place of Mamba-2
}
LABELS = {
    "b1": "(b) with Mamba-1 (S6) instead of Mamba-2",
    "a": "(a) no encoder, T.pool 4x + S.pool 2x2",
    "b": "(b) STORM, T.pool 4x + S.pool 2x2",
    "c": "(c) no encoder, S.pool 2x2 only",
    "d": "(d) STORM, T.pool 4x + S.pool 2x2 + T.sample 2x on 2x frames",
    "d1": "control: (b) on 2x frames, no sampling",
    "d2": "control: (b) decoding 1x frames of the 2x clips",
}


def run(cmd):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=6000)
    ap.add_argument("--eval-videos", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablation"))
    ap.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    ap.add_argument("--only", nargs="+", help="rows to run (default: all), e.g. --only b b1")
    a = ap.parse_args()
    from stormvl.data.synthetic import generate_split

    recipe = yaml.safe_load(RECIPE.read_text())
    frames = recipe["data"]["num_frames"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train_split = ROOT / "runs" / "synth_train"
    heldout = ROOT / "runs" / "synth_heldout"
    generate_split(train_split, a.train_videos, frames=frames, seed=1000)
    generate_split(heldout, a.eval_videos, frames=frames, seed=4242)
    # (d) needs twice the frames of the same kind of clip: the held-out questions rendered at 2x frames.
    heldout2 = ROOT / "runs" / f"synth_heldout_{2 * frames}f"
    generate_split(heldout2, a.eval_videos, frames=2 * frames, seed=4242)
    results, finals, todo = {}, {}, []
    evals = {
        "a": ("a", frames, 1, heldout),
        "b": ("b", frames, 1, heldout),
        "b1": ("b1", frames, 1, heldout),
        "c": ("c", frames, 1, heldout),
        "d": ("b", 2 * frames, 2, heldout2),
        "d1": ("b", 2 * frames, 1, heldout2),
        "d2": ("b", frames, 1, heldout2),
    }
    if a.only:
        unknown = sorted(set(a.only) - set(evals))
        if unknown:
            sys.exit(f"unknown rows {unknown}; choose from {sorted(evals)}")
        evals = {k: v for k, v in evals.items() if k in a.only}
    needed = {model for model, *_ in evals.values()}
    for name, change in VARIANTS.items():
        if name not in needed:
            continue
        cfg = json.loads(json.dumps(recipe))
        # The recipe's paths are relative to its own folder; this config lives elsewhere.
        cfg["data"]["train"] = [str((RECIPE.parent / f).resolve()) for f in cfg["data"]["train"]]
        for stage in cfg["stages"]:
            if stage.get("data"):
                stage["data"] = [str((RECIPE.parent / f).resolve()) for f in stage["data"]]
        cfg["model"]["storm"].update(change)
        cfg["output_dir"] = str(ROOT / "runs" / "default_model") if not change else str(out / name)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        finals[name] = Path(cfg["output_dir"]) / "final"
        if not (finals[name] / "config.json").is_file():
            todo.append(out / f"{name}.yaml")
    # Trainings run side by side with the cores split between them (a resumed run continues).
    threads = max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    for i in range(0, len(todo), a.jobs):
        procs = []
        for cfg_path in todo[i : i + a.jobs]:
            print("+ stormvl train", cfg_path, flush=True)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "stormvl.cli", "train", str(cfg_path)],
                    env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
                )
            )
        if any(p.wait() != 0 for p in procs):
            sys.exit("a training run failed")
    for key, (model, n, s, split) in evals.items():
        eo = out / f"eval_{key}"
        run(
            [
                sys.executable,
                "-m",
                "stormvl.cli",
                "eval",
                "--benchmark",
                "synthetic",
                "--annotations",
                split / "annotations.jsonl",
                "--model",
                finals[model],
                "--frames",
                n,
                "--temporal-sample",
                s,
                "--out",
                eo,
                "--no-progress",
            ]
        )
        results[key] = json.loads((eo / "summary.json").read_text())
    tasks = sorted(next(iter(results.values()))["per_task"])
    lines = [
        "| setting | " + " | ".join(tasks) + " | overall | LLM visual tokens | s / answer |",
        "|---" * (len(tasks) + 4) + "|",
    ]
    for key, s in results.items():
        row = [f"{s['per_task'][t]['accuracy']:.1f}" for t in tasks]
        lines.append(
            f"| {LABELS[key]} | " + " | ".join(row) + f" | {s['overall']:.1f} | {s['settings']['visual_tokens']} "
            f"| {s['seconds_per_answer']:.3f} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
