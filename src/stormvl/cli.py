"""`stormvl` command: answer, synth, train, eval, bench.

Every error a user can cause (a `StormError`: bad video, bad config, missing file) ends as one
line on stderr and exit status 2; anything else is a bug and keeps its traceback. torch and
transformers are imported inside the commands, so `stormvl --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .errors import InputError, StormError, first_line


def _quiet_transformers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _check_counts(a, **ranges):
    """Integer flags in [low, high] (high None: no upper bound); None means "not given"."""
    for name, (low, high) in ranges.items():
        v = getattr(a, name)
        if v is not None and (v < low or (high is not None and v > high)):
            flag = "--" + name.replace("_", "-")
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise InputError(f"{flag} must be {bound}, got {v}")


def _check_text(text):
    if not text.strip():
        raise InputError("the question and options must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{text.encode('utf-8', 'replace').decode()!r}: not valid UTF-8 text") from None


def _writable_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{path}: output path exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create the output folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"{path}: output folder is not writable")


def cmd_answer(a):
    from .frame_plan import MAX_FRAMES
    from .model_folder import check_model_folder
    from .video import probe

    # Arguments and the video are checked before torch and the model load (seconds).
    if a.frames is not None and not 1 <= a.frames <= MAX_FRAMES:
        raise InputError(f"{a.video}: num_frames must be an integer in [1, {MAX_FRAMES}], got {a.frames}")
    _check_counts(a, temporal_sample=(1, None))
    for text in [a.question, *(a.options or [])]:
        _check_text(text)
    if a.model is not None:
        check_model_folder(a.model)
    info = probe(a.video)
    _quiet_transformers()
    from .pipeline import load

    pipe = load(a.model)
    frames = a.frames if a.frames is not None else pipe.config.num_frames
    options = a.options or None
    # A progress bar (stderr) only where decoding takes a noticeable time. Decoding problems come
    # back in ans.warnings (printed below), not twice.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ans = pipe.answer(
            a.video, a.question, options, num_frames=frames, temporal_sample=a.temporal_sample,
            progress=info.duration > 120,
        )  # fmt: skip
    if not a.json:  # what was read, after it was read (a failure leaves only its error line)
        print(
            f"{a.video}: {info.duration:.1f} s, {info.num_frames} frames; sampled {ans.num_frames} -> "
            f"{ans.visual_tokens} visual tokens",
            file=sys.stderr,
        )
    if a.json:
        print(
            json.dumps(
                {
                    "video": a.video,
                    "question": a.question,
                    "options": options,
                    "answer": ans.text,
                    "letter": ans.letter,
                    "num_frames": ans.num_frames,
                    "visual_tokens": ans.visual_tokens,
                    "timestamps": ans.timestamps,
                    "uncertain": ans.uncertain,
                    "warnings": ans.warnings,
                }
            )
        )
    else:
        print(ans.text)
    for w in ans.warnings:
        print(f"stormvl: warning: {w}", file=sys.stderr)


def cmd_synth(a):
    from .data.synthetic import TASKS, generate_split

    tasks = a.tasks.split(",") if a.tasks else TASKS
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise InputError(f"unknown task type(s) {bad}; choose from {TASKS}")
    _check_counts(a, num=(1, None), frames=(8, 4096))
    _writable_dir(a.out)
    recs = generate_split(a.out, a.num, a.frames, a.seed, tasks=tasks, progress=True)
    print(f"wrote {len(recs)} samples to {a.out}/annotations.jsonl", file=sys.stderr)


def cmd_train(a):
    from .train.config import load_train_config

    cfg = load_train_config(a.config)
    if a.output_dir:
        cfg.output_dir = a.output_dir
        cfg.validate()
    _quiet_transformers()
    from .train.trainer import train

    final = train(cfg)
    if final is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"model written to {final}", file=sys.stderr)


def cmd_eval(a):
    from .evaluation.readers import read_benchmark
    from .evaluation.runner import check_resume, evaluate, format_summary, merge
    from .frame_plan import MAX_FRAMES
    from .model_folder import check_model_folder
    from .pipeline import load

    _check_counts(a, frames=(1, MAX_FRAMES), temporal_sample=(1, None), limit=(1, None))
    records = read_benchmark(a.benchmark, a.annotations)
    if a.limit is not None:
        records = records[: a.limit]
    if a.model is not None:
        check_model_folder(a.model)
    if a.videos is not None and not os.path.isdir(a.videos):
        raise InputError(f"{a.videos}: --videos must be a folder")
    _writable_dir(a.out)
    _quiet_transformers()
    import torch.distributed as dist

    video_root = a.videos or os.path.dirname(os.path.abspath(a.annotations))
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    pipe = load(a.model)
    c = pipe.config
    frames = a.frames if a.frames is not None else c.num_frames
    settings = {
        "benchmark": a.benchmark,
        "annotations": os.path.abspath(a.annotations),
        "model": os.path.abspath(a.model) if a.model else "embedded-default",
        "num_frames": frames,
        "temporal_sample": a.temporal_sample or c.temporal_sample,
        "temporal_pool": c.temporal_pool,
        "spatial_pool": c.spatial_pool,
        "use_temporal_encoder": c.use_temporal_encoder,
        "visual_tokens": c.tokens_per_video(frames, a.temporal_sample),
        "choice_mode": c.choice_mode,
    }
    check_resume(a.out, settings)  # before any row is written
    evaluate(
        pipe,
        records,
        a.out,
        video_root=video_root,
        num_frames=frames,
        temporal_sample=a.temporal_sample,
        rank=rank,
        world=world,
        progress=not a.no_progress,
    )
    if world > 1:
        dist.barrier()
    if rank == 0:
        summary = merge(a.out, records, {**settings, "processes": world})
        if summary["answered"] == 0:
            raise InputError(
                f"nothing could be evaluated: {summary['skipped']} of {len(records)} questions skipped "
                f"(first: {summary['first_error']})"
            )
        print(format_summary(summary))
        print(f"summary: {os.path.join(a.out, 'summary.json')}", file=sys.stderr)
        if summary["skipped"] or summary["uncertain"] or summary["missing"]:
            print(
                f"stormvl: warning: {summary['skipped']} questions skipped, {summary['missing']} missing, "
                f"{summary['uncertain']} answers uncertain (see predictions.jsonl)",
                file=sys.stderr,
            )
    if world > 1:
        dist.destroy_process_group()


def cmd_bench(a):
    import torch

    from .bench.report import write_outputs
    from .bench.run import run_bench
    from .bench.settings import SETTINGS

    _quiet_transformers()
    settings = a.settings.split(",") if a.settings else list(SETTINGS)
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise InputError(f"unknown setting(s) {bad}; choose from {list(SETTINGS)}")
    if "baseline" not in settings:
        settings.insert(0, "baseline")
    if any(f < 1 or f > 4096 for f in a.frames):
        raise InputError("--frames values must be in [1, 4096]")
    _check_counts(a, temporal_layers=(1, 64))
    if a.repeats < 1 or a.warmup < 0:
        raise InputError("--repeats must be >= 1 and --warmup >= 0")
    _writable_dir(a.out)  # before minutes of measuring, not after
    from .device import resolve_device

    if resolve_device(a.device).type == "mps":
        raise InputError(f"--device {a.device}: stormvl bench runs on cpu or cuda")
    if a.video:
        from .video import probe

        probe(a.video)
    rows = run_bench(
        a.frames,
        settings,
        size=a.size,
        temporal_layers=a.temporal_layers,
        repeats=a.repeats,
        warmup=a.warmup,
        device=a.device,
        dtype=getattr(torch, a.dtype),
        video=a.video,
        progress=True,
    )
    meta = {
        "size": a.size,
        "temporal_layers": a.temporal_layers or 1,
        "device": a.device,
        "dtype": a.dtype,
        "repeats": a.repeats,
        "warmup": a.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "video": a.video,
    }
    table, plotted = write_outputs(rows, a.out, meta)
    print(table)
    print(
        f"wrote {a.out}/bench.json, bench.md" + (", bench.png" if plotted else " (install matplotlib for the plot)"),
        file=sys.stderr,
    )


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other user error (its usage text is in --help)."""

    def error(self, message):
        print(f"stormvl: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser():
    p = _Parser(prog="stormvl", description="STORM long-video question answering")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("answer", help="answer a question about a video")
    s.add_argument("video")
    s.add_argument("question")
    s.add_argument("--options", nargs="+", help="multiple-choice options (letters are added)")
    s.add_argument("--model", help="STORM model folder (default: the embedded model)")
    s.add_argument("--frames", type=int, help="frames to sample (default: the model's)")
    s.add_argument("--temporal-sample", type=int, help="test-time temporal sampling stride")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_answer)

    s = sub.add_parser("synth", help="write a synthetic temporal video-QA split")
    s.add_argument("--out", required=True)
    s.add_argument("--num", type=int, default=500)
    s.add_argument("--frames", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tasks", help="comma-separated subset of task types")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("train", help="train STORM from a YAML/JSON config")
    s.add_argument("config")
    s.add_argument("--output-dir")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="evaluate on a multiple-choice benchmark")
    s.add_argument("--benchmark", required=True, help="synthetic, mlvu, longvideobench, videomme, mvbench")
    s.add_argument("--annotations", required=True)
    s.add_argument("--videos", help="video folder (default: the annotation file's folder)")
    s.add_argument("--model")
    s.add_argument("--frames", type=int)
    s.add_argument("--temporal-sample", type=int)
    s.add_argument("--limit", type=int, help="first N questions only")
    s.add_argument("--out", required=True)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("bench", help="measure what token reduction buys (latency, FLOPs, memory)")
    s.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    s.add_argument("--settings", help="comma-separated subset (baseline is always included)")
    s.add_argument("--size", default="cpu", choices=["cpu", "tiny"])
    s.add_argument("--temporal-layers", type=int, help="Mamba layers in the encoder (default 1; StormConfig's is 2)")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--video", help="decode this video for the frames (and time decoding)")
    s.add_argument("--out", default="bench")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a malformed command line (2, one line already printed)
        return e.code if isinstance(e.code, int) else 2
    # Warnings (skipped frames, missing videos) are one line on stderr, like errors; the settings
    # last for this call only, so a caller's own warnings are left as they were.
    formatwarning = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.formatwarning = lambda message, *_, **__: f"stormvl: warning: {message}\n"
        try:
            args.fn(args)
        except StormError as e:
            return _error(first_line(e))
        except OSError as e:  # unreadable or unwritable files and folders the user named
            where = f"{e.filename}: " if e.filename else ""
            return _error(f"{where}{e.strerror or e}")
        except KeyboardInterrupt:
            print("stormvl: interrupted", file=sys.stderr)
            return 130
        finally:
            warnings.formatwarning = formatwarning
    return 0


def _error(message: str) -> int:
    print(f"stormvl: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
