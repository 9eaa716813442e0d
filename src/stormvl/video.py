"""Video decoding with PyAV (its wheels ship FFmpeg; decord does not install everywhere): open and
probe a file, decode the frames a `frame_plan.FramePlan` names, write mp4 files.

The walker seeks to the keyframe before a target and decodes forward only as far as it, so 32
frames out of a long video cost about 32 short GOP walks instead of a full decode. With `size`,
FFmpeg scales each chosen frame straight from the decoder's YUV to (size, size) RGB, so a
full-resolution RGB frame never exists.

Every index and timestamp in a clip is the position of a frame that decoded: a frame standing in
for another one is reported at its own position.

Fallback policy, in one place:
- Still images (PNG, JPEG, ..., a GIF or APNG with one frame) are refused with `VideoError`,
  although FFmpeg opens them as one-frame videos.
- No frame count in the header (no index): the stream is decoded once to count its frames, and
  the plan is made over what decoded.
- Broken or missing duration: taken from the container, else frame count / fps; a missing frame
  rate is taken as 25 fps.
- Sparse keyframes: seek only across gaps longer than ~2 s, and re-seek for a far target only
  after the current pass reached a target (a seek may land far before the target).
- Stream shorter than the header says (a cut-off download, e.g. a fast-start mp4 whose index
  lists every frame): when more than a second is missing, one warning, and the plan is made
  again over the frames that decode, in a second pass; `info` then describes that part. Its end
  is found by reading packets to the last keyframe and decoding from there without frame
  threads (they drop the frames in flight when the data stops). A shorter shortfall (frame
  counts estimated from the duration are often a few frames off) gives the targets past the end
  the last decoded frame.
- Undecodable data: skipped, decoding goes on after it, one warning naming the file; a target
  that cannot be decoded is replaced by its nearest decoded neighbour; after 16 errors the walk
  stops. Frames FFmpeg flags as corrupt count as undecodable; frames that depend on lost data
  but are not flagged are what FFmpeg's error concealment makes of them. If nothing decodes,
  `VideoError`.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .errors import VideoError
from .frame_plan import MAX_FRAMES, FramePlan, check_count, check_request, plan_frames

__all__ = ["VideoError", "VideoClip", "VideoInfo", "MAX_FRAMES", "probe", "load_video", "load_image", "write_video"]

MAX_SIZE = 8192  # frame side for `size`; beyond any real video, catches a swapped argument
# Scaling for `size`: AREA averages the source pixels under each output pixel, so downscaling
# does not alias (swscale's default BILINEAR only looks at 2x2 pixels).
INTERPOLATION = "AREA"
RESAMPLE = ("area", "bilinear", "bicubic")


class FrameSize(NamedTuple):
    """Decoded frames scaled to (side, side). "area": by FFmpeg straight from the decoder's YUV,
    the fast path. "bilinear" / "bicubic": from the whole RGB frame with antialiasing, exactly as
    the model's processor resizes (`processing.resize_frames`), for towers trained on frames their
    own image processor resized (SigLIP's is bicubic); one full-size frame exists at a time."""

    side: int
    resample: str = "area"


def _frame_size(path, size: int | None, resample: str) -> FrameSize | None:
    if size is None:
        return None
    check_count(os.fspath(path), "size", size, high=MAX_SIZE)
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
    return FrameSize(size, resample)


# FFmpeg opens still images through these demuxers, and through one "<codec>_pipe" demuxer per
# image codec (png_pipe, jpeg_pipe, webp_pipe, ...).
IMAGE_DEMUXERS = ("image2", "image2pipe")
# Image formats that may hold an animation: a still image when they hold one frame.
ANIMATED_IMAGE_DEMUXERS = ("gif", "apng")
MAX_ERRORS = 16


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
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB; (N, size, size, 3) when loaded with `size`
    timestamps: np.ndarray  # (N,) seconds from the start of the video
    indices: np.ndarray  # (N,) frame indices in the video
    info: VideoInfo
    # What went wrong while decoding (cut-off file, skipped damaged data), also given as warnings:
    # an answer built on this clip should say so.
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        """Seconds of video the frames come from (the last frame's time for clips built in memory)."""
        if self.info is not None:
            return float(self.info.duration)
        return float(self.timestamps[-1]) if len(self.timestamps) else 0.0


@dataclass
class _Walk:
    """What a decoding pass produced."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)  # decoded index -> (H, W, 3) uint8 RGB
    notes: list[str] = field(default_factory=list)  # warnings for the caller, one line each
    # Undecodable data skipped, as (last decoded index, error); `cut_skipped`: raised by the file's
    # last packet, where a cut-off download stops.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    cut_skipped: list[tuple[int, str]] = field(default_factory=list)
    end: int | None = None  # last decoded index, when the stream ended before the remaining targets


def _open(path, image_ok: bool = False):
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
    image = None if image_ok else _still_image_format(path, container)
    if image:
        container.close()
        raise VideoError(f"{path}: a still image ({image}), not a video")
    return path, container


def load_image(path, *, size: int | None = None, resample: str = "area") -> np.ndarray:
    """A still image (PNG, JPEG, ...; a video's first frame too) as a one-frame clip (1, H, W, 3)
    uint8 RGB, or (1, size, size, 3): images train as one-frame videos, as in the paper's
    image-text alignment stage."""
    import av

    size = _frame_size(path, size, resample)
    path, container = _open(path, image_ok=True)
    with container:
        try:
            for frame in container.decode(video=0):
                return _rgb(frame, size)[None]
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: not a readable image ({e.strerror or e})") from None
    raise VideoError(f"{path}: no decodable image")


def _still_image_format(path, container) -> str | None:
    """The image format ("png", "jpeg", ...) when the file is a still image, else None."""
    demuxer = container.format.name
    codec = getattr(container.streams.video[0].codec_context, "name", None) or demuxer.removesuffix("_pipe")
    image = {"mjpeg": "jpeg"}.get(codec, codec)
    if demuxer in IMAGE_DEMUXERS or demuxer.endswith("_pipe"):
        return image
    if demuxer in ANIMATED_IMAGE_DEMUXERS and _count_packets(path, limit=2) < 2:
        return image
    return None


def _count_packets(path, limit: int) -> int:
    """Video packets in the file, counting no further than `limit` (a fresh container: demuxing
    moves the read position)."""
    import av

    n = 0
    try:
        with av.open(path) as container:
            for packet in container.demux(video=0):
                n += packet.size > 0  # the last packet is an empty end-of-stream marker
                if n >= limit:
                    break
    except av.error.FFmpegError:
        pass
    return n


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
    size: int | None = None,
    resample: str = "area",
) -> VideoClip:
    """Sample frames: `num_frames` uniformly over the whole video, or, with `fps`, one frame every
    1/fps seconds capped at `max_frames` (uniform over the video when the cap binds). With `size`,
    every frame is scaled (aspect ratio not kept) to (size, size) while decoding, as `resample`
    says (`FrameSize`). Damaged or cut-off files give warnings naming the file (module docstring:
    fallback policy)."""
    check_request(os.fspath(path), num_frames, fps, max_frames)
    size = _frame_size(path, size, resample)
    request = {"num_frames": num_frames, "fps": fps, "max_frames": max_frames}
    path, container = _open(path)
    with container:
        info = _info(path, container)
        if info.num_frames <= 0:  # no frame count in the header: decode once to count
            plan, walk = _decode_counting(path, container, info, request, size)
        else:
            plan = plan_frames(info.num_frames, info.fps, info.duration, where=path, **request)
            walk = _decode_indices(path, container, info, plan.targets, seek, size, progress)
    if walk.end is not None and _missing_a_second(info, walk.end):
        plan, walk = _decode_decodable_part(path, info, plan, walk, request, seek, size, progress)
    if not walk.frames:
        raise VideoError(f"{path}: no decodable video frames")
    skipped = walk.skipped + walk.cut_skipped
    notes = walk.notes + ([_skipped_message(path, skipped)] if skipped else [])
    for message in notes:
        warnings.warn(message, stacklevel=2)
    clip = _clip(plan, walk.frames, info)
    clip.notes = notes
    return clip


def _clip(plan: FramePlan, decoded: dict[int, np.ndarray], info: VideoInfo) -> VideoClip:
    # A frame that could not be decoded is replaced by its nearest decoded neighbour, reported at
    # the neighbour's position.
    keys = np.array(sorted(decoded))
    out_idx = np.array([keys[np.abs(keys - i).argmin()] for i in plan.indices], dtype=np.int64)
    frames = np.stack([decoded[i] for i in out_idx])  # (N, H, W, 3) uint8
    return VideoClip(frames=frames, timestamps=out_idx / info.fps, indices=out_idx, info=info)


def _missing_a_second(info, end) -> bool:
    """Whether more than a second of frames after `end` is missing. Less is common in files that
    are fine: frame counts estimated from the duration are often a few frames off."""
    return info.num_frames - 1 - end > info.fps


def _decode_decodable_part(path, info, plan, walk, request, seek, size, progress) -> tuple[FramePlan, _Walk]:
    """For a stream that ended at `walk.end`, more than a second before its header says (a
    cut-off download): find where the decodable part really ends, then plan and decode again
    over it, and change `info` to describe it."""
    end = _decodable_end(path, info, walk.end)
    if end < 0 or not _missing_a_second(info, end):
        return plan, walk
    header_duration = info.duration
    info.num_frames, info.duration = end + 1, (end + 1) / info.fps
    plan = plan_frames(info.num_frames, info.fps, info.duration, where=path, **request)
    _, container = _open(path)
    with container:  # without frame threads, which would drop the last frames (see _decodable_end)
        walk = _decode_indices(path, container, info, plan.targets, seek, size, progress, threads="SLICE")
    note = f"{path}: only the first {info.duration:.1f} s of {header_duration:.1f} s decode; sampled within them"
    # The packet the cut went through fails whenever the last frames are drained from the
    # decoder; the note says it already.
    walk.notes.insert(0, note)
    walk.cut_skipped = []
    return plan, walk


def _skipped_message(path, skipped) -> str:
    after = ", ".join(str(pos) for pos in sorted({pos for pos, _ in skipped}))
    return f"{path}: skipped undecodable data {len(skipped)} time(s), after frame(s) {after} ({skipped[0][1]})"


_reformatters = threading.local()


def _rgb(frame, size: FrameSize | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or (side, side, 3) scaled as `size` says."""
    # `frame.reformat` / `to_ndarray(format=...)` build a new swscale context on every call, which
    # cost 60x the conversion itself on small frames (7.6 ms against 0.13 ms at 64x64) and made
    # training decode-bound. One reformatter per thread keeps its context while the frame
    # geometry stays the same; the pixels are identical.
    r = getattr(_reformatters, "r", None)
    if r is None:
        from av.video.reformatter import VideoReformatter

        r = _reformatters.r = VideoReformatter()
    if size is None:
        return r.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3) uint8
    if size.resample != "area":
        from .processing import resize_frames

        full = r.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3) uint8
        return resize_frames(full[None], size.side, size.resample)[0]  # (side, side, 3) uint8
    small = r.reformat(frame, width=size.side, height=size.side, format="rgb24", interpolation=INTERPOLATION)
    # A copy: numpy then owns the few bytes, instead of a view keeping FFmpeg's frame alive.
    return np.array(small.to_ndarray())  # (size, size, 3) uint8


