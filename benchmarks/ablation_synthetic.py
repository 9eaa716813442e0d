"""The paper's central claim at small scale, with matched training (same data, steps, seeds):

  (a) no temporal encoder + temporal pooling 4x       (VILA-style projector, pooled)
  (b) STORM temporal encoder + temporal pooling 4x
  (ctrl) (b) with the Mamba layers replaced by per-token MLP layers of the same parameter count:
       the same capacity in the same place, no mixing across tokens (isolates temporal mixing)
  (c) no temporal encoder, no temporal pooling         (4x the LLM visual tokens)
  (d) model (b) on twice the frames with test-time temporal sampling 2x
and two controls for (d) on the same 2x-frame clips: (b) reading all 2x frames unsampled (2x the
LLM visual tokens it was trained on), and (b) decoding only half the frames (sampling before the
encoder instead of after it). Row b1, (b) with Mamba-1, runs only when asked (--only b1): on 2 CPU
cores its scan makes a training take hours; on a GPU (used when present, for training and evaluation)
its scan runs in log-depth rounds and trains about as fast as Mamba-2.

    python benchmarks/ablation_synthetic.py [--seeds 0 1 2] [--steps 800 2600] [--only a b ctrl] [--jobs 2]

Prints a markdown table (accuracy per question type, mean ± stdev over seeds; LLM visual tokens;
seconds per answer; final training loss) and draws every run's loss curve in docs/ablation_curves.png.
Reruns resume: finished trainings and evaluations are reused, an interrupted training continues.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Every variant is the embedded model's recipe (scripts/default_model.yaml: data, steps, tiny
# sizes) with only the temporal encoder and the temporal pooling changed, trained once per seed.
RECIPE = ROOT / "scripts" / "default_model.yaml"
VARIANTS = {
    "a": {"use_temporal_encoder": False, "projector_type": "mlp", "temporal_pool": 4},
    "b": {},
    "ctrl": {"temporal_mixer": "token_mlp"},
    "c": {"use_temporal_encoder": False, "projector_type": "mlp", "temporal_pool": 1},
    "b1": {"mamba_version": 1},  # (b) with the paper's Mamba-1 block in place of Mamba-2
}
DEFAULT_ROWS = ["a", "b", "ctrl", "c", "d", "d1", "d2"]
LABELS = {
    "b1": "(b) with Mamba-1 (S6) instead of Mamba-2",
    "a": "(a) no encoder, T.pool 4x + S.pool 2x2",
    "b": "(b) STORM, T.pool 4x + S.pool 2x2",
    "ctrl": "control: (b) with per-token MLPs of equal size, no mixing",
    "c": "(c) no encoder, S.pool 2x2 only",
    "d": "(d) STORM, T.pool 4x + S.pool 2x2 + T.sample 2x on 2x frames",
    "d1": "control: (b) on 2x frames, no sampling",
    "d2": "control: (b) decoding 1x frames of the 2x clips",
}


def run_all(commands, jobs):
    """(command, log file) pairs, `jobs` at a time, the cores split between them; a finished one
    makes room for the next at once. Each one's output goes to its log file."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    todo, running = list(commands), []
    while todo or running:
        while todo and len(running) < jobs:
            cmd, log = todo.pop(0)
            print("+", " ".join(map(str, cmd)), ">", log, flush=True)
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as f:
                running.append((subprocess.Popen([str(c) for c in cmd], env=env, stdout=f, stderr=f), log))
        time.sleep(2)
        for p, log in [r for r in running if r[0].poll() is not None]:
            if p.returncode != 0:
                sys.exit(f"failed (exit {p.returncode}); see {log}")
            running.remove((p, log))


