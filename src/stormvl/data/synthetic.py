"""Procedural videos with exact ground truth and questions that need time to answer.

Each sample is a few coloured shapes on a dark background, rendered frame by frame, written as a
real H.264 mp4, with a 4-option question of one of five types:
  direction  which way one shape moves (left/right/up/down)
  order      which of two shapes appears first
  count      how many times a shape flashes (1-4)
  state      a shape's colour at the start or at the end (it changes colour once)
  recall     which shape was shown at the very beginning (then hidden behind later distractors)
  when       at what second a shape appears (not in the default mix: its clips last 1 to 4 times
             the others, and the options are the point where it appears at each of those lengths,
             so the frames alone cannot tell them apart; it measures what `prompt_timestamps`
             gives the model)
Everything is drawn from `random.Random(seed)`, so a split is reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .records import MCRecord, write_atomic, write_jsonl

COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "magenta": (220, 60, 220),
    "cyan": (50, 220, 230),
    "orange": (250, 140, 20),
}
SHAPES = ["square", "circle", "triangle", "cross"]
DIRECTIONS = ["left", "right", "up", "down"]
COUNTS = ["one", "two", "three", "four"]
TASKS = ["direction", "order", "count", "state", "recall"]
EXTRA_TASKS = ["when"]
WHEN_LENGTHS = (1, 2, 3, 4)  # a "when" clip has this many times the split's frame count
WHEN_EIGHTHS = range(1, 8)  # the shape appears this many eighths into the clip
SPLIT_SETTINGS = "synth.json"  # what a split was generated with, beside its annotations
SIZE = 64
BG = (16, 16, 24)
FPS = 8
CAPTION_PROMPT = "Describe the video."


def _mask(shape: str, r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    if shape == "square":
        return np.ones_like(yy, dtype=bool)
    if shape == "circle":
        return xx**2 + yy**2 <= r * r
    if shape == "triangle":
        return (yy >= -r) & (np.abs(xx) <= (yy + r) / 2)
    if shape == "cross":
        w = max(1, r // 3)
        return (np.abs(xx) <= w) | (np.abs(yy) <= w)
    raise ValueError(shape)


def draw(frame: np.ndarray, shape: str, color: str, cx: float, cy: float, r: int = 16) -> None:
    m = _mask(shape, r)
    x0, y0 = int(round(cx)) - r, int(round(cy)) - r
    h, w = frame.shape[:2]
    ys, xs = slice(max(0, y0), min(h, y0 + 2 * r + 1)), slice(max(0, x0), min(w, x0 + 2 * r + 1))
    mm = m[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    frame[ys, xs][mm] = COLORS[color]


def blank_frames(n):
    f = np.empty((n, SIZE, SIZE, 3), np.uint8)
    f[:] = BG
    return f


def _options(rng, correct, pool):
    opts = [correct] + rng.sample([p for p in pool if p != correct], 3)
    rng.shuffle(opts)
    return opts, "ABCD"[opts.index(correct)]


def make_sample(rng: random.Random, task: str, n: int):
    """Returns (frames (n, 64, 64, 3) uint8, question, options, answer letter, ground truth dict
    with a one-line caption of what happens). A "when" clip has k * n frames, k in WHEN_LENGTHS."""
    if task == "when":
        return _when_sample(rng, n)
    f = blank_frames(n)
    colors = list(COLORS)
    if task == "direction":
        shape, color = rng.choice(SHAPES), rng.choice(colors)
        d = rng.choice(DIRECTIONS)
        a, b = rng.uniform(10, 18), rng.uniform(46, 54)
        fixed = rng.uniform(14, 50)
        for t in range(n):
            p = a + (b - a) * t / max(1, n - 1)
            pos = {"right": (p, fixed), "left": (SIZE - p, fixed), "down": (fixed, p), "up": (fixed, SIZE - p)}[d]
            draw(f[t], shape, color, *pos)
        q = f"Which direction does the {color} {shape} move?"
        opts, ans = _options(rng, d, DIRECTIONS)
        truth = {"direction": d, "caption": f"the {color} {shape} moves {d}"}
    elif task == "order":
        (s1, c1), (s2, c2) = rng.sample([(s, c) for s in SHAPES for c in colors], 2)
        while s1 == s2 or c1 == c2:
            (s1, c1), (s2, c2) = rng.sample([(s, c) for s in SHAPES for c in colors], 2)
        half = n // 2
        t1 = rng.randrange(0, max(1, half - 2))
        t2 = rng.randrange(half, max(half + 1, n - 2))
        p1, p2 = (rng.uniform(12, 52), rng.uniform(12, 52)), (rng.uniform(12, 52), rng.uniform(12, 52))
        for t in range(t1, min(n, t1 + max(2, n // 8))):
            draw(f[t], s1, c1, *p1)
        for t in range(t2, min(n, t2 + max(2, n // 8))):
            draw(f[t], s2, c2, *p2)
        q = "Which shape appears first?"
        first, second = f"{c1} {s1}", f"{c2} {s2}"
        distract = set()
        while len(distract) < 2:
            c = f"{rng.choice(colors)} {rng.choice(SHAPES)}"
            if c not in (first, second):
                distract.add(c)
        opts = [first, second, *sorted(distract)]
        rng.shuffle(opts)
        ans = "ABCD"[opts.index(first)]
        truth = {
            "first": first,
            "second": second,
            "t1": t1,
            "t2": t2,
            "caption": f"the {first} appears then the {second}",
        }
    elif task == "count":
        shape, color = rng.choice(SHAPES), rng.choice(colors)
        k = rng.randint(1, 4)
        # Four evenly spaced slots; k of them flash, each lit for half its slot so flashes are
        # always separated by dark frames.
        spacing = n // 4
        starts = sorted(rng.sample([j * spacing for j in range(4)], k))
        pos = (rng.uniform(14, 50), rng.uniform(14, 50))
        for s in starts:
            for t in range(s, s + max(1, spacing // 2)):
                draw(f[t], shape, color, *pos)
        q = f"How many times does the {color} {shape} flash?"
        opts, ans = _options(rng, COUNTS[k - 1], COUNTS)
        truth = {"count": k, "starts": starts, "caption": f"the {color} {shape} flashes {COUNTS[k - 1]} times"}
    elif task == "state":
        shape = rng.choice(SHAPES)
        c_start, c_end = rng.sample(colors, 2)
        change = rng.randrange(n // 3, 2 * n // 3)
        pos = (rng.uniform(14, 50), rng.uniform(14, 50))
        for t in range(n):
            draw(f[t], shape, c_start if t < change else c_end, *pos)
        when = rng.choice(["start", "end"])
        q = f"What color is the {shape} at the {when} of the video?"
        correct = c_start if when == "start" else c_end
        distract = [c for c in colors if c not in (c_start, c_end)]
        opts = [correct, c_end if when == "start" else c_start, *rng.sample(distract, 2)]
        rng.shuffle(opts)
        ans = "ABCD"[opts.index(correct)]
        truth = {"start": c_start, "end": c_end, "change": change, "caption": f"the {shape} is {c_start} then {c_end}"}
    elif task == "recall":
        shapes = rng.sample(SHAPES, 4)
        color = rng.choice(colors)
        first = shapes[0]
        shown = max(2, n // 8)
        pos = (rng.uniform(14, 50), rng.uniform(14, 50))
        for t in range(shown):
            draw(f[t], first, color, *pos)
        # Later distractors: the other shapes in turn, each for a stretch, until the end.
        seg = max(1, (n - shown - 1) // 3)
        for j, s in enumerate(shapes[1:]):
            p = (rng.uniform(14, 50), rng.uniform(14, 50))
            for t in range(shown + 1 + j * seg, min(n, shown + 1 + (j + 1) * seg + (n if j == 2 else 0))):
                draw(f[t], s, color, *p)
        q = "Which shape was shown at the beginning of the video?"
        opts, ans = _options(rng, first, SHAPES)
        truth = {"first": first, "caption": f"the {first} is shown first"}
    else:
        raise InputError(f"unknown synthetic task {task!r}; choose from {TASKS}")
    return f, q, opts, ans, truth


def _seconds(t: float) -> str:
    return f"{t:.2f} seconds"


def _when_sample(rng: random.Random, n: int):
    k, eighth = rng.choice(WHEN_LENGTHS), rng.choice(WHEN_EIGHTHS)
    f = blank_frames(n * k)
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    onset = eighth * n * k // 8
    pos = (rng.uniform(14, 50), rng.uniform(14, 50))
    for t in range(onset, n * k):
        draw(f[t], shape, color, *pos)
    seconds = onset / FPS
    # The options are the same point of the clip at each clip length: the frames show that point,
    # only the video's length (or the frames' times) tells which option it is.
    opts = [_seconds(eighth * n * j // 8 / FPS) for j in WHEN_LENGTHS]
    rng.shuffle(opts)
    q = f"At what second does the {color} {shape} appear?"
    caption = f"the {color} {shape} appears at {_seconds(seconds)}"
    truth = {"seconds": seconds, "duration": n * k / FPS, "caption": caption}
    return f, q, opts, "ABCD"[opts.index(_seconds(seconds))], truth


def option_seconds(option: str) -> float:
    """The time a "when" option names."""
    return float(option.split()[0])


def vocabulary() -> list[str]:
    """Every word a synthetic question or option can use (for word-level tokenizers)."""
    from ..processing import MC_INSTRUCTION

    words = set(COLORS) | set(SHAPES) | set(DIRECTIONS) | set(COUNTS) | set("ABCDE")
    texts = [
        "Which direction does the move ?",
        "Which shape appears first ?",
        "How many times does the flash ?",
        "What color is the at the start end of the video ?",
        "Which shape was shown at the beginning of the video ?",
        "At what second does the appear ? 0.25 seconds",
        MC_INSTRUCTION,
        CAPTION_PROMPT,
        "user : assistant : . , ( ) answer is appears then flashes times moves shown first",
    ]
    return sorted(words), texts


def _die_with_parent(parent: int) -> None:
    """Pool initializer: on Linux a worker is killed when the process that started it dies, even by
    SIGKILL (which runs no cleanup), instead of encoding on as an orphan. A no-op elsewhere."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    # Tied to the process that forked this one: `parent` itself, or (forkserver) a server that ends with it.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        os.kill(parent, 0)  # it may have died before the call above
    except ProcessLookupError:
        os._exit(1)


