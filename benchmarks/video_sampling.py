"""Sampling 32 frames from a long video must cost a small fraction of decoding it fully.

Generates a 10-minute 640x360 H.264 file (once, cached), then times load_video(32 frames, with
seeking) against decoding every frame.

    python benchmarks/video_sampling.py [--minutes 10] [--frames 32]
"""

import argparse
import os
import tempfile
import time

import av
import numpy as np

from stormvl.video import load_video, write_video


def make_video(path, minutes, fps=30):
    n = int(minutes * 60 * fps)
    base = np.zeros((360, 640, 3), np.uint8)
    xs = np.arange(640)

    def frames():
        for i in range(n):
            f = base.copy()
            f[..., 0] = (xs[None, :] + i) % 256
            f[..., 1] = (i * 7) % 256
            x0 = (i * 3) % 600
            f[150:210, x0 : x0 + 40] = 255
            yield f

    write_video(path, frames(), fps=fps, crf=28, gop=250)  # libx264's default keyframe interval
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--path", default=os.path.join(tempfile.gettempdir(), "stormvl_bench_10min.mp4"))
    a = ap.parse_args()
    if not os.path.exists(a.path):
        t = time.perf_counter()
        n = make_video(a.path, a.minutes)
        print(f"wrote {a.path}: {n} frames in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    clip = load_video(a.path, a.frames)
    t_sample = time.perf_counter() - t
    t = time.perf_counter()
    with av.open(a.path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        total = sum(1 for _ in c.decode(s))
    t_full = time.perf_counter() - t
    print(
        f"| task | seconds |\n|---|---|\n| sample {len(clip.frames)} frames (seek) | {t_sample:.2f} |\n"
        f"| decode all {total} frames | {t_full:.2f} |\n"
        f"| ratio | {t_sample / t_full:.3f} ({t_full / t_sample:.1f}x faster) |"
    )


if __name__ == "__main__":
    main()
