"""The one multiple-choice record type every benchmark reader and the synthetic generator emit."""

from __future__ import annotations

import contextlib
import json
import os
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


@dataclass
class MCRecord:
    id: str
    video: str  # path, absolute or relative to the annotation file's video root
    question: str
    options: list[str]  # option texts without letters
    answer: str  # correct letter, "A".."E"
    task_type: str = ""
    duration: float | str | None = None
    subtitles: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def answer_index(self) -> int:
        return string.ascii_uppercase.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> MCRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def write_atomic(path, text: str | Iterable[str]) -> None:
    """Write `text` (UTF-8; a string, or pieces written one after another, so a large file is never
    whole in memory) so the file appears complete or not at all: through a temporary file in the
    same folder (a rename within one file system is atomic), which a failed write removes."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                f.writelines(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_jsonl(path, rows) -> None:
    write_atomic(path, (json.dumps(r.to_json() if hasattr(r, "to_json") else r) + "\n" for r in rows))


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
