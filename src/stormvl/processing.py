"""Everything from frames and text to model inputs: image preprocessing, prompts, the option letters
of multiple-choice questions, and the expansion of the video placeholder.

The processor owns "how many video tokens": one `<video>` placeholder becomes exactly
`config.tokens_per_video(T, s)` tokens, and the batch carries the test-time sampling stride `s`
it used, so `model(**batch)` and `model.generate(**batch)` reduce the video to that same count.
"""

from __future__ import annotations

import numbers
import os
import re
import string

import numpy as np
import torch
import torch.nn.functional as F

from .config import StormConfig
from .errors import ConfigError, InputError

# Used when the tokenizer has no chat template of its own (tiny word-level tokenizers).
PLAIN_TEMPLATE = "user : {prompt} assistant :"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS = string.ascii_uppercase


def check_options(options: list[str] | None) -> None:
    if options is None:
        return
    if not 1 <= len(options) <= len(OPTION_LETTERS):
        raise InputError(f"a multiple-choice question takes 1 to {len(OPTION_LETTERS)} options, got {len(options)}")
    if any(not str(o).strip() for o in options):
        raise InputError("options must not be empty")


def check_text(*texts: str) -> None:
    """Text a tokenizer can take: JSON (and undecodable argv) may carry lone UTF-16 surrogates."""
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the text holds an unpaired UTF-16 surrogate (not valid Unicode)") from None


def format_mc_question(question: str, options: list[str]) -> str:
    """The usual multiple-choice layout of the long-video benchmarks."""
    check_options(options)
    lines = [question.strip()]
    for letter, opt in zip(OPTION_LETTERS, options):
        opt = str(opt).strip()
        lines.append(opt if opt[:2] == f"{letter}." else f"{letter}. {opt}")
    lines.append(MC_INSTRUCTION)
    return "\n".join(lines)


def question_body(question: str, options: list[str] | None = None) -> str:
    """A user turn's text: the question, laid out with its options when it has them."""
    return format_mc_question(question, options) if options else question.strip()


def time_text(duration: float, timestamps) -> str:
    """The frames' times as the prompt gives them (`prompt_timestamps`)."""
    times = ", ".join(f"{t:.1f}s" for t in timestamps)
    return f"The video lasts {duration:.1f} seconds, and {len(timestamps)} frames are sampled at {times}."


def check_stride(s) -> None:
    if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
        raise InputError(f"temporal_sample must be an integer >= 1, got {s!r}")


def parse_letter(text: str, num_options: int = 4) -> str | None:
    """The option letter in a free-form reply: "B", "(B)", "B.", "The answer is B", "b) cat"."""
    letters = OPTION_LETTERS[: max(1, min(num_options, len(OPTION_LETTERS)))]
    t = text.strip()
    m = (
        re.match(rf"^\(?([{letters}])(?:[\s\.\):,]|$)", t, flags=re.I)
        or re.search(rf"answer(?: is|:)?\s*\(?([{letters}])\b", t, flags=re.I)
        or re.search(rf"\b([{letters}])\b", t)
    )
    return m.group(1).upper() if m else None


def _resize(x: torch.Tensor, side: int, resample: str) -> torch.Tensor:
    """(T, 3, H, W) float in [0, 1] -> (T, 3, side, side), antialiased as image processors resize."""
    x = F.interpolate(x, size=(side, side), mode=resample, antialias=True, align_corners=False)
    if resample == "bicubic":  # overshoots; image processors resize uint8 pixels, which clip to [0, 255]
        x = x.clamp_(0.0, 1.0)
    return x


