"""Training samples from annotation files: multiple-choice records (the synthetic and benchmark
type) or LLaVA-style conversations `{"video": path, "conversations": [{"from": "human", ...},
{"from": "gpt", ...}]}`. Each sample becomes (frames, prompt, answer)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataFormatError, MissingFileError, VideoError
from ..processing import OPTION_LETTERS
from ..video import load_image, load_video
from .formats import PLACEHOLDERS, BadRecord, check_turns, iter_rows, json_kind, nonempty_text


@dataclass
class Sample:
    video: str  # resolved path (of an image when `image`)
    question: str
    options: list[str] | None
    answer: str  # what the model should say
    image: bool = False  # a still image: read as a one-frame video
    history: tuple = ()  # earlier (question, reply) turns of a multi-turn conversation


def read_training_samples(files, video_root=None) -> list[Sample]:
    """Every sample of the annotation files. A bad record is reported (file, record and what is
    wrong) and skipped; a file with no usable record is an error (the wrong file or format). A
    conversation with several exchanges gives one sample per reply, with the turns before it as
    history."""
    samples, problems = [], []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise MissingFileError(f"{f}: no such annotation file")
        root = Path(video_root) if video_root else f.parent
        found, bad = len(samples), len(problems)
        for where, row in iter_rows(f):
            try:
                samples += _samples_of(row, root)
            except BadRecord as e:
                problems.append(f"{where}: {e}")
        if len(samples) == found:  # a file of nothing but bad records is the wrong file or format
            first = f"; the first: {problems[bad]}" if len(problems) > bad else ""
            raise DataFormatError(f"{f}: no usable training record ({len(problems) - bad} bad{first})")
    if problems:
        warnings.warn(
            f"skipped {len(problems)} bad training record(s); the first: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            stacklevel=2,
        )
    if not samples:  # no files at all: each file without a usable record was refused above
        raise DataFormatError(f"no training samples in {list(map(str, files))}")
    return samples


def _samples_of(row, root) -> list[Sample]:
    if isinstance(row, ValueError):  # a line that is not JSON
        raise BadRecord(str(row))
    if not isinstance(row, dict):
        raise BadRecord(f"is {json_kind(row)}, not an object")
    # LLaVA-pretrain style image-text records ({"image": ...}) train as one-frame videos.
    image = "image" in row and "video" not in row
    media = nonempty_text(row.get("image" if image else "video"), "'image'" if image else "'video'")
    path = str(media if Path(media).is_absolute() else root / media)
    if "conversations" in row:
        conv = row["conversations"]
        if not isinstance(conv, list) or not all(isinstance(c, dict) for c in conv):
            raise BadRecord("'conversations' must be a list of turns")
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
        turns = [(roles.get(c.get("from"), c.get("from")), c.get("value")) for c in conv]
        for j, (_, text) in enumerate(turns):
            nonempty_text(text, f"turn {j}'s value")
        check_turns(turns)
        texts = [t for _, t in turns]
        for p in PLACEHOLDERS:
            texts = [t.replace(p, "") for t in texts]
        pairs = [(texts[k].strip(), texts[k + 1].strip()) for k in range(0, len(texts), 2)]
        return [Sample(path, q, None, a, image, tuple(pairs[:k])) for k, (q, a) in enumerate(pairs)]
    if "question" in row and "options" in row and "answer" in row:
        opts = row["options"]
        if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
            raise BadRecord("'options' must be a non-empty list of texts")
        ans = row["answer"]
        if not isinstance(ans, str) or ans not in OPTION_LETTERS[: len(opts)]:
            raise BadRecord(f"answer {ans!r} is not one of its option letters")
        return [Sample(path, nonempty_text(row["question"], "'question'"), opts, ans, image)]
    raise BadRecord("neither a conversation nor a multiple-choice record (needs 'conversations', or "
                    "'question'+'options'+'answer')")  # fmt: skip


class VideoQADataset(Dataset):
    """Decodes each video once per frame count and keeps the frames (small training sets; for
    large ones set `cache=False`). Datasets over the same videos (a caption set and a QA set) can
    share one `cache` dict. Undecodable videos are dropped with a warning."""

    def __init__(
        self,
        samples: list[Sample],
        num_frames: int,
        cache: bool | dict = True,
        size: int | None = None,
        resample: str = "area",
    ):
        self.samples = samples
        self.num_frames = num_frames
        self.size, self.resample = size, resample  # frames scaled to the vision tower's input in the decoder
        self.cache = cache if isinstance(cache, dict) else ({} if cache else None)

    def __len__(self):
        return len(self.samples)

    def frames(self, i) -> tuple[np.ndarray, tuple[float, list[float]]]:
        """Sample i's frames (T, H, W, 3) and their times: (video duration, frame timestamps)."""
        key = (self.samples[i].video, self.num_frames, self.size, self.resample)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        s = self.samples[i]
        if s.image:
            out = load_image(s.video, size=self.size, resample=self.resample), (0.0, [0.0])  # (1, H, W, 3)
        else:
            clip = load_video(s.video, self.num_frames, size=self.size, resample=self.resample)
            out = clip.frames, (clip.duration, [round(float(t), 3) for t in clip.timestamps])
        if self.cache is not None:
            self.cache[key] = out
        return out

    def __getitem__(self, i):
        s = self.samples[i]
        try:
            frames, times = self.frames(i)
        except VideoError as e:
            warnings.warn(f"skipping training sample {i}: {e}", stacklevel=2)
            return None
        return frames, s.question, s.options, s.answer, s.history, times
