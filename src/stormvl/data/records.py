"""The one multiple-choice record type every benchmark reader and the synthetic generator emit."""

from __future__ import annotations

import json
import os
import string
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


def write_jsonl(path, rows) -> None:
    """Write atomically: the file appears complete or not at all."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r.to_json() if hasattr(r, "to_json") else r) + "\n")
    os.replace(tmp, path)


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