def resize_frames(frames: np.ndarray, side: int, resample: str) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) -> uint8 (T, side, side, 3), resized as `preprocess_frames` would
    (the decoder's exact path, `video.FrameSize`)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
    y = _resize(x, side, resample).mul_(255.0).round_().to(torch.uint8)  # (T, 3, side, side)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def preprocess_frames(frames, image_size: int, mean, std, resample: str = "bilinear") -> torch.Tensor:
    """uint8 RGB (T, H, W, 3) -> float (T, 3, S, S), resized with antialiasing and normalised."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise InputError(f"expected frames (T, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)
    if x.shape[-2:] != (image_size, image_size):
        x = _resize(x, image_size, resample)
    mean = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def move_batch(batch: dict, device) -> dict:
    """A processor batch on `device`: tensors and lists of tensors move, settings stay."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device)
        elif isinstance(v, list) and v and torch.is_tensor(v[0]):
            v = [x.to(device) for x in v]
        out[k] = v
    return out


class StormProcessor:
    def __init__(self, tokenizer, config: StormConfig):
        self.tokenizer = tokenizer
        self.config = config
        if config.video_token_id is None:
            config.video_token_id = tokenizer.convert_tokens_to_ids(config.video_token)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if config.chat_content == "parts" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("chat_content 'parts' needs a tokenizer with a chat template")

    @classmethod
    def from_pretrained(cls, path, config: StormConfig | None = None):
        from transformers import AutoTokenizer

        config = config or StormConfig.from_pretrained(path)
        return cls(AutoTokenizer.from_pretrained(path), config)

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)

    # -- text ----------------------------------------------------------------------------------
    def prompt_text(self, question: str, options: list[str] | None = None, history=(), times=None) -> str:
        """Chat-formatted prompt with one video placeholder, ready for the answer. `history`:
        earlier (question, reply) turns of the same chat, oldest first; the video belongs to the
        first turn, so a chat's prompt only grows at its end. `times`: (duration, timestamps) of the
        sampled frames, which a model with `prompt_timestamps` reads beside its video."""
        turns = [*history, (question_body(question, options), None)]
        # "after" suits small LMs trained from scratch: with the video last, each frame's distance
        # to the answer (all RoPE lets attention see) no longer depends on the question's length.
        video = self.config.video_token
        said = None  # the frames' times, for a model with prompt_timestamps
        if self.config.prompt_timestamps:
            if times is None:
                raise InputError("this model reads its frames' timestamps in the prompt, but none were given")
            said = time_text(*times)
            video = f"{said}\n{video}" if self.config.video_position == "after" else f"{video}\n{said}"
        parts = self.config.chat_content == "parts"  # the template places the video itself (LLaVA-OneVision's)
        messages = []
        for i, (body, reply) in enumerate(turns):
            if parts:
                body = [{"type": "text", "text": body}]
                if i == 0:
                    media = [{"type": "video"}] + ([{"type": "text", "text": said}] if said else [])
                    # The times sit between the video and the question, on the video's side.
                    body = media + body if self.config.video_position == "before" else body + media[::-1]
            elif i == 0:
                body = f"{video}\n{body}" if self.config.video_position == "before" else f"{body}\n{video}"
            messages.append({"role": "user", "content": body})
            if reply is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}] if parts else reply})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts = [PLAIN_TEMPLATE.format(prompt=m["content"]) if m["role"] == "user" else m["content"] for m in messages]
        return " ".join(parts)

    def prompt_ids(self, text: str, num_video_tokens: int) -> list[int]:
        parts = text.split(self.config.video_token)
        if len(parts) != 2:
            raise InputError(f"the prompt must contain exactly one {self.config.video_token!r} placeholder")
        before = self.tokenizer(parts[0], add_special_tokens=False)["input_ids"]
        after = self.tokenizer(parts[1], add_special_tokens=False)["input_ids"]
        tok = self.tokenizer
        bos = [tok.bos_token_id] if getattr(tok, "add_bos_token", False) and tok.bos_token_id is not None else []
        return bos + before + [self.config.video_token_id] * num_video_tokens + after

    def check_length(self, tokens: int) -> None:
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit and tokens > limit:
            raise InputError(
                f"the prompt is {tokens} tokens but the model reads at most {limit}: use fewer frames, temporal "
                "sampling or a shorter question"
            )

    def unknown_word_warnings(self, question: str, options: list[str] | None = None) -> list[str]:
        """Words the tokenizer can only map to its unknown token: the model cannot read them, so an
        answer that depends on them is a guess. Empty for tokenizers without an unknown token
        (byte-level BPE reads everything)."""
        unk = self.tokenizer.unk_token_id
        if unk is None or not getattr(self.tokenizer, "is_fast", False):  # offsets need a fast tokenizer
            return []
        parts = []
        texts = [("question", question), *((f"option {OPTION_LETTERS[i]}", o) for i, o in enumerate(options or []))]
        for what, text in texts:
            text = str(text)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            words = [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk]
            if words:
                parts.append(f"{', '.join(dict.fromkeys(words))} ({what})")
        return [f"the model does not know these words, so it cannot read them: {'; '.join(parts)}"] if parts else []

    # -- frames --------------------------------------------------------------------------------
    def preprocess(self, frames) -> torch.Tensor:
        c = self.config
        return preprocess_frames(frames, c.vision_config.image_size, c.image_mean, c.image_std, c.resample)

    # -- batches -------------------------------------------------------------------------------
    def __call__(
        self,
        videos,
        prompts: list[str],
        answers: list[str] | None = None,
        temporal_sample: int | None = None,
        padding_side: str = "left",
    ) -> dict:
        """`videos`: list of uint8 frame arrays (T, H, W, 3) or preprocessed tensors. `prompts`:
        texts with one placeholder (see `prompt_text`). With `answers`, labels cover the answer
        tokens (and the end-of-sequence token) only, and padding goes on the right for training.

        The batch holds `temporal_sample`, the stride the prompts were sized for; the model reads
        it from there, so prompt and video features cannot disagree."""
        if len(videos) != len(prompts):
            raise InputError(f"{len(videos)} videos but {len(prompts)} prompts")
        s = self.config.temporal_sample if temporal_sample is None else temporal_sample
        check_stride(s)
        pixel = [v if torch.is_tensor(v) and v.dtype.is_floating_point else self.preprocess(v) for v in videos]
        seqs, labels = [], []
        eos = self.tokenizer.eos_token_id
        for i, (v, text) in enumerate(zip(pixel, prompts)):
            ids = self.prompt_ids(text, self.config.tokens_per_video(v.shape[0], s))
            lab = [-100] * len(ids)
            if answers is not None:
                ans = self.tokenizer(" " + answers[i].strip(), add_special_tokens=False)["input_ids"] + [eos]
                ids, lab = ids + ans, lab + ans
            seqs.append(ids)
            labels.append(lab)
        width = max(len(s) for s in seqs)
        self.check_length(width)
        side = "right" if answers is not None else padding_side
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, L)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, L)
        lab_t = torch.full((len(seqs), width), -100, dtype=torch.long)  # (B, L)
        for i, (ids, lab) in enumerate(zip(seqs, labels)):
            sl = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
            input_ids[i, sl] = torch.tensor(ids)
            attn[i, sl] = 1
            lab_t[i, sl] = torch.tensor(lab)
        same_len = len({p.shape[0] for p in pixel}) == 1
        out = {
            "input_ids": input_ids,
            "attention_mask": attn,
            "pixel_values_videos": torch.stack(pixel) if same_len else pixel,  # (B, T, 3, S, S) or list
            "temporal_sample": int(s),
        }
        if answers is not None:
            out["labels"] = lab_t
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
