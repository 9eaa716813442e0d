"""Readers for the long-video benchmarks' annotation files, each mapped onto `MCRecord`.

| name           | file(s)                             | options                       | answer              |
|----------------|-------------------------------------|-------------------------------|---------------------|
| videomme       | json/jsonl/parquet rows             | `options`, "A. ..." prefixed  | letter              |
| mlvu           | official json (`candidates`) or the | `candidates` list, or inside  | option text, or     |
|                | lmms-eval copy (`video_name`)       | the question text             | letter              |
| longvideobench | lvb_*.json                          | `option0`..`option4` / `candidates` | `correct_choice` index |
| mvbench        | one json per subtask (file or dir)  | `candidates`                  | option text         |
| synthetic      | stormvl JSONL (`MCRecord`)          | `options`                     | letter              |
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from ..data.records import MCRecord
from ..errors import BenchmarkFormatError, MissingFileError

LETTERS = string.ascii_uppercase


def _load_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise MissingFileError(f"{path}: no such annotation file")
    try:
        if path.suffix == ".parquet":
            import pandas as pd  # optional: only for the parquet copies on the Hub

            return pd.read_parquet(path).to_dict("records")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except ImportError:
        raise BenchmarkFormatError(
            f"{path}: reading parquet needs pandas and pyarrow (pip install pandas pyarrow)"
        ) from None
    except UnicodeDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not valid JSON ({e})") from None
    except IsADirectoryError:
        raise BenchmarkFormatError(f"{path}: is a folder; this benchmark reads one annotation file") from None
    if isinstance(data, dict):  # some releases wrap the list
        for key in ("data", "annotations", "questions"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{path}: expected a list of question records")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise BenchmarkFormatError(f"{path}: record {i + 1} is a {type(row).__name__}, not an object")
    return data


def _need(row, field, path, i, kind: type | None = None):
    if field not in row or row[field] is None:
        raise BenchmarkFormatError(f"{path}: record {i + 1} has no '{field}' field")
    if kind is not None and not isinstance(row[field], kind):
        raise BenchmarkFormatError(f"{path}: record {i + 1}: '{field}' must be a {kind.__name__}")
    return row[field]


def _strip_letter(opt: str) -> str:
    return re.sub(r"^\(?[A-Z][\.\):]\s*", "", str(opt).strip())


def _letter_of(text, options, path, i):
    text = str(text).strip()
    for k, o in enumerate(options):
        if o.strip() == text:
            return LETTERS[k]
    raise BenchmarkFormatError(f"{path}: record {i + 1}: answer {text!r} is not one of its candidates")


def read_videomme(path: Path) -> list[MCRecord]:
    out = []
    for i, r in enumerate(_load_rows(path)):
        vid = _need(r, "videoID", path, i)
        opts = [_strip_letter(o) for o in _need(r, "options", path, i, list)]
        ans = str(_need(r, "answer", path, i)).strip().upper()
        if ans not in LETTERS[: len(opts)]:
            raise BenchmarkFormatError(f"{path}: record {i + 1}: answer {ans!r} is not an option letter")
        out.append(
            MCRecord(
                id=str(r.get("question_id", f"{vid}-{i}")),
                video=f"{vid}.mp4",
                question=_need(r, "question", path, i),
                options=opts,
                answer=ans,
                task_type=r.get("task_type", ""),
                duration=r.get("duration"),
                extra={k: r[k] for k in ("domain", "sub_category") if k in r},
            )
        )
    return out


def _mlvu_file(path: Path, rows) -> list[MCRecord]:
    out = []
    for i, r in enumerate(rows):
        if "candidates" in r:  # official release
            opts = [str(c) for c in _need(r, "candidates", path, i, list)]
            ans = _letter_of(_need(r, "answer", path, i), opts, path, i)
            video = _need(r, "video", path, i, str)
            q = _need(r, "question", path, i)
        else:  # lmms-eval copy: options inside the question text, answer letter
            video = _need(r, "video_name", path, i)
            text = _need(r, "question", path, i, str)
            parts = re.split(
                r"\n\s*\(?([A-H])[\)\.]\s*", "\n" + text.strip() if text.lstrip().startswith(("(A)", "A.")) else text
            )
            q, opts = parts[0].strip(), [p.strip() for p in parts[2::2]]
            if not opts:
                raise BenchmarkFormatError(f"{path}: record {i + 1}: no '(A) ...' options found in 'question'")
            ans = str(_need(r, "answer", path, i)).strip().strip("()").upper()[:1]
        task = r.get("question_type") or r.get("task_type") or path.stem
        out.append(
            MCRecord(
                id=str(r.get("question_id", f"{path.stem}-{i}")),
                video=video,
                question=q,
                options=opts,
                answer=ans,
                task_type=task,
                duration=r.get("duration"),
            )
        )
    return out


def _file_or_folder(path: Path, read_file, name: str) -> list[MCRecord]:
    """One annotation file, or a folder of them (one *.json per task/subtask)."""
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise MissingFileError(f"{path}: no {name} *.json files")
        return [r for f in files for r in read_file(f, _load_rows(f))]
    return read_file(path, _load_rows(path))


def read_mlvu(path: Path) -> list[MCRecord]:
    return _file_or_folder(path, _mlvu_file, "MLVU")


def read_longvideobench(path: Path) -> list[MCRecord]:
    out = []
    for i, r in enumerate(_load_rows(path)):
        if "candidates" in r:
            opts = [str(c) for c in _need(r, "candidates", path, i, list)]
        else:
            opts = [str(r[f"option{k}"]) for k in range(5) if f"option{k}" in r and str(r[f"option{k}"]) != "N/A"]
        if not opts:
            raise BenchmarkFormatError(f"{path}: record {i + 1} has no 'option0'..'option4' or 'candidates'")
        idx = _need(r, "correct_choice", path, i)
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(opts):
            raise BenchmarkFormatError(f"{path}: record {i + 1}: 'correct_choice' {idx!r} is out of range")
        out.append(
            MCRecord(
                id=str(r.get("id", i)),
                video=_need(r, "video_path", path, i),
                question=_need(r, "question", path, i),
                options=opts,
                answer=LETTERS[idx],
                task_type=r.get("question_category", ""),
                duration=r.get("duration_group", r.get("duration")),
                subtitles=r.get("subtitle_path"),
            )
        )
    return out


def _mvbench_file(path: Path, rows) -> list[MCRecord]:
    out = []
    for i, r in enumerate(rows):
        opts = [str(c) for c in _need(r, "candidates", path, i, list)]
        out.append(
            MCRecord(
                id=f"{path.stem}-{i}",
                video=str(Path(path.stem) / _need(r, "video", path, i, str)),
                question=_need(r, "question", path, i),
                options=opts,
                answer=_letter_of(_need(r, "answer", path, i), opts, path, i),
                task_type=path.stem,
            )
        )
    return out


def read_mvbench(path: Path) -> list[MCRecord]:
    """Videos resolve as <videos>/<subtask>/<video>, subtask = the json file's stem."""
    return _file_or_folder(path, _mvbench_file, "MVBench")


