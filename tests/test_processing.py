import numpy as np
import pytest
import torch

from stormvl.errors import InputError
from stormvl.processing import parse_letter


@pytest.mark.parametrize(
    "text,letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("d) cat", "D"),
        ("Answer: A", "A"),
        ("  C  ", "C"),
        ("I think it is B, the cat", "B"),
        ("none", None),
    ],
)
def test_letter_parser(text, letter):
    assert parse_letter(text, 4) == letter


def test_video_position_after_puts_the_placeholder_after_the_question(tiny_model):
    _, proc = tiny_model(video_position="after")
    text = proc.prompt_text("what happens ?", ["red", "blue"])
    assert text.index("what happens") < text.index("<video>") < text.index("assistant")
    _, proc = tiny_model()
    assert proc.prompt_text("what happens ?").index("<video>") < proc.prompt_text("what happens ?").index("what")


@pytest.mark.parametrize("kt,ks", [(1, 1), (4, 1), (2, 2)])
@pytest.mark.parametrize("s", [None, 1, 3])
def test_batches_carry_the_stride_their_prompts_were_sized_for(tiny_model, kt, ks, s):
    model, proc = tiny_model(temporal_pool=kt, spatial_pool=ks, temporal_sample=2)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (t, 40, 40, 3), dtype=np.uint8) for t in (8, 5)]  # a ragged batch
    batch = proc(videos, [proc.prompt_text("what happens ?")] * 2, temporal_sample=s)
    want = 2 if s is None else s  # the config's stride unless the call names one
    assert batch["temporal_sample"] == want
    placeholders = (batch["input_ids"] == model.config.video_token_id).sum(1).tolist()
    assert placeholders == [model.config.tokens_per_video(8, want), model.config.tokens_per_video(5, want)]
    feats = model.get_video_features(batch["pixel_values_videos"], batch["temporal_sample"])
    assert [f.shape[0] for f in feats] == placeholders
    with torch.no_grad():  # the model reads the stride from the batch: no second place to pass it
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    assert model.generate(**batch, max_new_tokens=2, do_sample=False).shape == (2, 2)


def test_bad_strides_and_option_counts_are_input_errors(tiny_model):
    _, proc = tiny_model()
    frames = np.zeros((4, 40, 40, 3), np.uint8)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="temporal_sample must be an integer >= 1"):
            proc([frames], [proc.prompt_text("q")], temporal_sample=bad)
    with pytest.raises(InputError, match="1 to 26 options, got 27"):
        proc.prompt_text("q", [f"o{i}" for i in range(27)])
    with pytest.raises(InputError, match="exactly one '<video>' placeholder"):
        proc([frames], ["no placeholder here"])


@pytest.mark.parametrize("position", ["before", "after"])
def test_prompt_timestamps_sit_beside_the_video(tiny_model, position):
    from stormvl.processing import time_text

    _, proc = tiny_model(video_position=position, prompt_timestamps=True)
    times = (62.0, [0.0, 2.0, 60.5])
    text = proc.prompt_text("what happens ?", times=times)
    said = "The video lasts 62.0 seconds, and 3 frames are sampled at 0.0s, 2.0s, 60.5s."
    assert time_text(*times) == said and text.count(said) == 1
    lo, hi = sorted([text.index(said), text.index("<video>")])
    assert text[lo:hi].count("\n") == 1 and "what happens" not in text[lo:hi]  # side by side
    assert proc.tokenizer.unk_token_id not in proc.tokenizer(text)["input_ids"]  # the tiny vocabulary reads it
    with pytest.raises(InputError, match="timestamps"):
        proc.prompt_text("what happens ?")
    _, plain = tiny_model(video_position=position)
    assert "lasts" not in plain.prompt_text("what happens ?", times=times)