def _decode_counting(path, container, info, request, size) -> tuple[FramePlan | None, _Walk]:
    """For a container without a frame count: decode every frame, plan over them, keep the
    planned ones. `info` gets the count that decoded."""
    decoded, errors = _decode_all(path, container, size)
    if not decoded:
        return None, _Walk(notes=errors)
    info.num_frames = len(decoded)
    info.duration = info.duration or len(decoded) / info.fps
    plan = plan_frames(info.num_frames, info.fps, info.duration, where=path, **request)
    return plan, _Walk({i: decoded[i] for i in plan.targets}, errors)


def _decode_all(path, container, size) -> tuple[list[np.ndarray], list[str]]:
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    out = []  # one (H, W, 3) or (size, size, 3) uint8 array per frame
    errors = []
    corrupt_tail = 0  # frames at the end that FFmpeg flags as only partly decoded (a cut-off file)
    try:
        for frame in container.decode(stream):
            out.append(_rgb(frame, size))
            corrupt_tail = corrupt_tail + 1 if frame.is_corrupt else 0
    except av.error.FFmpegError as e:
        if out:
            errors.append(f"{path}: stream ends early after {len(out) - corrupt_tail} frames ({e})")
    # Those in the middle keep their place: the list position is the frame index.
    return out[: len(out) - corrupt_tail], errors


