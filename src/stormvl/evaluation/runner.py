"""Multiple-choice evaluation: prompts in the benchmarks' usual style, robust letter parsing,
predictions appended as JSONL while the run goes (a rerun skips what is done), data-parallel
shards merged into one summary with per-task and overall accuracy.

Videos for the next samples decode in a background thread while the model answers the current
one (PyAV releases the GIL while decoding).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..data.records import MCRecord, write_atomic
from ..errors import InputError, StormError, VideoError

PRED_SHARD = "predictions.rank{rank}.jsonl"


def _is_row(row) -> bool:
    """A row as `evaluate` writes it: an id and a status, and for an answered question what `merge` counts."""
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        return False
    if row.get("status") == "skipped":
        return isinstance(row.get("error"), str)
    return (
        row.get("status") == "ok"
        and isinstance(row.get("task_type"), str)
        and isinstance(row.get("correct"), bool)
        and isinstance(row.get("seconds"), (int, float))
    )


def _shard_rows(path: Path):
    """A prediction shard's rows. A line cut off by an interruption is passed over (that sample runs
    again); anything else that is not a row of ours is refused: guessing would score wrong."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}), so not a prediction shard of an eval run; "
            "use a new --out folder (nothing was changed)"
        ) from None
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not _is_row(row):
            raise InputError(
                f"{path}:{n}: not a prediction row of an eval run; use a new --out folder (nothing was changed)"
            )
        yield row


def _done_ids(out: Path) -> set[str]:
    """Questions answered by an earlier run. Skipped ones run again (their video may be there now);
    `merge` keeps the last row per id."""
    return {r["id"] for p in out.glob("predictions.rank*.jsonl") for r in _shard_rows(p) if r["status"] == "ok"}


def check_resume(out_dir, settings: dict) -> None:
    """An output folder holds the results of one setting: resuming with another model, frame count
    or stride would mix their rows into one summary. The first run records its settings; later runs
    must match them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            before = None
        if before != settings:
            if not isinstance(before, dict):
                raise InputError(f"{path}: unreadable, so the results here are of an unknown setting; use a new --out")
            changed = sorted(k for k in {*settings, *before} if before.get(k) != settings.get(k))
            raise InputError(
                f"{out}: holds results of another setting ({', '.join(changed)} differ); use a new --out folder"
            )
        return
    # No run.json: a folder that already holds results by these names was not made by a run, and
    # writing them would replace the user's own files.
    theirs = [name for name in ("predictions.jsonl", "summary.json") if (out / name).exists()]
    if theirs or any(out.glob("predictions.rank*.jsonl")):
        raise InputError(
            f"{out}: already holds {', '.join(theirs) or 'prediction shards'} but no run.json of an eval "
            "run; use a new --out folder (nothing was changed)"
        )
    write_atomic(path, json.dumps(settings, indent=2) + "\n")


def resolve_video(rec: MCRecord, video_root) -> str:
    p = Path(rec.video)
    return str(p if p.is_absolute() or video_root is None else Path(video_root) / p)


def evaluate(
    pipeline,
    records: list[MCRecord],
    out_dir,
    *,
    video_root=None,
    num_frames=None,
    temporal_sample=None,
    rank=0,
    world=1,
    progress=True,
    prefetch=2,
    batch_size=4,
) -> None:
    """Answer this rank's share of `records` (every `world`-th one), appending to this rank's
    shard; `merge` combines the shards once every rank is done."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob("predictions.rank*.jsonl"):  # before counting what is done
        _drop_partial_line(p)
    done = _done_ids(out)
    mine = [r for i, r in enumerate(records) if i % world == rank and r.id not in done]
    frames = pipeline.config.num_frames if num_frames is None else num_frames
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(
            total=len(records) // world + (rank < len(records) % world),
            initial=0,
            desc="eval",
            unit="q",
            dynamic_ncols=True,
        )
        bar.update(sum(1 for i, r in enumerate(records) if i % world == rank and r.id in done))

    def decode(rec):
        try:
            return pipeline.load_clip(resolve_video(rec, video_root), frames), None
        except VideoError as e:
            return None, str(e)

    shard = open(out / PRED_SHARD.format(rank=rank), "a")

    def write(row, err=None):
        shard.write(json.dumps(row) + "\n")
        shard.flush()
        if bar is not None:
            bar.update(1)
            if err is not None:
                bar.write(f"skipped {row['id']}: {err}")

    def answer(batch):
        """Decoded records, answered together (one LLM pass for their generated replies)."""
        t = time.perf_counter()
        items = [(clip, rec.question, rec.options) for rec, clip in batch]
        kw = dict(temporal_sample=temporal_sample, max_new_tokens=8, errors="return")
        try:
            answers = pipeline.answer_batch(items, batch_size=len(items), **kw)
        except StormError:  # one question cannot be asked: find it, answer the others
            answers = []
            for it in items:
                try:
                    answers += pipeline.answer_batch([it], **kw)
                except StormError as e:
                    answers.append(e)
        seconds = (time.perf_counter() - t) / len(batch)
        for (rec, _), ans in zip(batch, answers):
            row = {"id": rec.id, "task_type": rec.task_type, "answer": rec.answer}
            if isinstance(ans, StormError):  # this question cannot be asked (too long, too many options)
                row.update(status="skipped", error=f"{rec.id}: {ans}")
                write(row, row["error"])
                continue
            row.update(
                status="ok",
                response=ans.text,
                pred=ans.letter,
                correct=ans.letter == rec.answer,
                uncertain=ans.uncertain,
                seconds=round(seconds, 4),
                visual_tokens=ans.visual_tokens,
            )
            write(row)

    with ThreadPoolExecutor(max_workers=max(1, prefetch)) as pool:
        futures = [pool.submit(decode, r) for r in mine[: prefetch + 1]]
        batch = []
        for k, rec in enumerate(mine):
            if k + prefetch + 1 < len(mine):
                futures.append(pool.submit(decode, mine[k + prefetch + 1]))
            clip, err = futures[k].result()
            futures[k] = None
            if clip is None:
                write({"id": rec.id, "task_type": rec.task_type, "answer": rec.answer, "status": "skipped",
                       "error": err}, err)  # fmt: skip
            else:
                batch.append((rec, clip))
            if len(batch) == batch_size or (k == len(mine) - 1 and batch):
                answer(batch)
                batch = []
    shard.close()
    if bar is not None:
        bar.close()


