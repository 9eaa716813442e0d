"""The short path from a video file and a question to an answer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import StormConfig
from .device import resolve_device
from .errors import InputError, ModelFolderError, StormError, first_line
from .generation import PrefixCache, TextStream, eos_ids, greedy_decode
from .model_folder import check_model_folder
from .models.storm import StormForConditionalGeneration
from .processing import (
    OPTION_LETTERS,
    StormProcessor,
    check_options,
    check_stride,
    check_text,
    move_batch,
    parse_letter,
    question_body,
)
from .token_budget import plan_budget
from .video import VideoClip, load_video, probe

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
    temporal_sample: int = 1  # the test-time sampling stride used
    budget: str | None = None  # what a visual-token budget chose (frames, stride), when one was given
    prompt_tokens: int = 0  # the LLM's input, visual tokens included
    completion_tokens: int = 0  # tokens generated (0 when options are ranked by likelihood)

    @property
    def uncertain(self) -> bool:
        return bool(self.warnings)


@dataclass
class EncodedVideo:
    """A clip after the vision tower, temporal encoder and token reduction: what a chat keeps so
    that follow-up questions never encode the video again."""

    features: torch.Tensor  # (visual tokens, D) at the LLM width
    num_frames: int
    timestamps: list[float]
    temporal_sample: int
    notes: list[str] = field(default_factory=list)  # decoding problems, repeated on every answer
    budget: str | None = None
    duration: float = 0.0  # seconds of video the frames were sampled from

    @property
    def times(self) -> tuple[float, list[float]]:
        """What a prompt with timestamps says: (duration, the sampled frames' times)."""
        return self.duration, self.timestamps


@dataclass
class Request:
    """One question about an encoded video; `history` holds the chat's earlier (question, reply)
    turns, oldest first."""

    video: EncodedVideo
    question: str
    options: list[str] | None = None
    history: tuple = ()
    max_new_tokens: int = 32


class StormPipeline:
    def __init__(self, model: StormForConditionalGeneration, processor: StormProcessor):
        self.model = model.eval()
        self.processor = processor
        self.config: StormConfig = model.config
        self.stop_ids = eos_ids(model, processor.tokenizer)

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
        on_text=None,
        max_visual_tokens: int | None = None,
    ) -> Answer:
        """`on_text(piece)` receives the reply as it is generated (pieces join to `Answer.text`).
        `max_visual_tokens` picks the frames and sampling stride (see `token_budget`)."""
        check_options(options)
        num_frames, temporal_sample, budget = self.sampling(video, num_frames, temporal_sample, max_visual_tokens)
        clip = video if isinstance(video, VideoClip) else self.load_clip(video, num_frames, fps=fps, progress=progress)
        encoded = self.encode([clip], temporal_sample)[0]
        encoded.budget = budget
        stream = None if on_text is None else lambda _row, piece: on_text(piece)
        return self.respond([Request(encoded, question, options, max_new_tokens=max_new_tokens)], on_text=stream)[0]

    def answer_batch(
        self,
        items,
        *,
        batch_size: int = 8,
        num_frames: int | None = None,
        fps: float | None = None,
        temporal_sample: int | None = None,
        max_new_tokens: int = 32,
        progress: bool = False,
        errors: str = "raise",
        max_visual_tokens: int | None = None,
    ) -> list[Answer]:
        """Answers to `(video, question)` or `(video, question, options)` items, equal to asking
        them one at a time: each distinct video is decoded and encoded once, and up to
        `batch_size` questions share one pass of the LLM. With `errors="return"`, a question that
        cannot be answered (its video does not decode) gets its `StormError` in the list instead
        of stopping the others."""
        items = [tuple(it) + (None,) * (3 - len(tuple(it))) for it in items]
        for _, _, options in items:
            check_options(options)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        num_frames, temporal_sample, budget = self.sampling(None, num_frames, temporal_sample, max_visual_tokens)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="answer", unit="q", dynamic_ncols=True)
        answers: list[Answer] = []
        encoded: dict = {}  # video key -> EncodedVideo, for the videos of the current batch
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            keys = [_video_key(v) for v, _, _ in chunk]
            new = {k: v for k, (v, _, _) in zip(keys, chunk) if k not in encoded}
            clips, failed = {}, {}
            for k, v in new.items():
                try:
                    clips[k] = v if isinstance(v, VideoClip) else self.load_clip(v, num_frames, fps=fps)
                except StormError as e:
                    if errors == "raise":
                        raise
                    failed[k] = e
            encoded = {k: encoded[k] for k in keys if k in encoded}  # only what this batch reuses
            encoded.update(zip(clips, self.encode(list(clips.values()), temporal_sample)))
            for k in clips:
                encoded[k].budget = budget
            ok = [i for i, k in enumerate(keys) if k not in failed]
            requests = [Request(encoded[keys[i]], chunk[i][1], chunk[i][2], max_new_tokens=max_new_tokens) for i in ok]
            results = dict(zip(ok, self.respond(requests)))
            answers += [results[i] if i in results else failed[keys[i]] for i in range(len(chunk))]
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return answers

    def chat(
        self, video, *, num_frames: int | None = None, fps: float | None = None, temporal_sample=None,
        max_visual_tokens: int | None = None,
    ):  # fmt: skip
        """A conversation about one video: the video is decoded and encoded here, once; every
        `ask` reuses its tokens and sends the earlier turns along."""
        num_frames, temporal_sample, budget = self.sampling(video, num_frames, temporal_sample, max_visual_tokens)
        clip = video if isinstance(video, VideoClip) else self.load_clip(video, num_frames, fps=fps)
        encoded = self.encode([clip], temporal_sample)[0]
        encoded.budget = budget
        return ChatSession(self, encoded)

    def stream(self, temporal_sample: int | None = None):
        """A live session (`streaming.StreamSession`): `add` frames as they arrive, `ask` at any
        moment. Needs a uni-directional temporal encoder."""
        from .streaming import StreamSession

        return StreamSession(self, temporal_sample)

    def sampling(self, video, num_frames, temporal_sample, max_visual_tokens):
        """(frames, stride, what the budget chose): unchanged without a budget; with one, the plan
        of `token_budget.plan_budget`, capped by the video's own frame count when it is a file."""
        if max_visual_tokens is None:
            return num_frames, temporal_sample, None
        video_frames = None
        if isinstance(video, (str, os.PathLike)):
            video_frames = probe(video).num_frames
        elif isinstance(video, VideoClip):
            num_frames = len(video.frames)
        plan = plan_budget(
            self.config, max_visual_tokens, num_frames=num_frames, temporal_sample=temporal_sample,
            video_frames=video_frames,
        )  # fmt: skip
        return plan.num_frames, plan.temporal_sample, plan.describe()

    def load_clip(self, video, num_frames: int | None = None, *, fps: float | None = None, progress: bool = False):
        """Decode `num_frames` frames (the model's count when None), scaled in the decoder to the
        vision tower's input size: memory per frame is set by the model, not by the video."""
        n = self.config.num_frames if num_frames is None else num_frames
        size = self.config.vision_config.image_size
        return load_video(
            video, n, fps=fps, max_frames=n, progress=progress, size=size, resample=self.config.decode_resample
        )

    @torch.inference_mode()
    def encode(self, clips: list[VideoClip], temporal_sample: int | None = None) -> list[EncodedVideo]:
        """Decoded clips -> their reduced visual tokens; clips of equal length share one call."""
        s = self.config.temporal_sample if temporal_sample is None else temporal_sample
        check_stride(s)
        if not clips:
            return []
        # Frames are preprocessed and encoded a chunk at a time: float pixels never exist for a whole
        # long video, only its projected tokens do.
        step = self.config.vision_batch_size

        def frame_tokens(frames):  # (T, H, W, 3) uint8 -> (T, N, D)
            return torch.cat([
                self.model.get_frame_features(self.processor.preprocess(frames[i : i + step]).to(self.device))
                for i in range(0, len(frames), step)
            ])  # fmt: skip

        if len(clips) > 1 and len({c.frames.shape[1:] for c in clips}) == 1:
            # A batch of short clips goes through the vision tower together: one call, not one per clip.
            frames = np.concatenate([c.frames for c in clips])
            tokens = list(frame_tokens(frames).split([len(c.frames) for c in clips]))
        else:
            tokens = [frame_tokens(c.frames) for c in clips]
        feats = self.model.get_reduced_features(tokens, s)
        return [
            EncodedVideo(
                f, len(c.frames), [round(float(t), 3) for t in c.timestamps], s, list(c.notes), duration=c.duration
            )  # fmt: skip
            for f, c in zip(feats, clips)
        ]

    @torch.inference_mode()
    def respond(self, requests: list[Request], on_text=None, cancelled=None, prefix=None, on_done=None) -> list[Answer]:
        """Answers to questions about already encoded videos. Multiple-choice questions of a
        likelihood model rank their options (one LLM pass each); the others are decoded together.
        `on_text(i, piece)` streams request i's reply; `cancelled(i)` true stops request i. `prefix`
        (a `generation.PrefixCache`, one generated request only) reuses a chat's KV cache.
        `on_done(i, answer)` runs as soon as request i's answer is complete: a short reply need not
        wait for the longest one in its batch."""
        answers: list[Answer | None] = [None] * len(requests)
        for r in requests:
            check_options(r.options)
            check_text(r.question, *(t for turn in r.history for t in turn), *(r.options or []))
        ranked = [i for i, r in enumerate(requests) if r.options and self.config.choice_mode == "likelihood"]
        gen = [i for i in range(len(requests)) if i not in ranked]
        # Every request's prompt is checked before any answer is given out: a batch fails whole or
        # not at all (the server answers a failed batch's questions one by one).
        prompts = [
            self.processor.prompt_text(r.question, r.options, r.history, r.video.times)
            for r in (requests[i] for i in gen)
        ]
        ids = [self.prompt_token_ids(p, requests[i].video) for i, p in zip(gen, prompts)]
        for x, i in zip(ids, gen):  # a reply needs room too
            self.processor.check_length(len(x) + requests[i].max_new_tokens)
        for i in ranked:
            answers[i] = self._rank_options(requests[i])
        for i in ranked:
            if on_text is not None:
                on_text(i, answers[i].text)
            if on_done is not None:
                on_done(i, answers[i])
        if gen:
            embeds = [
                self.model.get_inputs_embeds(x[None], video_features=[requests[i].video.features])[0]
                for i, x in zip(gen, ids)
            ]
            streams = [TextStream(self.processor.decode) for _ in gen]

            def on_token(row, tokens):
                piece = streams[row].push(tokens)
                if piece and on_text is not None:
                    on_text(gen[row], piece)

            def on_finish(row, tokens):
                i, r = gen[row], requests[gen[row]]
                rest = streams[row].finish(tokens)
                if rest and on_text is not None:
                    on_text(i, rest)
                text = self.processor.decode(tokens)
                notes = []
                letter = parse_letter(text, len(r.options)) if r.options else None
                if r.options and letter is None:
                    notes.append(f"the reply {text!r} names none of the options")
                answers[i] = self._answer(r, text, letter, notes, len(ids[row]), len(tokens))
                if on_done is not None:
                    on_done(i, answers[i])

            greedy_decode(
                self.model.language_model,
                embeds,
                [requests[i].max_new_tokens for i in gen],
                self.stop_ids,
                on_token=on_token,
                cancelled=None if cancelled is None else (lambda row: cancelled(gen[row])),
                prefix=prefix if len(gen) == 1 else None,
                prompt_ids=ids[0].tolist() if len(gen) == 1 else None,
                on_finish=on_finish,
            )
        return answers

    def prompt_token_ids(self, prompt: str, video: EncodedVideo) -> torch.Tensor:
        return torch.tensor(self.processor.prompt_ids(prompt, video.features.shape[0]), device=self.device)  # (L,)

    def _rank_options(self, r: Request) -> Answer:
        scores = self.option_scores(None, r.question, r.options, features=r.video, history=r.history)
        notes = []
        if not torch.isfinite(scores).all():
            notes.append("the model's option scores are not finite numbers: its weights are broken")
            scores = torch.nan_to_num(scores, nan=-float("inf"))
        best = int(scores.argmax())
        tied = [i for i in range(len(r.options)) if abs(float(scores[i] - scores[best])) <= TIE_TOLERANCE]
        if len(tied) > 1:
            names = ", ".join(OPTION_LETTERS[i] for i in tied)
            notes.append(
                f"options {names} are indistinguishable to the model (equal scores); {OPTION_LETTERS[best]} "
                "was picked only because it comes first"
            )
        letter = OPTION_LETTERS[best]
        prompt = self.processor.prompt_text(r.question, history=r.history, times=r.video.times)
        prompt_len = len(self.prompt_token_ids(prompt, r.video))
        return self._answer(r, f"{letter}. {r.options[best]}", letter, notes, prompt_len, 0)

    def _answer(self, r: Request, text, letter, notes, prompt_tokens, completion_tokens) -> Answer:
        return Answer(
            text=text,
            letter=letter,
            num_frames=r.video.num_frames,
            visual_tokens=int(r.video.features.shape[0]),
            timestamps=r.video.timestamps,
            warnings=self.processor.unknown_word_warnings(r.question, r.options) + r.video.notes + notes,
            temporal_sample=r.video.temporal_sample,
            budget=r.video.budget,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    @torch.inference_mode()
    def option_scores(
        self,
        clip: VideoClip | None,
        question: str,
        options: list[str],
        temporal_sample=None,
        return_greedy: bool = False,
        *,
        features: EncodedVideo | None = None,
        history=(),
    ):
        """Log-probability of each option (its tokens and the end of the answer) as the reply to
        the open question: the video is encoded once (or given, already encoded, as `features`)
        and shared by every option's sequence. With `return_greedy`, also whether greedy decoding
        would have produced each option."""
        video = features if features is not None else self.encode([clip], temporal_sample)[0]
        prompt = self.processor.prompt_text(question, history=history, times=video.times)
        # The processor sizes each prompt from a frame count; the encoded video knows its own.
        stand_in = torch.zeros(video.num_frames, 1)
        batch = self.processor(
            [stand_in] * len(options), [prompt] * len(options), answers=list(options),
            temporal_sample=video.temporal_sample,
        )  # fmt: skip
        batch = move_batch({k: v for k, v in batch.items() if k != "pixel_values_videos"}, self.device)
        emb = self.model.get_inputs_embeds(batch["input_ids"], video_features=[video.features] * len(options))
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


class ChatSession:
    """Questions about one encoded video, each answered with the earlier turns as context."""

    def __init__(self, pipe: StormPipeline, video: EncodedVideo, reuse_cache: bool = True):
        self.pipe = pipe
        self.video = video
        self.history: list[tuple[str, str]] = []
        # The LLM's KV cache of the conversation so far: a follow-up computes only its new tokens.
        self.prefix = PrefixCache() if reuse_cache else None

    def ask(self, question: str, options: list[str] | None = None, *, max_new_tokens: int = 32, on_text=None):
        stream = None if on_text is None else lambda _row, piece: on_text(piece)
        req = Request(self.video, question, options, tuple(self.history), max_new_tokens)
        ans = self.pipe.respond([req], on_text=stream, prefix=self.prefix)[0]
        self.history.append((question_body(question, options), ans.text))
        return ans


def _video_key(video):
    """Items naming the same file share one decoding; other objects are compared by identity."""
    if isinstance(video, (str, os.PathLike)):
        return ("path", os.path.realpath(video))
    return ("object", id(video))


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
