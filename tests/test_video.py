import tracemalloc

import av
import numpy as np
import pytest

from stormvl.errors import VideoError
from stormvl.frame_plan import uniform_indices as sample_indices
from stormvl.video import load_video, probe, write_video


def _index_of(frame):
    return int(round(frame[..., 0].mean() / 6))


def test_probe(counter_video):
    path, n = counter_video
    info = probe(path)
    assert info.num_frames == n and info.fps == pytest.approx(10) and info.duration == pytest.approx(4.0)
    assert (info.width, info.height) == (64, 48)


@pytest.mark.parametrize("seek", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5, 8, 40])
def test_uniform_sampling_decodes_the_right_frames(counter_video, k, seek):
    path, n = counter_video
    clip = load_video(path, k, seek=seek)
    expected = sample_indices(n, k)
    assert clip.frames.shape == (k, 48, 64, 3)
    assert clip.indices.tolist() == expected.tolist()
    assert [_index_of(f) for f in clip.frames] == expected.tolist()
    assert np.allclose(clip.timestamps, expected / 10)
    if k > 1:
        assert expected[0] == 0 and expected[-1] == n - 1  # first and last frame reachable


def test_more_frames_than_the_video_repeats_frames(counter_video):
    path, n = counter_video
    clip = load_video(path, 64)
    assert len(clip.frames) == 64 and clip.indices[0] == 0 and clip.indices[-1] == n - 1
    assert [_index_of(f) for f in clip.frames] == clip.indices.tolist()


def test_fps_sampling_and_cap(counter_video):
    path, _ = counter_video
    clip = load_video(path, fps=2)  # 4 s at 2 fps -> 8 frames, every 5th
    assert clip.indices.tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    assert np.allclose(clip.timestamps, np.arange(8) * 0.5)
    capped = load_video(path, fps=10, max_frames=4)
    assert capped.indices.tolist() == sample_indices(40, 4).tolist()


def test_bad_inputs(tmp_path, counter_video, audio_only_file):
    good, _ = counter_video
    cases = {}
    cases["missing"] = (tmp_path / "missing.mp4", "no such file")
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.mp4", "empty file")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    cases["text"] = (tmp_path / "text.mp4", "not a readable video")
    data = good.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "trunc.mp4", "not a readable video")
    cases["audio"] = (audio_only_file, "audio-only")
    cases["dir"] = (tmp_path, "directory")
    for name, (path, msg) in cases.items():
        with pytest.raises(VideoError, match=msg) as e:
            load_video(path, 4)
        assert str(path) in str(e.value), name
        assert "\n" not in str(e.value)
    for bad in (0, -3, 2.5, 10**6):
        with pytest.raises(VideoError, match="num_frames"):
            load_video(good, bad)
    with pytest.raises(VideoError, match="fps"):
        load_video(good, fps=-1)


def test_write_video_is_atomic(tmp_path):
    path = tmp_path / "x.mp4"

    def frames():
        yield np.zeros((8, 8, 3), np.uint8)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer"):
        write_video(path, frames())
    assert not path.exists() and not list(tmp_path.iterdir())


def test_seeking_with_keyframes_sparser_than_the_seek_gap(tmp_path):
    # GOP (20 frames) far longer than the 2-second seek threshold at 2 fps (4 frames): after each
    # seek the decoder restarts far before its target and must still move on.
    n = 40
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = i * 6
    path = write_video(tmp_path / "sparse_gop.mp4", frames, fps=2, gop=20)
    clip = load_video(path, 7)
    expected = sample_indices(n, 7)
    assert clip.indices.tolist() == expected.tolist()
    assert [_index_of(f) for f in clip.frames] == expected.tolist()


