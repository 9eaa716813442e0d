"""The paper's central claim at small scale, with matched training (same data, steps, seed):

  (a) no temporal encoder + temporal pooling 4x       (VILA-style projector, pooled)
  (b) STORM temporal encoder + temporal pooling 4x
  (c) no temporal encoder, no pooling                 (4x the LLM visual tokens)
  (d) model (b) on twice the frames with test-time temporal sampling 2x

    python benchmarks/ablation_synthetic.py [--steps 1200] [--train-videos 6000] [--out runs/ablation]

Prints a markdown table: accuracy per question type, LLM visual tokens, seconds per answer.
Reruns resume: finished trainings and evaluations are reused.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden": 128, "llm_layers": 3, "vision_hidden": 64, "vision_layers": 2, "image_size": 64, "patch_size": 8}
VARIANTS = {
    "a": {"use_temporal_encoder": False, "projector_type": "mlp", "temporal_pool": 4},
    "b": {"temporal_pool": 4, "temporal_layers": 2, "mamba_head_dim": 32, "mamba_state_size": 32},
    "c": {"use_temporal_encoder": False, "projector_type": "mlp", "temporal_pool": 1},
}
LABELS = {"a": "(a) no encoder + T.pool 4x", "b": "(b) STORM + T.pool 4x", "c": "(c) no encoder, no pooling",
          "d": "(d) STORM + T.pool 4x + T.sample 2x on 2x frames"}


def run(cmd):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--train-videos", type=int, default=6000)
    ap.add_argument("--eval-videos", type=int, default=500)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablation"))
    a = ap.parse_args()
    from stormvl.data.synthetic import generate_split

    out = Path(a.out)
    train_split = ROOT / "runs" / "synth_train"
    heldout = ROOT / "runs" / "synth_heldout"
    generate_split(train_split, a.train_videos, frames=a.frames, seed=1000)
    generate_split(heldout, a.eval_videos, frames=a.frames, seed=4242)
    # (d) needs twice the frames of the same kind of clip: the held-out questions rendered at 2x frames.
    heldout2 = ROOT / "runs" / f"synth_heldout_{2 * a.frames}f"
    generate_split(heldout2, a.eval_videos, frames=2 * a.frames, seed=4242)
    results = {}
    for name, storm in VARIANTS.items():
        cfg = {"output_dir": str(out / name), "seed": 0, "batch_size": 16, "save_every": 300,
               "data": {"train": [str(train_split / "annotations.jsonl")], "num_frames": a.frames, "open_ended_ratio": 0.5},
               "model": {"init": "tiny", "tiny": TINY, "storm": storm},
               "stages": [{"name": "sft", "train": "all", "steps": a.steps, "lr": 2e-3}]}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        if not (out / name / "final" / "config.json").is_file():
            run([sys.executable, "-m", "stormvl.cli", "train", out / f"{name}.yaml"])
    evals = {"a": ("a", a.frames, 1, heldout), "b": ("b", a.frames, 1, heldout), "c": ("c", a.frames, 1, heldout),
             "d": ("b", 2 * a.frames, 2, heldout2)}
    for key, (model, frames, s, split) in evals.items():
        eo = out / f"eval_{key}"
        run([sys.executable, "-m", "stormvl.cli", "eval", "--benchmark", "synthetic", "--annotations",
             split / "annotations.jsonl", "--model", out / model / "final", "--frames", frames,
             "--temporal-sample", s, "--out", eo, "--no-progress"])
        results[key] = json.loads((eo / "summary.json").read_text())
    tasks = sorted(results["a"]["per_task"])
    lines = ["| setting | " + " | ".join(tasks) + " | overall | LLM visual tokens | s / answer |",
             "|---" * (len(tasks) + 4) + "|"]
    for key, s in results.items():
        row = [f"{s['per_task'][t]['accuracy']:.1f}" for t in tasks]
        lines.append(f"| {LABELS[key]} | " + " | ".join(row) + f" | {s['overall']:.1f} | {s['settings']['visual_tokens']} "
                     f"| {s['seconds_per_answer']:.3f} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
