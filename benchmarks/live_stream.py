"""Live video on this CPU: a generated 640x360 H.264 stream (5 minutes by default) fed to
`pipe.stream()` at 4 frames a second, with the efficiency bench's model shape (storm+tpool4, one
uni-directional Mamba layer; random weights: speed does not depend on them).

    python benchmarks/live_stream.py [--minutes 5] [--fps 4] [--realtime]

Reports the frames per second the session sustains (it keeps up when that is at least --fps),
and the process's resident memory (RSS) as the stream grows: only the reduced tokens accumulate.
Without --realtime the frames are fed as fast as they encode (the throughput); with it, at their
own pace (the run then takes the stream's length).
"""

import argparse
import resource
import time
from pathlib import Path

from long_video import make_video

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--realtime", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "live_stream"))
    a = ap.parse_args()
    import torch

    from stormvl.bench.settings import bench_config
    from stormvl.models.storm import StormForConditionalGeneration
    from stormvl.pipeline import StormPipeline
    from stormvl.processing import StormProcessor
    from stormvl.streaming import StreamSession, play
    from stormvl.testing import build_word_tokenizer
    from stormvl.video import iter_frames

    t = time.perf_counter()
    video = make_video(Path(a.out) / f"stream_{a.minutes:g}min.mp4", a.minutes, fps=8)
    print(f"stream: {video} ({time.perf_counter() - t:.1f} s to make)", flush=True)
    cfg = bench_config("storm+tpool4")
    cfg.temporal_bidirectional = False
    tok = build_word_tokenizer(["what happens in the video ?"], ["<video>"])
    cfg.video_token_id = tok.convert_tokens_to_ids("<video>")
    torch.manual_seed(0)
    model = StormForConditionalGeneration(cfg).eval()
    pipe = StormPipeline(model, StormProcessor(tok, cfg))
    session = StreamSession(pipe)
    size = cfg.vision_config.image_size
    chunk = max(1, int(a.fps))  # one second of frames per call
    marks = []
    start = time.perf_counter()

    def mark(fed, ts):  # after the first second, then each minute of stream
        if fed == chunk or fed % int(60 * a.fps) == 0:
            marks.append((ts, fed, time.perf_counter() - start, rss_mib(), session.tokens().shape[0]))

    frames = iter_frames(video, a.fps, size=size)
    fed, wall, _ = play(session, frames, realtime=a.realtime, chunk=chunk, after_chunk=mark)
    ans = session.ask("what happens in the video ?", max_new_tokens=4)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| stream time s | frames fed | wall s | RSS MiB | visual tokens so far |")
    print("|---|---|---|---|---|")
    for ts, n, w, rss, v in marks:
        print(f"| {ts:.0f} | {n} | {w:.1f} | {rss:.0f} | {v} |")
    print(
        f"\n{fed} frames ({a.minutes:g} min at {a.fps:g} fps) in {wall:.1f} s: {fed / wall:.1f} frames/s sustained "
        f"({'keeps up' if fed / wall >= a.fps else 'falls behind'} at {a.fps:g} fps); peak RSS {peak:.0f} MiB; "
        f"{ans.visual_tokens} visual tokens at the end; torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