def losses(run_dir: Path):
    """(global step, loss) pairs from a training log."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r["global_step"] for r in rows], [r["loss"] for r in rows]


def cell(values, fmt="{:.1f}"):
    if len(values) == 1:
        return fmt.format(values[0])
    return (fmt + " ± " + fmt).format(statistics.mean(values), statistics.stdev(values))


def plot_curves(run_dirs, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {}
    for (variant, seed), run_dir in sorted(run_dirs.items()):
        steps, loss = losses(run_dir)
        color = colors.setdefault(variant, f"C{len(colors)}")
        ax.plot(steps, loss, color=color, alpha=0.7, lw=1, label=LABELS[variant] if seed == min(
            s for v, s in run_dirs if v == variant) else None)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("training step (both stages)")
    ax.set_ylabel("training loss")
    ax.set_title("Ablation training curves, one line per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=6000)
    ap.add_argument("--eval-videos", type=int, default=500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablation"))
    ap.add_argument("--jobs", type=int, default=2, help="trainings (and evaluations) run at once")
    ap.add_argument("--only", nargs="+", help=f"rows to run (default: {' '.join(DEFAULT_ROWS)}), e.g. --only b b1")
    ap.add_argument("--steps", type=int, nargs=2, help="caption and QA stage steps (default: the recipe's)")
    ap.add_argument("--curves", default=str(ROOT / "docs" / "ablation_curves.png"))
    a = ap.parse_args()
    from stormvl.data.synthetic import generate_split

    recipe = yaml.safe_load(RECIPE.read_text())
    frames = recipe["data"]["num_frames"]
    out = Path(a.out).resolve()  # the run configs written there name their output by this path
    out.mkdir(parents=True, exist_ok=True)
    train_split = ROOT / "runs" / "synth_train"
    heldout = ROOT / "runs" / "synth_heldout"
    workers = os.cpu_count() or 1
    generate_split(train_split, a.train_videos, frames=frames, seed=1000, workers=workers)
    generate_split(heldout, a.eval_videos, frames=frames, seed=4242, workers=workers)
    # (d) needs twice the frames of the same kind of clip: the held-out questions rendered at 2x frames.
    heldout2 = ROOT / "runs" / f"synth_heldout_{2 * frames}f"
    generate_split(heldout2, a.eval_videos, frames=2 * frames, seed=4242, workers=workers)
    evals = {  # row: (trained variant, frames decoded, test-time temporal sampling, split)
        "a": ("a", frames, 1, heldout),
        "b": ("b", frames, 1, heldout),
        "b1": ("b1", frames, 1, heldout),
        "ctrl": ("ctrl", frames, 1, heldout),
        "c": ("c", frames, 1, heldout),
        "d": ("b", 2 * frames, 2, heldout2),
        "d1": ("b", 2 * frames, 1, heldout2),
        "d2": ("b", frames, 1, heldout2),
    }
    rows = a.only or DEFAULT_ROWS
    unknown = sorted(set(rows) - set(evals))
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {sorted(evals)}")
    needed = [v for v in VARIANTS if v in {evals[r][0] for r in rows}]
    run_dirs, todo = {}, []
    for seed in a.seeds:  # seed-major, so a stopped run still has whole seeds to report
        for name in needed:
            cfg = json.loads(json.dumps(recipe))
            # The recipe's paths are relative to its own folder; this config lives elsewhere.
            cfg["data"]["train"] = [str((RECIPE.parent / f).resolve()) for f in cfg["data"]["train"]]
            for stage in cfg["stages"]:
                if stage.get("data"):
                    stage["data"] = [str((RECIPE.parent / f).resolve()) for f in stage["data"]]
            cfg["model"]["storm"].update(VARIANTS[name])
            if a.steps:
                for stage, steps in zip(cfg["stages"], a.steps):
                    stage["steps"] = steps
            cfg["seed"] = seed
            cfg["output_dir"] = str(out / f"{name}_s{seed}")
            (out / f"{name}_s{seed}.yaml").write_text(yaml.safe_dump(cfg))
            run_dirs[name, seed] = Path(cfg["output_dir"])
            if not (run_dirs[name, seed] / "final" / "config.json").is_file():
                cmd = [sys.executable, "-m", "stormvl.cli", "train", out / f"{name}_s{seed}.yaml"]
                todo.append((cmd, out / f"{name}_s{seed}.log"))
    run_all(todo, a.jobs)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the trainer ran too
    todo = []
    for seed in a.seeds:
        for key in rows:
            model, n, sample, split = evals[key]
            eo = out / f"eval_{key}_s{seed}"
            if not (eo / "summary.json").is_file():
                cmd = [sys.executable, "-m", "stormvl.cli", "eval", "--benchmark", "synthetic", "--annotations",
                       split / "annotations.jsonl", "--model", run_dirs[model, seed] / "final", "--frames", n,
                       "--temporal-sample", sample, "--out", eo, "--no-progress", "--device", device]  # fmt: skip
                todo.append((cmd, out / f"eval_{key}_s{seed}.log"))
    run_all(todo, a.jobs)
    results = {
        (key, seed): json.loads((out / f"eval_{key}_s{seed}" / "summary.json").read_text())
        for seed in a.seeds
        for key in rows
    }
    tasks = sorted(results[rows[0], a.seeds[0]]["per_task"])
    lines = [
        "| setting | " + " | ".join(tasks) + " | overall | LLM visual tokens | s / answer | final train loss |",
        "|---" * (len(tasks) + 5) + "|",
    ]
    for key in rows:
        runs = [results[key, seed] for seed in a.seeds]
        accs = [cell([r["per_task"][t]["accuracy"] for r in runs]) for t in tasks]
        # The loss over the last 10 logged steps, averaged: one logged step is noisy.
        final = [statistics.mean(losses(run_dirs[evals[key][0], seed])[1][-10:]) for seed in a.seeds]
        lines.append(
            f"| {LABELS[key]} | " + " | ".join(accs) + f" | {cell([r['overall'] for r in runs])} "
            f"| {runs[0]['settings']['visual_tokens']} | {statistics.mean(r['seconds_per_answer'] for r in runs):.3f} "
            f"| {cell(final, '{:.4f}')} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    plot_curves({k: v for k, v in run_dirs.items()}, Path(a.curves))
    print("curves:", a.curves)


if __name__ == "__main__":
    main()
