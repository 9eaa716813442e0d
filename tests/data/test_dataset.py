import json

import numpy as np

from stormvl.data.dataset import VideoQADataset, read_training_samples
from stormvl.video import load_image, write_video


def _png(path, color):
    import av

    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = 40, 24, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.full((24, 40, 3), color, np.uint8), format="rgb24")
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)


def test_image_records_train_as_one_frame_videos(tmp_path):
    _png(tmp_path / "red.png", (200, 10, 10))
    write_video(tmp_path / "v.mp4", np.zeros((8, 32, 32, 3), np.uint8), fps=4)
    rows = [  # LLaVA-pretrain image-text pairs beside video conversations, in one file
        {"image": "red.png", "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                                {"from": "gpt", "value": "a red picture"}]},
        {"video": "v.mp4", "conversations": [{"from": "human", "value": "<video>\nDescribe the video."},
                                              {"from": "gpt", "value": "darkness"}]},
    ]  # fmt: skip
    (tmp_path / "mix.json").write_text(json.dumps(rows))
    samples = read_training_samples([tmp_path / "mix.json"])
    assert [s.image for s in samples] == [True, False] and samples[0].question == "What is shown?"
    ds = VideoQADataset(samples, num_frames=8, size=16)
    image, video = ds[0][0], ds[1][0]
    assert image.shape == (1, 16, 16, 3) and video.shape == (8, 16, 16, 3)
    assert abs(int(image[0, 8, 8, 0]) - 200) <= 3 and image[0, 8, 8, 1] < 20  # the image's colour, scaled
    assert load_image(tmp_path / "red.png").shape == (1, 24, 40, 3)
