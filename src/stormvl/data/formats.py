"""Video-instruction data in the formats people already have, as stormvl training records.

Every format becomes one record type, a LLaVA-style conversation about one video (or one image,
trained as a one-frame video):

    {"video": "clips/a.mp4", "conversations": [{"from": "human", "value": "<video>\\nWhat ..."},
                                               {"from": "gpt", "value": "..."}, ...]}

Formats (what each record looks like in its own files):
- llava-video, llava-onevision, vila: `{"id", "video" | "image", "conversations": [{"from":
  "human" | "gpt", "value"}]}`; the media placeholder is `<image>` (LLaVA's) or `<video>`.
- sharegpt4video: `{"video_id", "captions": [{"idx", "content"}]}`; the whole-video caption
  (`idx` "-1") becomes a description turn; the video is `<video_id>.mp4`.
- llamafactory: `{"messages": [{"role": "user" | "assistant", "content"}], "videos": [...]}` (or
  `"images"`); placeholders `<video>` / `<image>`.

Each record is checked: one video (or image) and exactly one placeholder for it, turns that
alternate from the user's, non-empty texts, and the video present under the video root. A bad
record is reported with its file and line (or its number, from 1, in a JSON list) and skipped,
never a crash halfway through a large file and never a silent drop. The trainer reads its
annotation files through `iter_rows` too, so both name a bad record alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataFormatError

FORMATS = ("llava-video", "llava-onevision", "vila", "sharegpt4video", "llamafactory")
PLACEHOLDERS = ("<video>", "<image>")
DESCRIBE = "Describe this video in detail."


@dataclass
class Converted:
    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: what is wrong"


def read_text(path) -> str:
    """A UTF-8 text file's text, without the byte-order mark some editors write; text in another
    encoding is an error naming its first bad line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 text ({e.reason}); save the file as UTF-8") from None


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words: 'a string', 'a number', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    kinds = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def iter_rows(path: Path):
    """(where, row) for a JSON list or a JSONL file; `where` names the record, counted from 1, or
    the line. A line that is not JSON comes as a ValueError in place of its row."""
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataFormatError(f"{path}: empty file, no records")
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        for i, row in enumerate(rows, 1):
            yield f"{path}: record {i}", row
        return
    if stripped.startswith("{") and "\n" in stripped.rstrip():
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:  # JSONL: one record a line
            whole = None
        if isinstance(whole, dict):
            raise DataFormatError(f"{path}: one JSON object, not a list of records (a JSON list, or JSONL: one a line)")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{n}", ValueError(f"not valid JSON ({e.msg})")


class BadRecord(Exception):
    pass


def nonempty_text(v, what) -> str:
    if not isinstance(v, str) or not v.strip():
        raise BadRecord(f"{what} must be a non-empty text")
    return v


def _turns_from_llava(row) -> tuple[str, list[tuple[str, str]], bool]:
    media_keys = [k for k in ("video", "image") if k in row]
    if len(media_keys) != 1:
        raise BadRecord("needs exactly one of 'video' or 'image'")
    media = row[media_keys[0]]
    if isinstance(media, list):
        if len(media) != 1:
            raise BadRecord(f"lists {len(media)} {media_keys[0]}s; stormvl trains on one per record")
        media = media[0]
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv or not all(isinstance(c, dict) for c in conv):
        raise BadRecord("'conversations' must be a non-empty list of turns")
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
    turns = []
    for j, c in enumerate(conv):
        who = c.get("from")
        if not isinstance(who, str) or who not in roles:  # a list or mapping cannot be looked up
            raise BadRecord(f"turn {j} is from {who!r}, not human or gpt")
        turns.append((roles[c["from"]], nonempty_text(c.get("value"), f"turn {j}'s value")))
    return nonempty_text(media, f"'{media_keys[0]}'"), turns, media_keys[0] == "image"


def _turns_from_llamafactory(row):
    media_keys = [k for k in ("videos", "images") if row.get(k)]
    if len(media_keys) != 1:
        raise BadRecord("needs one of 'videos' or 'images'")
    media = row[media_keys[0]]
    if not isinstance(media, list) or len(media) != 1:
        raise BadRecord(f"'{media_keys[0]}' must list one file (stormvl trains on one per record)")
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise BadRecord("'messages' must be a non-empty list")
    turns = []
    for j, m in enumerate(msgs):
        if m.get("role") == "system":
            continue
        if m.get("role") not in ("user", "assistant"):
            raise BadRecord(f"message {j} has role {m.get('role')!r}")
        turns.append((m["role"], nonempty_text(m.get("content"), f"message {j}'s content")))
    return nonempty_text(media[0], f"'{media_keys[0]}'"), turns, media_keys[0] == "images"


def _turns_from_sharegpt4video(row):
    vid = nonempty_text(row.get("video_id"), "'video_id'")
    caps = row.get("captions")
    if not isinstance(caps, list):
        raise BadRecord("'captions' must be a list")
    whole = next((c for c in caps if isinstance(c, dict) and str(c.get("idx")) == "-1"), None)
    if whole is None:
        raise BadRecord("has no whole-video caption (idx -1)")
    video = vid if vid.endswith(".mp4") else vid + ".mp4"
    return (
        video,
        [("user", f"<video>\n{DESCRIBE}"), ("assistant", nonempty_text(whole.get("content"), "the caption"))],
        False,
    )


def check_turns(turns) -> None:
    """Turns alternate user, assistant, ... and end with the assistant; one placeholder, first turn."""
    if len(turns) < 2 or len(turns) % 2:
        raise BadRecord(f"has {len(turns)} turns; needs user/assistant pairs")
    for j, (role, _) in enumerate(turns):
        if role != ("user" if j % 2 == 0 else "assistant"):
            raise BadRecord(f"turn {j} is the {role}'s; turns must alternate, the user first")
    count = sum(text.count(p) for _, text in turns for p in PLACEHOLDERS)
    if count != 1:
        raise BadRecord(f"has {count} <video>/<image> placeholders for its one video")
    if not any(p in turns[0][1] for p in PLACEHOLDERS):
        raise BadRecord("the placeholder must be in the first user turn")


READERS = {
    "llava-video": _turns_from_llava,
    "llava-onevision": _turns_from_llava,
    "vila": _turns_from_llava,
    "sharegpt4video": _turns_from_sharegpt4video,
    "llamafactory": _turns_from_llamafactory,
}


def convert(fmt: str, path, video_root=None) -> Converted:
    """Read `path` in format `fmt` into checked training records (media paths as given, relative
    to `video_root`, default the file's folder, where they must exist)."""
    if fmt not in READERS:
        raise DataFormatError(f"unknown data format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    root = Path(video_root) if video_root else path.parent
    out = Converted()
    for where, row in iter_rows(path):
        try:
            if isinstance(row, Exception):
                raise BadRecord(str(row))
            if not isinstance(row, dict):
                raise BadRecord(f"is {json_kind(row)}, not an object")
            media, turns, image = READERS[fmt](row)
            check_turns(turns)
            full = media if os.path.isabs(media) else root / media
            if not os.path.isfile(full):
                raise BadRecord(f"its {'image' if image else 'video'} {media} does not exist under {root}")
        except BadRecord as e:
            out.problems.append(f"{where}: {e}")
            continue
        # Absolute: the records are read from wherever they are written.
        record = {"image" if image else "video": os.path.abspath(full)}
        if "id" in row or "video_id" in row:
            record["id"] = str(row.get("id", row.get("video_id")))
        record["conversations"] = [
            {"from": "human" if role == "user" else "gpt", "value": text} for role, text in turns
        ]  # fmt: skip
        out.records.append(record)
    return out