def _drop_partial_line(path: Path) -> None:
    """An interrupted run can leave its last line half-written; appending after it would glue the
    next row onto it. Cut the file back to its last complete line (that sample runs again)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def merge(out_dir, records: list[MCRecord], settings: dict) -> dict:
    """Merge every rank's shard into predictions.jsonl (in record order) and summary.json."""
    out = Path(out_dir)
    rows = {}
    for p in sorted(out.glob("predictions.rank*.jsonl")):
        for r in _shard_rows(p):
            rows[r["id"]] = r
    ordered = [rows[r.id] for r in records if r.id in rows]
    per_task = defaultdict(lambda: [0, 0])
    skipped = 0
    secs = []
    for r in ordered:
        if r["status"] != "ok":
            skipped += 1
            continue
        per_task[r["task_type"]][0] += int(r["correct"])
        per_task[r["task_type"]][1] += 1
        secs.append(r["seconds"])
    n_ok = sum(v[1] for v in per_task.values())
    summary = {
        "overall": round(100 * sum(v[0] for v in per_task.values()) / n_ok, 2) if n_ok else None,
        # The mean over task types (MLVU's M-Avg convention) next to the per-sample mean.
        "task_mean": round(sum(100 * c / n for c, n in per_task.values()) / len(per_task), 2) if per_task else None,
        "per_task": {
            k: {"accuracy": round(100 * c / n, 2), "correct": c, "total": n} for k, (c, n) in sorted(per_task.items())
        },
        "answered": n_ok,
        # Answers the model flagged (unknown words, options it could not tell apart).
        "uncertain": sum(1 for r in ordered if r.get("uncertain")),
        "skipped": skipped,
        "first_error": next((r["error"] for r in ordered if r["status"] != "ok"), None),
        "missing": len(records) - len(ordered),
        "seconds_per_answer": round(sum(secs) / len(secs), 4) if secs else None,
        "settings": settings,
    }
    write_atomic(out / "predictions.jsonl", (json.dumps(r) + "\n" for r in ordered))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    lines = ["| task | accuracy | n |", "|---|---|---|"]
    for k, v in summary["per_task"].items():
        lines.append(f"| {k} | {v['accuracy']:.1f} | {v['total']} |")
    lines.append(f"| **overall** | **{summary['overall']}** | {summary['answered']} |")
    return "\n".join(lines)