def test_size_scales_frames_while_decoding(counter_video):
    path, n = counter_video
    clip = load_video(path, 5, size=32)
    assert clip.frames.shape == (5, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.indices.tolist() == sample_indices(n, 5).tolist()
    assert [_index_of(f) for f in clip.frames] == clip.indices.tolist()  # flat frames keep their colour
    for bad in (0, -1, 2.5, True, 10**5):
        with pytest.raises(VideoError, match="size must be an integer"):
            load_video(path, 4, size=bad)


def _textured_video(tmp_path):
    """640x360 frames with a fine texture (what a sloppy resize aliases) and a sharp-edged square."""
    yy, xx = np.mgrid[0:360, 0:640]
    rng = np.random.default_rng(0)
    frames = []
    for t in range(4):
        img = np.stack([xx * 255 // 640, yy * 255 // 360, (xx + yy + 20 * t) % 256], -1).astype(np.float64)
        img += 40 * (np.sin(xx / 3.0 + t) * np.cos(yy / 5.0))[..., None]
        img[100:200, 200:300] = (255, 0, 0)
        frames.append(np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8))
    return write_video(tmp_path / "texture.mp4", np.stack(frames), fps=4)


@pytest.mark.parametrize("side", [64, 224])
def test_bicubic_size_resizes_like_pil(tmp_path, side):
    # SigLIP's processor resizes the RGB frame with PIL's bicubic filter (antialiased when it
    # shrinks). resample="bicubic" must give those pixels; the fast area path scales the YUV frame
    # in FFmpeg and lands measurably further away.
    from PIL import Image

    path = _textured_video(tmp_path)
    full = load_video(path, 4).frames  # (4, 360, 640, 3)
    pil = np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.BICUBIC)) for f in full]).astype(float)
    exact = load_video(path, 4, size=side, resample="bicubic").frames
    assert exact.shape == (4, side, side, 3) and exact.dtype == np.uint8
    err = np.abs(exact.astype(float) - pil)
    assert err.mean() < 0.5 and np.quantile(err, 0.999) <= 3
    area = np.abs(load_video(path, 4, size=side).frames.astype(float) - pil).mean()
    assert area > 1.5  # the test would notice the fast path standing in for the exact one
    with pytest.raises(ValueError, match="resample must be one of"):
        load_video(path, 4, size=side, resample="nearest")


def test_size_never_holds_full_resolution_frames(tmp_path):
    # 64 frames of 1080p: as one (64, 1080, 1920, 3) uint8 array that is 398 MB. tracemalloc sees
    # numpy's allocations (the measurement without `size` below proves it in this setup), not
    # FFmpeg's own frame buffers. Seen: 19-22 MB peak with size=224, 398 MB without.
    def frames():  # one frame at a time: the test itself holds no 1080p clip
        for i in range(64):
            a = np.zeros((1080, 1920, 3), np.uint8)  # (H, W, 3)
            a[..., 0], a[..., 2] = i * 4, 128
            yield a

    path = write_video(tmp_path / "hd.mp4", frames(), fps=25)

    def peak_bytes(**kw):
        tracing = tracemalloc.is_tracing()  # e.g. under PYTHONTRACEMALLOC
        tracemalloc.start()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            clip = load_video(path, 64, **kw)
            return tracemalloc.get_traced_memory()[1] - before, clip
        finally:
            if not tracing:
                tracemalloc.stop()

    peak, clip = peak_bytes(size=224)
    assert clip.frames.shape == (64, 224, 224, 3) and clip.indices.tolist() == list(range(64))
    assert peak < 300e6, f"peak {peak / 1e6:.0f} MB"
    del clip
    peak_full, _ = peak_bytes()
    assert peak_full > 64 * 1080 * 1920 * 3 * 0.99, f"tracemalloc missed numpy's allocations: {peak_full / 1e6:.0f} MB"


