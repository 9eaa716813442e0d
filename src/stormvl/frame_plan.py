"""Which frames to read, decided before anything is decoded: a pure function of what the container
says (frame count, frame rate, duration) and what the caller asks for.

Two sampling modes:
  uniform  `num_frames` indices spread evenly from the first frame to the last, both included; a
           single frame is the middle one. Asking for more frames than the video has repeats
           frames, so the model still sees the frame count it was configured for.
  fps      one frame every 1/fps seconds from the start. When that would exceed `max_frames`, the
           plan falls back to `max_frames` uniform frames over the whole video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import VideoError

MAX_FRAMES = 4096


@dataclass
class FramePlan:
    indices: np.ndarray  # (N,) frame indices in the video, in output order (may repeat)
    timestamps: np.ndarray  # (N,) seconds from the start of the video

    @property
    def targets(self) -> list[int]:
        """The distinct indices in decoding order."""
        return sorted(set(self.indices.tolist()))


def uniform_indices(num_frames_in_video: int, num_samples: int) -> np.ndarray:
    if num_samples == 1:
        return np.array([(num_frames_in_video - 1) // 2])
    return np.round(np.linspace(0, num_frames_in_video - 1, num_samples)).astype(np.int64)


def check_count(where, name, value, low=1, high=MAX_FRAMES) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        raise VideoError(f"{where}: {name} must be an integer in [{low}, {high}], got {value!r}")


def check_request(where, num_frames: int | None, fps: float | None, max_frames: int) -> None:
    """The caller's arguments, checked before the video is opened."""
    check_count(where, "max_frames", max_frames)
    if fps is None:
        check_count(where, "num_frames", num_frames)
    elif isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
        raise VideoError(f"{where}: fps must be a positive number, got {fps!r}")


def plan_frames(
    num_video_frames: int,
    video_fps: float,
    duration: float,
    *,
    num_frames: int | None = 32,
    fps: float | None = None,
    max_frames: int = MAX_FRAMES,
    where: str = "video",
) -> FramePlan:
    """The frames to decode from a video of `num_video_frames` frames (>= 1) at `video_fps`."""
    check_request(where, num_frames, fps, max_frames)
    if num_video_frames < 1:
        raise VideoError(f"{where}: the video stream has no frames")
    if fps is not None:
        want = max(1, math.floor(duration * fps))
        if want <= max_frames:
            times = np.arange(want) / fps
            idx = np.minimum(np.round(times * video_fps).astype(np.int64), num_video_frames - 1)
        else:
            idx = uniform_indices(num_video_frames, max_frames)
    else:
        idx = uniform_indices(num_video_frames, num_frames)
    return FramePlan(indices=idx, timestamps=idx / video_fps)
