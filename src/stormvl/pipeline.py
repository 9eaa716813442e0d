"""The short path from a video file and a question to an answer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import StormConfig
from .device import resolve_device
from .errors import ModelFolderError, first_line
from .model_folder import check_model_folder
from .models.storm import StormForConditionalGeneration
from .processing import OPTION_LETTERS, StormProcessor, check_options, move_batch, parse_letter
from .video import VideoClip, load_video

DEFAULT_MODEL = Path(__file__).parent / "default_model"


# Option log-probabilities closer than this are a tie: the model cannot tell the options apart.
TIE_TOLERANCE = 1e-4


@dataclass
class Answer:
    text: str
    letter: str | None  # parsed option letter for multiple-choice questions
    num_frames: int
    visual_tokens: int
    timestamps: list[float]
    # Why the answer should not be trusted (unknown words, options the model cannot tell apart);
    # empty when there is no such reason.
    warnings: list[str] = field(default_factory=list)

    @property
    def uncertain(self) -> bool:
        return bool(self.warnings)


class StormPipeline:
    def __init__(self, model: StormForConditionalGeneration, processor: StormProcessor):
        self.model = model.eval()
        self.processor = processor
        self.config: StormConfig = model.config

    @property
    def device(self):
        return next(self.model.parameters()).device

    def answer(
        self,
        video,
        question: str,
        options: list[str] | None = None,
        *,
        num_frames: int | None = None,
        fps: float | None = None,
        temporal_sample: int | None = None,
        max_new_tokens: int = 32,
        progress: bool = False,
    ) -> Answer:
        check_options(options)
        notes = self.processor.unknown_word_warnings(question, options)
        clip = video if isinstance(video, VideoClip) else self.load_clip(video, num_frames, fps=fps, progress=progress)
        notes += clip.notes
        if options and self.config.choice_mode == "likelihood":
            scores = self.option_scores(clip, question, options, temporal_sample)
            if not torch.isfinite(scores).all():
                notes.append("the model's option scores are not finite numbers: its weights are broken")
                scores = torch.nan_to_num(scores, nan=-float("inf"))
            best = int(scores.argmax())
            tied = [i for i in range(len(options)) if abs(float(scores[i] - scores[best])) <= TIE_TOLERANCE]
            if len(tied) > 1:
                names = ", ".join(OPTION_LETTERS[i] for i in tied)
                notes.append(
                    f"options {names} are indistinguishable to the model (equal scores); {OPTION_LETTERS[best]} "
                    "was picked only because it comes first"
                )
            letter = OPTION_LETTERS[best]
            text = f"{letter}. {options[best]}"
        else:
            batch = self.processor(
                [clip.frames], [self.processor.prompt_text(question, options)], temporal_sample=temporal_sample
            )
            out = self.model.generate(**move_batch(batch, self.device), max_new_tokens=max_new_tokens, do_sample=False)
            text = self.processor.decode(out[0])
            letter = parse_letter(text, len(options)) if options else None
            if options and letter is None:
                notes.append(f"the reply {text!r} names none of the options")
        return Answer(
            text=text,
            letter=letter,
            num_frames=len(clip.frames),
            visual_tokens=self.config.tokens_per_video(len(clip.frames), temporal_sample),
            timestamps=[round(float(t), 3) for t in clip.timestamps],
            warnings=notes,
        )

    def load_clip(self, video, num_frames: int | None = None, *, fps: float | None = None, progress: bool = False):
        """Decode `num_frames` frames (the model's count when None), scaled in the decoder to the
        vision tower's input size: memory per frame is set by the model, not by the video."""
        n = self.config.num_frames if num_frames is None else num_frames
        size = self.config.vision_config.image_size
        return load_video(video, n, fps=fps, max_frames=n, progress=progress, size=size)

    @torch.no_grad()
    def option_scores(
        self, clip: VideoClip, question: str, options: list[str], temporal_sample=None, return_greedy: bool = False
    ):
        """Log-probability of each option (its tokens and the end of the answer) as the reply to
        the open question: the video is encoded once and shared by every option's sequence. With
        `return_greedy`, also whether greedy decoding would have produced each option."""
        prompt = self.processor.prompt_text(question)
        pixel = self.processor.preprocess(clip.frames)  # once; every option's row shares the encoding
        batch = self.processor(
            [pixel] * len(options), [prompt] * len(options), answers=list(options), temporal_sample=temporal_sample
        )
        feats = self.model.get_video_features(pixel[None].to(self.device), batch["temporal_sample"])[0]
        batch = move_batch({k: v for k, v in batch.items() if k != "pixel_values_videos"}, self.device)
        emb = self.model.get_inputs_embeds(batch["input_ids"], video_features=[feats] * len(options))
        logits = self.model(inputs_embeds=emb, attention_mask=batch["attention_mask"]).logits[:, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half-precision models
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        lp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        scores = (lp * keep).sum(1).cpu()
        if not return_greedy:
            return scores
        greedy = ((logits.argmax(-1) == labels) | ~keep).all(1).cpu()
        return scores, greedy


def load(path: str | os.PathLike | None = None, device: str | None = None, dtype=None) -> StormPipeline:
    """Load a saved STORM model folder (the embedded default model when `path` is None)."""
    path = check_model_folder(path if path is not None else DEFAULT_MODEL)
    target = resolve_device(device)
    model = StormForConditionalGeneration.from_folder(path, **({"dtype": dtype} if dtype else {}))
    try:
        processor = StormProcessor.from_pretrained(path, model.config)
    except (OSError, ValueError, json.JSONDecodeError) as e:  # a damaged tokenizer file
        raise ModelFolderError(f"{path}: cannot load the tokenizer ({first_line(e)})") from None
    return StormPipeline(model.to(target), processor)
