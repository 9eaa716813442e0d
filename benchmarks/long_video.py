"""An hour of video in bounded memory: a generated 1-hour 640x360 H.264 file answered with a budget
of 4096 visual tokens, with the efficiency bench's model shape (random weights), each stage timed,
and the peak resident memory (RSS) of the process; then the same frames without the temporal
encoder and reduction (every frame token to the LLM), for comparison.

    python benchmarks/long_video.py [--minutes 60] [--budget 4096]

Each setting runs in its own process, so each peak RSS is its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_video(path: Path, minutes: float, fps: int = 2) -> Path:
    """Shapes moving over a 640x360 frame: cheap to draw and to encode (about 30 s for an hour)."""
    from stormvl.video import write_video

    if path.exists():
        return path
    n = int(minutes * 60 * fps)

    def frames():
        base = np.zeros((360, 640, 3), np.uint8)
        for i in range(n):
            f = base.copy()
            x, y = (i * 5) % 600, int(160 + 120 * np.sin(i / 50))
            f[y : y + 40, x : x + 40] = (220, 40, 40)
            f[300:340, (i * 3) % 600 : (i * 3) % 600 + 40] = (40, 200, 60)
            yield f

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames(), fps=fps, gop=fps * 20)
    return path


def run_setting(video: str, setting: str, budget: int) -> dict:
    import torch

    from stormvl.bench.settings import bench_config
    from stormvl.models.storm import StormForConditionalGeneration
    from stormvl.pipeline import EncodedVideo, Request, StormPipeline
    from stormvl.processing import StormProcessor
    from stormvl.testing import build_word_tokenizer
    from stormvl.token_budget import plan_budget

    storm = bench_config("storm+tpool4")
    cfg = bench_config(setting)
    tok = build_word_tokenizer(["what happens in the video ?"], ["<video>"])
    cfg.video_token_id = tok.convert_tokens_to_ids("<video>")
    torch.manual_seed(0)
    model = StormForConditionalGeneration(cfg).eval()
    pipe = StormPipeline(model, StormProcessor(tok, cfg))
    # Both settings read the frames STORM's budget plan chooses.
    plan = plan_budget(storm, budget)
    times = {}
    t = time.perf_counter()
    clip = pipe.load_clip(video, plan.num_frames)
    times["decode"] = time.perf_counter() - t
    with torch.inference_mode():
        t = time.perf_counter()
        step = cfg.vision_batch_size
        tokens = torch.cat([
            model.get_frame_features(pipe.processor.preprocess(clip.frames[i : i + step]))
            for i in range(0, len(clip.frames), step)
        ])  # fmt: skip
        times["vision tower + projector"] = time.perf_counter() - t
        t = time.perf_counter()
        feats = model.get_reduced_features([tokens], plan.temporal_sample)[0]
        times["temporal encoder + reduction"] = time.perf_counter() - t
        del tokens
        enc = EncodedVideo(feats, len(clip.frames), list(clip.timestamps), plan.temporal_sample)
        t = time.perf_counter()
        ans = pipe.respond([Request(enc, "what happens in the video ?", max_new_tokens=8)])[0]
        times["LLM prefill + 8 tokens"] = time.perf_counter() - t
    return {
        "setting": setting,
        "frames": len(clip.frames),
        "visual_tokens": ans.visual_tokens,
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "total_s": round(sum(times.values()), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--settings", nargs="+", default=["storm+tpool4", "baseline"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "long_video"))
    ap.add_argument("--one", nargs=2, metavar=("VIDEO", "SETTING"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_setting(a.one[0], a.one[1], a.budget)))
        return
    t = time.perf_counter()
    video = make_video(Path(a.out) / f"video_{a.minutes:g}min.mp4", a.minutes)
    print(f"video: {video} ({video.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - t:.0f} s to make)")
    rows = []
    for setting in a.settings:
        r = subprocess.run([sys.executable, __file__, "--one", str(video), setting, "--budget", str(a.budget)],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            rows.append({"setting": setting, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    stages = list(next(r for r in rows if "seconds" in r)["seconds"])
    print(
        "\n| setting | frames | LLM visual tokens | "
        + " | ".join(f"{s} s" for s in stages)
        + " | total s | peak RSS MiB |"
    )
    print("|---" * (len(stages) + 5) + "|")
    for r in rows:
        if "error" in r:
            print(f"| {r['setting']} | could not run: {r['error']} |")
            continue
        cells = " | ".join(f"{r['seconds'][s]:.2f}" for s in stages)
        print(
            f"| {r['setting']} | {r['frames']} | {r['visual_tokens']} | {cells} | {r['total_s']:.2f} "
            f"| {r['peak_rss_mib']} |"
        )
    (Path(a.out) / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