def _frame_index(frame, stream, fps, start):
    if frame.pts is None:
        return None
    return int(round(float((frame.pts - start) * stream.time_base) * fps))


def _seek_to_index(container, stream, fps, start, index) -> None:
    """Seek to the keyframe at or before frame `index`."""
    ts = start + int(Fraction(index, 1) / Fraction(fps).limit_denominator(100000) / stream.time_base)
    _seek(container, stream, max(ts, start))


def _seek(container, stream, ts) -> None:
    """Seek to the keyframe at or before `ts` (in stream time base). A failed seek leaves the
    position as it was; decoding on from there is still right, only slower."""
    import av

    try:
        container.seek(ts, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        pass


def _decodable_end(path, info, pos) -> int:
    """The index of the last frame that decodes in a file whose data stops before its index says
    (a cut-off download), given `pos`, a frame that decoded (-1: none). Reads packets from `pos`
    on to find the last keyframe (cheap: nothing is decoded), then decodes from it to the end.

    Its own container, decoded without frame threads: those drop the frames in flight when the
    data stops."""
    import av

    _, container = _open(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        start = stream.start_time or 0
        _seek_to_index(container, stream, info.fps, start, max(pos, 0))
        key = _last_keyframe(container, stream)
        if key is None:
            return pos
        _seek(container, stream, key)
        end = pos
        for _ in range(MAX_ERRORS):  # decoding goes on after an error, up to the end-of-stream marker
            try:
                for frame in container.decode(stream):
                    if not frame.is_corrupt:
                        i = _frame_index(frame, stream, info.fps, start)
                        end = max(end, end + 1 if i is None else i)
                break
            except av.error.EOFError:
                break
            except av.error.FFmpegError:
                continue
    return end


def _last_keyframe(container, stream) -> int | None:
    """The pts of the last keyframe packet from the current position to the end of the file. A
    keyframe that is the file's last packet is passed over: the cut may have gone through it."""
    import av

    keys = []
    final_is_key = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream marker
                continue
            final_is_key = packet.is_keyframe and packet.pts is not None
            if final_is_key:
                keys.append(packet.pts)
    except av.error.FFmpegError:
        pass
    if final_is_key and len(keys) > 1:
        keys.pop()
    return keys[-1] if keys else None


def _decode(container, stream, packet: list):
    """`container.decode(stream)`, keeping the packet being decoded in `packet[0]`."""
    for p in container.demux(stream):
        packet[0] = p
        yield from p.decode()


def _ends_file(packet, file_size) -> bool:
    """Whether `packet` is the last data in the file: where a cut-off download stops."""
    return packet is not None and packet.size > 0 and packet.pos is not None and packet.pos + packet.size >= file_size


def _decode_indices(path, container, info, targets, seek, size, progress=False, threads="AUTO") -> _Walk:
    """Decode the frames in `targets` (sorted), seeking forward over long gaps. Stops at the end
    of the stream, recording the last decoded index in `end` when targets remain."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(targets), desc="decoding", unit="frame", leave=False)
    try:
        return _Walker(path, container, info, targets, seek, size, bar, threads).run()
    finally:
        if bar is not None:
            bar.close()


class _Walker:
    """One forward walk over a stream, in passes: a pass decodes from the current position until
    a seek is due, every target is in, undecodable data stops it, or the stream ends."""

    def __init__(self, path, container, info, targets, seek, size, bar, threads):
        self.container, self.info, self.targets = container, info, targets
        self.seek, self.size, self.bar = seek, size, bar
        self.stream = container.streams.video[0]
        self.stream.thread_type = threads
        self.start = self.stream.start_time or 0
        # Seek only across gaps longer than a couple of seconds: below that, decoding on is
        # cheaper than jumping back to the previous keyframe.
        self.gap = max(2, int(2 * info.fps))
        self.file_size = os.path.getsize(path)
        self.walk = _Walk()
        self.t = 0  # the next target, as an index into `targets`
        self.pos = -1  # index of the last decoded frame
        self.prev = None  # the last decoded frame
        self.packet = [None]  # the packet being decoded
        self.resume = False  # undecodable data was hit: decode on after it rather than seek back into it

    def run(self) -> _Walk:
        while self.t < len(self.targets) and len(self.walk.skipped) + len(self.walk.cut_skipped) <= MAX_ERRORS:
            if self.seek and not self.resume and self.targets[self.t] - self.pos > self.gap:
                _seek_to_index(self.container, self.stream, self.info.fps, self.start, self.targets[self.t])
            self.resume = False
            if self._pass():
                # The stream ended before the remaining targets; a seek past the end of the data
                # (a cut-off file whose index lists frames it lacks) ends here too.
                self.walk.end = self.pos
                self._keep_prev()
                break
        return self.walk

    def _pass(self) -> bool:
        """Decode on from the current position; True when the stream ended."""
        import av

        progressed = False
        try:
            for frame in _decode(self.container, self.stream, self.packet):
                progressed |= self._take(frame)
                # Re-seek for a far target only after this pass reached one: right after a seek
                # the decoder starts at a keyframe that may lie far before the target.
                far = self.t < len(self.targets) and self.targets[self.t] - self.pos > self.gap
                if self.t >= len(self.targets) or (self.seek and progressed and far):
                    return False
        except av.error.EOFError:  # the decoder was already drained by an earlier end of stream
            return True
        except av.error.FFmpegError as e:
            at_cut = _ends_file(self.packet[0], self.file_size)
            (self.walk.cut_skipped if at_cut else self.walk.skipped).append((self.pos, str(e)))
            self.resume = True
            return False
        return True

    def _take(self, frame) -> bool:
        """Keep `frame` when it reaches the next target; True if it did."""
        if frame.is_corrupt:  # FFmpeg flags some frames it could only partly decode (e.g. at a cut)
            return False
        i = _frame_index(frame, self.stream, self.info.fps, self.start)
        if i is None:
            i = self.pos + 1
        reached = self.targets[self.t] <= i
        if reached:
            if self.targets[self.t] < i:
                # The target never came out (undecodable, or a gap in the timestamps): keep the
                # decoded frames on both sides of it as stand-ins.
                self._keep_prev()
            self.walk.frames[i] = _rgb(frame, self.size)
            while self.t < len(self.targets) and self.targets[self.t] <= i:
                self.t += 1
                if self.bar is not None:
                    self.bar.update(1)
        self.pos, self.prev = i, frame
        return reached

    def _keep_prev(self) -> None:
        if self.prev is not None and self.pos not in self.walk.frames:
            self.walk.frames[self.pos] = _rgb(self.prev, self.size)


def iter_frames(path, fps: float, *, size: int | None = None, resample: str = "area"):
    """Frames one every 1/fps seconds, decoded in order as a live source would deliver them:
    yields (seconds, (H, W, 3) uint8) without holding more than one frame. Undecodable packets are
    skipped (a live stream does not stop for one)."""
    import av

    if not (fps > 0 and math.isfinite(fps)):
        raise VideoError(f"{path}: fps must be a positive number, got {fps!r}")
    size = _frame_size(path, size, resample)
    path, container = _open(path)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = stream.start_time or 0
        next_t = 0.0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                t = float((frame.pts - start) * stream.time_base)
                if t + 1e-6 >= next_t:
                    yield t, _rgb(frame, size)
                    next_t += 1.0 / fps
                    while next_t <= t:
                        next_t += 1.0 / fps


def write_video(path, frames, fps: float = 8, *, crf: int = 18, gop: int | None = None, faststart: bool = False) -> str:
    """Write RGB uint8 frames (N, H, W, 3), or an iterable of them, as an H.264 mp4. The file
    appears only when complete (written beside it, then renamed). `faststart` puts the index
    (moov atom) before the frames, as streaming sites do."""
    import av

    path = os.fspath(path)
    tmp = f"{path}.part{os.getpid()}.mp4"
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    try:
        with av.open(tmp, mode="w", options={"movflags": "faststart"} if faststart else None) as out:
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