def read_synthetic(path: Path) -> list[MCRecord]:
    out = []
    for i, r in enumerate(_load_rows(path)):
        for f in ("id", "video", "question", "options", "answer"):
            _need(r, f, path, i)
        out.append(MCRecord.from_json(r))
    return out


def _check_types(r: MCRecord, path, i) -> None:
    """Wrongly typed fields fail here, naming the record, not later inside the model."""
    if not isinstance(r.task_type, str):
        raise BenchmarkFormatError(f"{path}: record {i + 1}: task type {r.task_type!r} must be a string")
    for name in ("id", "video", "question"):
        if not isinstance(getattr(r, name), str) or not getattr(r, name).strip():
            raise BenchmarkFormatError(f"{path}: record {i + 1}: '{name}' must be a non-empty string")
    if not isinstance(r.options, list) or not r.options or not all(isinstance(o, str) for o in r.options):
        raise BenchmarkFormatError(f"{path}: record {i + 1}: options must be a non-empty list of texts")
    if not isinstance(r.answer, str) or r.answer not in LETTERS[: len(r.options)]:
        raise BenchmarkFormatError(f"{path}: record {i + 1}: answer {r.answer!r} is not one of its option letters")


READERS = {
    "videomme": read_videomme,
    "mlvu": read_mlvu,
    "longvideobench": read_longvideobench,
    "mvbench": read_mvbench,
    "synthetic": read_synthetic,
}


def read_benchmark(name: str, path) -> list[MCRecord]:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in READERS:
        raise BenchmarkFormatError(f"unknown benchmark {name!r}; known: {sorted(READERS)}")
    records = READERS[key](Path(path))
    if not records:
        raise BenchmarkFormatError(f"{path}: no questions found")
    for i, r in enumerate(records):
        _check_types(r, path, i)
    seen, dupes = set(), []
    for r in records:
        if r.id in seen:
            dupes.append(r.id)
        seen.add(r.id)
    if dupes:
        # Results are keyed by id: a repeated id would score one question twice and another never.
        raise BenchmarkFormatError(f"{path}: duplicate question id(s) {sorted(set(dupes))[:5]}; ids must be unique")
    for r in records:
        if len(r.options) > len(LETTERS):
            n, most = len(r.options), len(LETTERS)
            raise BenchmarkFormatError(f"{path}: question {r.id!r} has {n} options; at most {most}")
    return records
