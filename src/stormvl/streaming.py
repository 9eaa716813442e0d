"""Live video: frames arrive a few at a time, and a question may come at any moment.

A uni-directional temporal encoder is causal, so its Mamba state after frame t summarises
everything up to t; carried from one chunk of frames to the next, it gives exactly the tokens a
single pass over the whole video would. The session keeps only that state, the frames of the
temporal-pooling group still filling up, and the reduced tokens so far: memory grows with the
reduced tokens, not with the raw frames.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .errors import InputError
from .models.token_reduction import reduce_tokens
from .pipeline import EncodedVideo, Request, StormPipeline
from .processing import question_body


class StreamSession:
    def __init__(self, pipe: StormPipeline, temporal_sample: int | None = None):
        cfg = pipe.config
        enc = pipe.model.temporal_encoder
        if enc is not None and enc.bidirectional:
            raise InputError(
                "live video needs a uni-directional temporal encoder (temporal_bidirectional: false); this model "
                "scans both ways, so a frame's tokens depend on frames that have not arrived yet"
            )
        self.pipe = pipe
        self.temporal_sample = cfg.temporal_sample if temporal_sample is None else temporal_sample
        if self.temporal_sample < 1:
            raise InputError(f"temporal_sample must be >= 1, got {self.temporal_sample}")
        self.state = None  # the encoder's per-layer MambaState after the last frame
        self.pending: list[torch.Tensor] = []  # encoded frames of the pooling group filling up, (N, D) each
        self.kept: list[torch.Tensor] = []  # reduced pooled frames kept by the sampling stride, (N', D) each
        self.groups = 0  # complete pooling groups so far
        self.timestamps: list[float] = []
        self.history: list[tuple[str, str]] = []

    @property
    def frames_seen(self) -> int:
        return len(self.timestamps)

    @torch.inference_mode()
    def add(self, frames, timestamps=None) -> None:
        """Frames (T, H, W, 3) uint8 (or one (H, W, 3) frame) in the order they arrived."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if len(frames) == 0:
            return
        if timestamps is None:  # frame numbers stand in for times
            timestamps = range(self.frames_seen, self.frames_seen + len(frames))
        self.timestamps += [float(t) for t in timestamps]
        model, cfg = self.pipe.model, self.pipe.config
        pixel = self.pipe.processor.preprocess(frames).to(self.pipe.device)  # (T, 3, S, S)
        x = model.get_frame_features(pixel)[None]  # (1, T, N, D)
        if model.temporal_encoder is not None:
            x, self.state = model.temporal_encoder(x, state=self.state, return_state=True)
        k = cfg.temporal_pool
        for frame in x[0]:
            self.pending.append(frame)
            if len(self.pending) == k:
                if self.groups % self.temporal_sample == 0:
                    self.kept.append(self._reduce(self.pending))
                self.groups += 1
                self.pending = []

    def _reduce(self, group: list[torch.Tensor]) -> torch.Tensor:
        """A pooling group, averaged as temporal pooling averages it, then pooled spatially: (N', D)."""
        cfg = self.pipe.config
        x = torch.stack(group)[None]  # (1, g, N, D)
        return reduce_tokens(
            x, grid=cfg.grid_size, temporal_pool_k=len(group), spatial_pool_k=cfg.spatial_pool,
            spatial_mode=cfg.spatial_pool_mode,
        )[0, 0]  # fmt: skip

    def tokens(self) -> torch.Tensor:
        """The visual tokens of everything seen so far, (V, D): equal to encoding all the frames at
        once (the group still filling up counts as a partial last group, as one pass would)."""
        parts = list(self.kept)
        if self.pending and self.groups % self.temporal_sample == 0:
            parts.append(self._reduce(self.pending))
        if not parts:
            raise InputError("no frames have arrived yet")
        return self.pipe.model.video_token_sequence(torch.cat(parts)[None, None])[0]  # (V, D), newline included

    def ask(self, question: str, options: list[str] | None = None, *, max_new_tokens: int = 32, on_text=None):
        """Answer about everything seen up to now; the chat's earlier turns go along."""
        times = [round(t, 3) for t in self.timestamps]
        # A live stream has lasted as long as its newest frame is old.
        video = EncodedVideo(self.tokens(), self.frames_seen, times, self.temporal_sample, duration=times[-1])
        stream = None if on_text is None else lambda _row, piece: on_text(piece)
        req = Request(video, question, options, tuple(self.history), max_new_tokens)
        ans = self.pipe.respond([req], on_text=stream)[0]
        self.history.append((question_body(question, options), ans.text))
        return ans


def play(session: StreamSession, source, *, realtime: bool = True, chunk: int = 4, after_chunk=None):
    """Feed `source`, an iterable of (seconds, frame), into the session `chunk` frames at a time;
    with `realtime`, a frame is not handed over before its time has come (a simulated live
    camera). `after_chunk(frames fed, stream seconds)` runs after each chunk. Returns (frames
    fed, wall seconds, seconds the encoder lagged behind real time)."""
    t0 = time.perf_counter()
    batch, times, lag = [], [], 0.0
    fed = 0
    for t, frame in source:
        if realtime:
            wait = t - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
            else:
                lag = max(lag, -wait)
        batch.append(frame)
        times.append(t)
        if len(batch) == chunk:
            session.add(np.stack(batch), times)
            fed += len(batch)
            if after_chunk is not None:
                after_chunk(fed, t)
            batch, times = [], []
    if batch:
        session.add(np.stack(batch), times)
        fed += len(batch)
    return fed, time.perf_counter() - t0, lag
