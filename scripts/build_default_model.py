"""Rebuild the embedded default model from nothing:

    python scripts/build_default_model.py            # synth data -> train -> package -> evaluate

1. writes a synthetic training split (seed 1000: videos, QA records, captions) under runs/synth_train,
2. trains scripts/default_model.yaml (resumes if interrupted),
3. copies the result into src/stormvl/default_model/ and writes examples/clip.mp4,
4. evaluates on a held-out split (seed 4242, never used in training) and prints the table.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_example(path):
    from stormvl.data.synthetic import FPS, blank_frames, draw
    from stormvl.video import write_video

    f = blank_frames(16)
    for t in range(16):
        draw(f[t], "square", "red", 12 + 40 * t / 15, 30)
    write_video(path, f, fps=FPS)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-videos", type=int, default=6000)
    ap.add_argument("--eval-videos", type=int, default=500)
    ap.add_argument("--skip-train", action="store_true")
    a = ap.parse_args()
    from stormvl.data.synthetic import generate_split

    runs = ROOT / "runs"
    if not a.skip_train:
        generate_split(runs / "synth_train", a.train_videos, frames=16, seed=1000, progress=True)
        subprocess.run(
            [sys.executable, "-m", "stormvl.cli", "train", str(ROOT / "scripts" / "default_model.yaml")], check=True
        )
        dest = ROOT / "src" / "stormvl" / "default_model"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(runs / "default_model" / "final", dest)
        write_example(ROOT / "examples" / "clip.mp4")
    generate_split(runs / "synth_heldout", a.eval_videos, frames=16, seed=4242, progress=True)
    shutil.rmtree(runs / "eval_heldout", ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stormvl.cli",
            "eval",
            "--benchmark",
            "synthetic",
            "--annotations",
            str(runs / "synth_heldout" / "annotations.jsonl"),
            "--out",
            str(runs / "eval_heldout"),
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
