import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from stormvl.data.synthetic import vocabulary
    from stormvl.testing import build_word_tokenizer

    words, texts = vocabulary()
    return build_word_tokenizer(texts + ["what happens ?"], words)


@pytest.fixture(scope="session")
def counter_video(tmp_path_factory):
    """40 frames at 10 fps whose red channel encodes the frame index (index * 6), GOP 8 so
    sampling has to seek."""
    from stormvl.video import write_video

    n = 40
    frames = np.zeros((n, 48, 64, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = i * 6
        frames[i, ..., 2] = 128
    path = tmp_path_factory.mktemp("video") / "counter.mp4"
    write_video(path, frames, fps=10, gop=8)
    return path, n


@pytest.fixture
def audio_only_file(tmp_path):
    """An .m4a file with one AAC audio stream and no video."""
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A factory: (model, processor) for a tiny STORM with the given StormConfig overrides."""
    from stormvl import StormForConditionalGeneration, StormProcessor
    from stormvl.testing import TinySize, tiny_config

    def make(llm="qwen2", **kw):
        torch.manual_seed(0)
        cfg = tiny_config(tiny_tokenizer, TinySize(llm=llm), **kw)
        return StormForConditionalGeneration(cfg).eval(), StormProcessor(tiny_tokenizer, cfg)

    return make
