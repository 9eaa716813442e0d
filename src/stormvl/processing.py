"""Prompt building and video-placeholder expansion.

One `<video>` placeholder in the prompt becomes exactly `config.tokens_per_video(T, s)` video
tokens, the number the model's reducer produces, so prompt and features always line up.
"""
from __future__ import annotations

import os
import string

import torch

from .config import StormConfig
from .models.vision import preprocess_frames

# Used when the tokenizer has no chat template of its own (tiny word-level tokenizers).
PLAIN_TEMPLATE = "user : {prompt} assistant :"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def format_mc_question(question: str, options: list[str]) -> str:
    """The usual multiple-choice layout of the long-video benchmarks."""
    lines = [question.strip()]
    for letter, opt in zip(string.ascii_uppercase, options):
        opt = str(opt).strip()
        lines.append(opt if opt[:2] == f"{letter}." else f"{letter}. {opt}")
    lines.append(MC_INSTRUCTION)
    return "\n".join(lines)


class StormProcessor:
    def __init__(self, tokenizer, config: StormConfig):
        self.tokenizer = tokenizer
        self.config = config
        if config.video_token_id is None:
            config.video_token_id = tokenizer.convert_tokens_to_ids(config.video_token)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, path, config: StormConfig | None = None):
        from transformers import AutoTokenizer

        config = config or StormConfig.from_pretrained(path)
        return cls(AutoTokenizer.from_pretrained(path), config)

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)

    # -- text ----------------------------------------------------------------------------------
    def prompt_text(self, question: str, options: list[str] | None = None) -> str:
        """Chat-formatted prompt with the video placeholder first, ready for the answer."""
        body = format_mc_question(question, options) if options else question.strip()
        # "after" suits small LMs trained from scratch: with the video last, each frame's distance
        # to the answer (all RoPE lets attention see) no longer depends on the question's length.
        video = self.config.video_token
        content = f"{video}\n{body}" if self.config.video_position == "before" else f"{body}\n{video}"
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        return PLAIN_TEMPLATE.format(prompt=content)

    def _ids(self, text: str, num_video_tokens: int) -> list[int]:
        parts = text.split(self.config.video_token)
        if len(parts) != 2:
            raise ValueError(f"the prompt must contain exactly one {self.config.video_token!r} placeholder")
        before = self.tokenizer(parts[0], add_special_tokens=False)["input_ids"]
        after = self.tokenizer(parts[1], add_special_tokens=False)["input_ids"]
        bos = [self.tokenizer.bos_token_id] if getattr(self.tokenizer, "add_bos_token", False) and self.tokenizer.bos_token_id is not None else []
        return bos + before + [self.config.video_token_id] * num_video_tokens + after

    # -- frames --------------------------------------------------------------------------------
    def preprocess(self, frames) -> torch.Tensor:
        c = self.config
        return preprocess_frames(frames, c.vision_config.image_size, c.image_mean, c.image_std)

    # -- batches -------------------------------------------------------------------------------
    def __call__(self, videos, prompts: list[str], answers: list[str] | None = None,
                 temporal_sample: int | None = None, padding_side: str = "left"):
        """`videos`: list of uint8 frame arrays (T, H, W, 3) or preprocessed tensors. `prompts`:
        texts with one placeholder (see `prompt_text`). With `answers`, labels cover the answer
        tokens (and the end-of-sequence token) only, and padding goes on the right for training."""
        if len(videos) != len(prompts):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        pixel = [v if torch.is_tensor(v) and v.dtype.is_floating_point else self.preprocess(v) for v in videos]
        seqs, labels = [], []
        eos = self.tokenizer.eos_token_id
        for i, (v, text) in enumerate(zip(pixel, prompts)):
            ids = self._ids(text, self.config.tokens_per_video(v.shape[0], temporal_sample))
            lab = [-100] * len(ids)
            if answers is not None:
                ans = self.tokenizer(" " + answers[i].strip(), add_special_tokens=False)["input_ids"] + [eos]
                ids, lab = ids + ans, lab + ans
            seqs.append(ids)
            labels.append(lab)
        width = max(len(s) for s in seqs)
        side = "right" if answers is not None else padding_side
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        lab_t = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
            input_ids[i, sl] = torch.tensor(s)
            attn[i, sl] = 1
            lab_t[i, sl] = torch.tensor(lab)
        same_len = len({p.shape[0] for p in pixel}) == 1
        out = {"input_ids": input_ids, "attention_mask": attn,
               "pixel_values_videos": torch.stack(pixel) if same_len else pixel}
        if answers is not None:
            out["labels"] = lab_t
        return out

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
