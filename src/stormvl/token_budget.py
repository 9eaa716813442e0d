"""A visual-token budget: how many frames to read and which test-time temporal sampling to use so
that the LLM reads at most N visual tokens. Pure arithmetic on the model's config (no torch).

The pooling factors are fixed by training; the frame count and the test-time sampling stride are
free. Sampling happens after the temporal encoder, so for the same token count a larger stride
lets more frames through the encoder (the paper's point); it is capped at `MAX_SAMPLE` because a
model trained without sampling drifts beyond that (README, the ablation's row (d)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InputError
from .frame_plan import MAX_FRAMES

MAX_SAMPLE = 4


@dataclass
class BudgetPlan:
    num_frames: int
    temporal_sample: int
    visual_tokens: int
    max_visual_tokens: int

    def describe(self) -> str:
        return (
            f"budget {self.max_visual_tokens} visual tokens: {self.num_frames} frames, temporal sampling "
            f"{self.temporal_sample} -> {self.visual_tokens} visual tokens"
        )


def tokens_per_pooled_frame(config) -> int:
    gh, gw = config.grid_size
    return math.ceil(gh / config.spatial_pool) * math.ceil(gw / config.spatial_pool)


def plan_budget(
    config,
    max_visual_tokens: int,
    *,
    num_frames: int | None = None,
    temporal_sample: int | None = None,
    video_frames: int | None = None,
) -> BudgetPlan:
    """The plan reading the most frames whose tokens fit `max_visual_tokens`.

    `num_frames` / `temporal_sample`, when the caller fixed them, are kept (a fixed frame count gets
    the smallest stride that fits; a fixed stride gets the most frames that fit). `video_frames`,
    the video's own frame count when known, caps the frames (more would only repeat frames)."""
    if isinstance(max_visual_tokens, bool) or not isinstance(max_visual_tokens, int) or max_visual_tokens < 1:
        raise InputError(f"max_visual_tokens must be an integer >= 1, got {max_visual_tokens!r}")
    one_frame = config.tokens_per_video(1, 1)  # the newline token, when the model has one, included
    if max_visual_tokens < one_frame:
        raise InputError(
            f"a budget of {max_visual_tokens} visual tokens is below one frame's {one_frame} tokens after this "
            f"model's {config.spatial_pool}x{config.spatial_pool} spatial pooling; the smallest budget is {one_frame}"
        )

    def tokens(f, s):
        return config.tokens_per_video(f, s)

    cap = min(MAX_FRAMES, video_frames or MAX_FRAMES)
    if num_frames is not None:
        strides = [temporal_sample] if temporal_sample else range(1, MAX_SAMPLE + 1)
        s = next((s for s in strides if tokens(num_frames, s) <= max_visual_tokens), None)
        if s is None:
            most = _most_frames(tokens, max(strides), max_visual_tokens, cap)
            raise InputError(
                f"{num_frames} frames give {tokens(num_frames, max(strides))} visual tokens even with temporal "
                f"sampling {max(strides)}, over the budget of {max_visual_tokens}: read at most {most} frames, or "
                "leave the frame count to the budget"
            )
        return BudgetPlan(num_frames, s, tokens(num_frames, s), max_visual_tokens)
    s = temporal_sample or config.temporal_sample
    f = _most_frames(tokens, s, max_visual_tokens, cap)
    return BudgetPlan(f, s, tokens(f, s), max_visual_tokens)


def _most_frames(tokens, s, budget, cap) -> int:
    """The largest frame count in [1, cap] whose token count with stride s fits the budget
    (token counts grow with frames, so a binary search)."""
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tokens(mid, s) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def reduction_steps(config, num_frames: int, temporal_sample: int) -> list[tuple[str, int]]:
    """Visual tokens after each stage, in order, for the plan printout."""
    gh, gw = config.grid_size
    t_pooled = math.ceil(num_frames / config.temporal_pool)
    per = tokens_per_pooled_frame(config)
    total, newline = config.tokens_per_video(num_frames, temporal_sample), int(config.video_newline)
    steps = [
        (f"{num_frames} frames x {gh}x{gw} tokens (vision tower + projector)", num_frames * gh * gw),
        ("temporal encoder (tokens unchanged)", num_frames * gh * gw),
        (f"temporal pooling {config.temporal_pool}x -> {t_pooled} frames", t_pooled * gh * gw),
        (f"spatial pooling {config.spatial_pool}x{config.spatial_pool} ({config.spatial_pool_mode})", t_pooled * per),
        (f"test-time sampling {temporal_sample}x -> {math.ceil(t_pooled / temporal_sample)} frames", total - newline),
    ]
    if newline:
        steps.append(("newline token after the frames", total))
    return steps