def _banded_frames(n, k=6, seed=0):
    """Frames whose top band (16 rows, one macroblock row) encodes the frame index (red = index
    * k) above noise, so the file is mostly frame data rather than index."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # (H, W, 3)
        a[:16] = 0
        a[:16, :, 0], a[:16, :, 2] = i * k, 128
        yield a


def _band_index(frame, k=6):
    return int(round(frame[:12, :, 0].mean() / k))


def _decodable_frames(path):
    """How many frames decode when the whole file is decoded, going on after errors."""
    with av.open(str(path)) as container:
        count = 0
        for _ in range(20):
            try:
                for frame in container.decode(video=0):
                    count += not frame.is_corrupt
                return count
            except av.error.EOFError:
                return count
            except av.error.FFmpegError:
                pass
    return count


@pytest.mark.parametrize("seek", [True, False])
def test_cut_off_fast_start_file_is_sampled_within_what_decodes(tmp_path, seek):
    # A fast-start mp4 (index first, as streaming sites serve them) cut to 30% of its bytes: the
    # header still promises 40 frames (20 s at 2 fps), the data ends after a dozen.
    full = write_video(tmp_path / "full.mp4", _banded_frames(40), fps=2, gop=8, faststart=True)
    data = open(full, "rb").read()
    assert data.find(b"moov") < data.find(b"mdat")
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    assert probe(path).num_frames == 40

    with pytest.warns(UserWarning) as record:
        clip = load_video(path, 8, seek=seek)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and messages[0].startswith(f"{path}: only the first "), messages
    info = clip.info
    assert info.num_frames == _decodable_frames(path) < 20
    assert info.duration == pytest.approx(info.num_frames / 2) and f"{info.duration:.1f} s of 20.0 s" in messages[0]
    assert clip.frames.shape == (8, 48, 64, 3)
    assert [_band_index(f) for f in clip.frames] == clip.indices.tolist()
    assert clip.timestamps.max() <= info.duration
    # Uniform over the decodable part: its first and last frame, no frame twice.
    assert clip.indices[0] == 0 and clip.indices[-1] == info.num_frames - 1
    assert len(set(clip.indices.tolist())) == 8


def _write_image(path, codec, pix_fmt, num_frames=1):
    container_format = "gif" if codec == "gif" else "image2"
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for i in range(num_frames):
            rgb = np.full((48, 64, 3), 40 * i, np.uint8)  # (H, W, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize(
    "name,codec,pix_fmt,fmt",
    [("a.png", "png", "rgb24", "png"), ("a.jpg", "mjpeg", "yuvj420p", "jpeg"), ("a.gif", "gif", "rgb8", "gif")],
)
def test_still_images_are_not_videos(tmp_path, name, codec, pix_fmt, fmt):
    path = _write_image(tmp_path / name, codec, pix_fmt)
    for call in (probe, lambda p: load_video(p, 4)):
        with pytest.raises(VideoError) as e:
            call(path)
        assert str(e.value) == f"{path}: a still image ({fmt}), not a video"
    # Image content under a video name is refused all the same; an animated GIF is a video.
    renamed = tmp_path / "image.mp4"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(VideoError, match="a still image"):
        load_video(renamed, 4)
    animated = _write_image(tmp_path / "anim.gif", "gif", "rgb8", num_frames=5)
    assert load_video(animated, 3).frames.shape == (3, 48, 64, 3)


def _packets(path):
    """(frame index, byte offset, size) of every video packet."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        return [(round(float(p.pts * p.time_base) * fps), p.pos, p.size) for p in container.demux(stream) if p.size]


@pytest.mark.parametrize("gop", [1, 60])
def test_damaged_packets_mid_stream_are_skipped(tmp_path, gop):
    # Zero the packets of frames 20..23 (target 22 of 8 uniform ones among them), in an mp4
    # whose index sits after the frames. gop=1: every frame stands alone, so exactly those four
    # are lost; gop=60 (one keyframe for 40 frames): later frames depend on them too.
    n, damaged = 40, {20, 21, 22, 23}
    frames = np.zeros((n, 48, 64, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0], frames[i, ..., 2] = i * 6, 128
    path = write_video(tmp_path / "clip.mp4", frames, fps=10, gop=gop)
    data = bytearray(open(path, "rb").read())
    assert data.find(b"mdat") < data.find(b"moov")
    for index, pos, size in _packets(path):
        if index in damaged:
            data[pos : pos + size] = bytes(size)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    path = tmp_path / "damaged.mp4"

    with pytest.warns(UserWarning) as record:
        clip = load_video(path, 8)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and messages[0].startswith(f"{path}: skipped undecodable data"), messages
    planned = sample_indices(n, 8).tolist()
    assert 22 in planned and clip.frames.shape == (8, 48, 64, 3)
    got = clip.indices.tolist()
    assert not damaged & set(got)  # a frame that did not decode is never reported
    assert np.allclose(clip.timestamps, clip.indices / 10)
    # The lost target is replaced by a nearby decoded frame; targets before the damage are intact.
    assert abs(got[planned.index(22)] - 22) <= 3
    assert [g for p, g in zip(planned, got) if p < 20] == [p for p in planned if p < 20]
    if gop == 1:  # no frame depends on another: every frame is exactly the one reported
        assert got[planned.index(22)] in (19, 24)  # the nearest decoded frames on either side
        assert [g for p, g in zip(planned, got) if p != 22] == [p for p in planned if p != 22]
        assert [_index_of(f) for f in clip.frames] == got
    else:  # later frames are concealed by the decoder, not exact; the ones before the damage are
        assert [_index_of(f) for f, g in zip(clip.frames, got) if g < 20] == [g for g in got if g < 20]
