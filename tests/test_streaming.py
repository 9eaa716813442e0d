import numpy as np
import pytest
import torch

FRAMES = np.random.default_rng(3).integers(0, 255, (13, 40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("chunks", [1, 2, 7])
@pytest.mark.parametrize("pool,sample", [(2, 2), (3, 1), (1, 3)])
def test_chunked_stream_equals_one_pass(tiny_model, chunks, pool, sample):
    from stormvl.pipeline import StormPipeline

    model, proc = tiny_model(temporal_bidirectional=False, temporal_pool=pool, spatial_pool=2)
    pipe = StormPipeline(model, proc)
    with torch.no_grad():
        ref = model.get_video_features(proc.preprocess(FRAMES)[None], sample)[0]  # (V, D)
    session = pipe.stream(temporal_sample=sample)
    for part in np.array_split(FRAMES, chunks):
        session.add(part)
        got = session.tokens()
    assert got.shape == ref.shape == (proc.config.tokens_per_video(13, sample), ref.shape[1])
    assert (got - ref).abs().max() < 1e-5
    # Part way through, the tokens are those of the frames so far.
    early = pipe.stream(temporal_sample=sample)
    early.add(FRAMES[:5])
    with torch.no_grad():
        ref5 = model.get_video_features(proc.preprocess(FRAMES[:5])[None], sample)[0]
    assert (early.tokens() - ref5).abs().max() < 1e-5


def test_stream_answers_like_a_whole_video_and_refuses_bidirectional(tiny_model):
    from stormvl.errors import InputError
    from stormvl.pipeline import StormPipeline
    from stormvl.video import VideoClip

    model, proc = tiny_model(temporal_bidirectional=False, temporal_pool=2)
    pipe = StormPipeline(model, proc)
    session = pipe.stream()
    with pytest.raises(InputError, match="no frames"):
        session.tokens()
    session.add(FRAMES[:6])
    session.add(FRAMES[6:])
    clip = VideoClip(frames=FRAMES, timestamps=np.arange(13.0), indices=np.arange(13), info=None)
    assert session.ask("what happens ?").text == pipe.answer(clip, "what happens ?").text
    bi_model, bi_proc = tiny_model(temporal_bidirectional=True)
    with pytest.raises(InputError, match="uni-directional"):
        StormPipeline(bi_model, bi_proc).stream()


def test_answer_live_plays_a_file_into_a_stream(tiny_model, tmp_path, capsys):
    from stormvl.cli import main

    model, proc = tiny_model(temporal_bidirectional=False, temporal_pool=2)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    from stormvl.video import write_video

    write_video(tmp_path / "v.mp4", FRAMES, fps=4)  # 3.25 s
    argv = ["answer", str(tmp_path / "v.mp4"), "what happens ?", "--model", str(tmp_path / "m"), "--live", "--fast"]
    assert main(argv + ["--fps", "2"]) == 0
    err = capsys.readouterr().err
    assert "live: 7 frames" in err  # one frame every 0.5 s of 3.25 s: 0.0, 0.5, ..., 3.0
    assert main(argv + ["--frames", "8"]) == 2