def _check_same_split(out: Path, settings: dict) -> None:
    theirs = [name for name in ("annotations.jsonl", "captions.jsonl", SPLIT_SETTINGS) if (out / name).exists()]
    if not theirs:
        return
    if SPLIT_SETTINGS not in theirs:
        raise InputError(
            f"{out}: already holds {', '.join(theirs)} but no {SPLIT_SETTINGS} recording the settings they were "
            "made with (not synth's, or an older stormvl's); use a new --out folder (nothing was changed)"
        )
    try:
        before = json.loads((out / SPLIT_SETTINGS).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        before = None
    if not isinstance(before, dict) or set(before) != set(settings):
        raise InputError(
            f"{out / SPLIT_SETTINGS}: not the settings of a synth split (someone else's file, or cut short); "
            "use a new --out folder (nothing was changed)"
        )
    changed = sorted(k for k in settings if before[k] != settings[k])
    if changed:
        raise InputError(
            f"{out}: holds a split of other settings ({', '.join(changed)}: see {SPLIT_SETTINGS}); "
            "use a new --out folder (nothing was changed)"
        )


def generate_split(
    out_dir,
    num: int,
    frames: int = 16,
    seed: int = 0,
    tasks=TASKS,
    write_videos: bool = True,
    progress: bool = False,
    workers: int = 1,
    overwrite: bool = True,
) -> list[MCRecord]:
    """Write `num` samples into `out_dir`: videos/*.mp4, annotations.jsonl (multiple-choice
    records) and captions.jsonl (LLaVA-style "describe the video" conversations, the perception
    data of the alignment stage). Tasks cycle so every type gets an equal share. Existing complete
    videos are kept (reruns resume). With `workers` > 1, that many processes encode the videos
    (most of the time); the clips are drawn here, in order, so the split is the same. With
    `overwrite` False (the CLI's), annotations already in `out_dir` are replaced only by a rerun of
    the settings recorded beside them in synth.json (which writes the same records); anything else
    is refused before any work."""
    from concurrent.futures import ProcessPoolExecutor

    from ..video import write_video

    if frames < 8:
        raise InputError(f"synthetic videos need at least 8 frames, got {frames}")
    bad = [t for t in tasks if t not in TASKS + EXTRA_TASKS]
    if bad:
        raise InputError(f"unknown task type(s) {bad}; choose from {TASKS + EXTRA_TASKS}")
    out = Path(out_dir)
    settings = {"num": num, "frames": frames, "seed": seed, "tasks": list(tasks)}
    if not overwrite:
        _check_same_split(out, settings)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tag = hashlib.sha1(f"{frames}|{','.join(tasks)}".encode()).hexdigest()[:8]
    records = []
    it = range(num)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synth", unit="video")
    pool = None
    if workers > 1 and write_videos:
        pool = ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),))
    pending = []  # encodings in flight, bounded so drawn frames do not pile up in memory
    try:
        for i in it:
            task = tasks[i % len(tasks)]
            f, q, opts, ans, truth = make_sample(rng, task, frames)
            vid = f"s{seed}_{i:06d}"
            # The file name holds everything the clip depends on (the seed, its position, and the frame
            # count and task list that shape the random stream), so a rerun with other settings into
            # the same folder never reuses a clip that does not match its question.
            path = out / "videos" / f"{vid}_{tag}.mp4"
            if write_videos and not path.exists():
                if pool is None:
                    write_video(path, f, fps=FPS)
                else:
                    pending.append(pool.submit(write_video, path, f, fps=FPS))
                    if len(pending) >= 8 * workers:
                        pending.pop(0).result()
            records.append(
                MCRecord(
                    id=vid,
                    video=f"videos/{path.name}",
                    question=q,
                    options=opts,
                    answer=ans,
                    task_type=task,
                    duration=len(f) / FPS,
                    extra={"truth": truth, "seed": seed},
                )
            )
        for job in pending:
            job.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_atomic(out / SPLIT_SETTINGS, json.dumps(settings, indent=2) + "\n")  # first: it vouches for the others
    write_jsonl(out / "annotations.jsonl", records)
    write_jsonl(
        out / "captions.jsonl",
        [
            {
                "id": r.id,
                "video": r.video,
                "conversations": [
                    {"from": "human", "value": f"<video>\n{CAPTION_PROMPT}"},
                    {"from": "gpt", "value": r.extra["truth"]["caption"]},
                ],
            }
            for r in records
        ],
    )
    return records
