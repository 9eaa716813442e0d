"""Video decoding with PyAV (its wheels ship FFmpeg; decord does not install everywhere): open and
probe a file, decode the frames a `frame_plan.FramePlan` names, write mp4 files.

The walker seeks to the keyframe before a target and decodes forward only as far as it, so 32
frames out of a long video cost about 32 short GOP walks instead of a full decode.

Fallback policy, in one place:
- No frame count in the header (no index): the stream is decoded once to count its frames, and
  the plan is made over what decoded.
- Broken or missing duration: taken from the container, else frame count / fps; a missing frame
  rate is taken as 25 fps.
- Sparse keyframes: seek only across gaps longer than ~2 s, and re-seek for a far target only
  after the current pass reached a target (a seek may land far before the target).
- Stream shorter than the header says: targets past the end get the last decoded frame.
- Undecodable data: skipped with a warning; a target that cannot be decoded is replaced by its
  nearest decoded neighbour; after 16 errors the walk stops. If nothing decodes, `VideoError`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import VideoError
from .frame_plan import MAX_FRAMES, check_request, plan_frames

__all__ = ["VideoError", "VideoClip", "VideoInfo", "MAX_FRAMES", "probe", "load_video", "write_video"]


@dataclass
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


@dataclass
class VideoClip:
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    timestamps: np.ndarray  # (N,) seconds from the start of the video
    indices: np.ndarray  # (N,) frame indices in the video
    info: VideoInfo


def _open(path):
    import av

    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise VideoError(
            f"{path}: not a readable video (corrupt, truncated or not a video: {e.strerror or e})"
        ) from None
    except Exception as e:  # PyAV raises a few plain errors for garbage input
        raise VideoError(f"{path}: not a readable video ({e})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        what = "audio-only file" if "audio" in kinds else f"no video stream (streams: {kinds or 'none'})"
        raise VideoError(f"{path}: {what}")
    return path, container


def _info(path, container) -> VideoInfo:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    n = stream.frames or (round(duration * fps) if duration else 0)
    if duration is None:
        duration = n / fps if n else 0.0
    return VideoInfo(path, int(n), fps, float(duration), stream.codec_context.width, stream.codec_context.height)


def probe(path) -> VideoInfo:
    path, container = _open(path)
    with container:
        info = _info(path, container)
    if info.num_frames <= 0:
        raise VideoError(f"{path}: the video stream has no frames")
    return info


def load_video(
    path,
    num_frames: int | None = 32,
    *,
    fps: float | None = None,
    max_frames: int = MAX_FRAMES,
    seek: bool = True,
    progress: bool = False,
) -> VideoClip:
    """Sample frames: `num_frames` uniformly over the whole video, or, with `fps`, one frame every
    1/fps seconds capped at `max_frames` (uniform over the video when the cap binds)."""
    check_request(os.fspath(path), num_frames, fps, max_frames)
    path, container = _open(path)
    try:
        info = _info(path, container)
        decoded = None
        if info.num_frames <= 0:  # no frame count in the header: decode once to count
            decoded = _decode_all(path, container)
            if not decoded:
                raise VideoError(f"{path}: no decodable video frames")
            info.num_frames = len(decoded)
            info.duration = info.duration or len(decoded) / info.fps
        p = plan_frames(
            info.num_frames, info.fps, info.duration, num_frames=num_frames, fps=fps, max_frames=max_frames, where=path
        )
        if decoded is not None:
            chosen = {i: decoded[i] for i in p.targets}
        else:
            chosen = _decode_indices(path, container, info, p.targets, seek, progress)
    finally:
        container.close()
    if not chosen:
        raise VideoError(f"{path}: no decodable video frames")
    # A frame that could not be decoded is replaced by its nearest decoded neighbour.
    keys = np.array(sorted(chosen))
    out_idx = np.array([keys[np.abs(keys - i).argmin()] for i in p.indices], dtype=np.int64)
    frames = np.stack([chosen[i] for i in out_idx])  # (N, H, W, 3) uint8
    return VideoClip(frames=frames, timestamps=out_idx / info.fps, indices=out_idx, info=info)


def _decode_all(path, container):
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    out = []
    try:
        for frame in container.decode(stream):
            out.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as e:
        if out:
            warnings.warn(f"{path}: stream ends early after {len(out)} frames ({e})", stacklevel=2)
    return out


def _frame_index(frame, stream, fps, start):
    if frame.pts is None:
        return None
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def _decode_indices(path, container, info, targets, seek, progress=False):
    """Decode exactly the frames in `targets` (sorted), seeking forward over long gaps."""
    import av

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(targets), desc="decoding", unit="frame", leave=False)

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    start = stream.start_time or 0
    chosen: dict[int, np.ndarray] = {}
    # Seek only across gaps longer than a couple of seconds: below that, decoding on is cheaper
    # than jumping back to the previous keyframe.
    gap = max(2, int(2 * info.fps))
    pos = -1  # index of the last decoded frame
    last = None  # (index, frame) of the last decoded frame
    errors = 0
    t = 0
    while t < len(targets):
        target = targets[t]
        if seek and target - pos > gap:
            ts = start + int(Fraction(target, 1) / Fraction(info.fps).limit_denominator(100000) / stream.time_base)
            try:
                container.seek(max(ts, start), stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                pass
        progressed = False
        try:
            for frame in container.decode(stream):
                i = _frame_index(frame, stream, info.fps, start)
                if i is None:
                    i = pos + 1
                pos = i
                last = (i, frame)
                while t < len(targets) and targets[t] <= i:
                    chosen[targets[t]] = frame.to_ndarray(format="rgb24")
                    t += 1
                    progressed = True
                    if bar is not None:
                        bar.update(1)
                # Re-seek for a far target only after this pass produced a frame: right after a
                # seek the decoder starts at a keyframe that may lie far before the target.
                if t >= len(targets) or (seek and progressed and targets[t] - pos > gap):
                    break
            else:
                # End of stream before the remaining targets (frame count overestimated):
                # they get the last frame.
                if last is not None:
                    arr = last[1].to_ndarray(format="rgb24")
                    for tt in targets[t:]:
                        chosen[tt] = arr
                t = len(targets)
        except av.error.FFmpegError as e:
            errors += 1
            warnings.warn(f"{path}: skipped undecodable data near frame {target} ({e})", stacklevel=2)
            if not progressed:
                t += 1  # give up on this target; its neighbours stand in
            if errors > 16:
                break
    if bar is not None:
        bar.close()
    return chosen


def write_video(path, frames, fps: float = 8, *, crf: int = 18, gop: int | None = None) -> str:
    """Write RGB uint8 frames (N, H, W, 3), or an iterable of them, as an H.264 mp4. The file
    appears only when complete (written beside it, then renamed)."""
    import av

    path = os.fspath(path)
    tmp = f"{path}.part{os.getpid()}.mp4"
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    try:
        with av.open(tmp, mode="w") as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            opts = {"crf": str(crf), "preset": "veryfast"}
            if gop:
                opts["g"] = str(gop)
            stream.options = opts
            for arr in _chain(first, frames):
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _chain(first, rest):
    yield first
    yield from rest
