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


def test_corrupt_frames_are_skipped(tmp_path):
    # Overwrite bytes in the middle of the stream: decoding must still return the frame count
    # asked for (neighbours stand in for undecodable frames), with a warning at most.
    frames = np.random.default_rng(0).integers(0, 255, (30, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noise.mp4", frames, fps=10, gop=5)
    data = bytearray(path and open(path, "rb").read())
    mid = len(data) // 2
    data[mid : mid + 400] = bytes(400)
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    clip = load_video(tmp_path / "corrupt.mp4", 10)
    assert clip.frames.shape == (10, 48, 64, 3)


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
