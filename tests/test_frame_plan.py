import numpy as np
import pytest

from stormvl.errors import VideoError
from stormvl.frame_plan import MAX_FRAMES, plan_frames, uniform_indices


def test_uniform_spans_first_to_last_frame():
    assert uniform_indices(40, 5).tolist() == [0, 10, 20, 29, 39]
    assert uniform_indices(40, 1).tolist() == [19]  # one frame: the middle one
    assert uniform_indices(3, 7).tolist() == [0, 0, 1, 1, 1, 2, 2]  # more than the video has: repeats


def test_plan_timestamps_are_indices_over_fps():
    p = plan_frames(40, 10.0, 4.0, num_frames=5)
    assert p.indices.tolist() == [0, 10, 20, 29, 39]
    np.testing.assert_allclose(p.timestamps, [0.0, 1.0, 2.0, 2.9, 3.9])
    assert p.targets == [0, 10, 20, 29, 39]
    assert plan_frames(3, 10.0, 0.3, num_frames=5).targets == [0, 1, 2]  # each repeated frame decoded once


def test_fps_mode_and_its_cap():
    p = plan_frames(100, 25.0, 4.0, num_frames=None, fps=2)
    assert p.indices.tolist() == [0, 12, 25, 38, 50, 62, 75, 88]  # round(k / 2 * 25)
    np.testing.assert_allclose(p.timestamps, p.indices / 25.0)
    capped = plan_frames(100, 25.0, 4.0, num_frames=None, fps=2, max_frames=4)
    assert capped.indices.tolist() == uniform_indices(100, 4).tolist()
    # Times past the last frame (a header duration longer than the stream) clamp to it.
    assert plan_frames(10, 25.0, 4.0, num_frames=None, fps=2).indices.max() == 9


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"num_frames": 0}, "num_frames must be an integer in"),
        ({"num_frames": MAX_FRAMES + 1}, "num_frames must be an integer in"),
        ({"num_frames": True}, "num_frames must be an integer in"),
        ({"num_frames": 2.5}, "num_frames must be an integer in"),
        ({"num_frames": None, "fps": -1}, "fps must be a positive number"),
        ({"num_frames": None, "fps": float("nan")}, "fps must be a positive number"),
        ({"max_frames": 0}, "max_frames must be an integer in"),
    ],
)
def test_bad_requests_name_the_argument(kw, msg):
    with pytest.raises(VideoError, match=f"clip.mp4: {msg}"):
        plan_frames(40, 10.0, 4.0, where="clip.mp4", **kw)


def test_a_stream_without_frames_is_an_error():
    with pytest.raises(VideoError, match="no frames"):
        plan_frames(0, 10.0, 0.0, num_frames=4)
