import numpy as np
import torch

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)


def test_option_ranking_matches_separate_forward_passes(tiny_model):
    """The likelihood choice mode shares one video encoding across options; the scores must be
    those of scoring each option with its own full forward pass (float64)."""
    from stormvl.pipeline import StormPipeline
    from stormvl.video import VideoClip

    model, proc = tiny_model(temporal_pool=2, choice_mode="likelihood", video_position="after")
    model.double()
    clip = VideoClip(frames=FRAMES, timestamps=np.arange(8) / 4.0, indices=np.arange(8), info=None)
    options = ["red", "blue square", "green", "four"]
    pipe = StormPipeline(model, proc)
    scores = pipe.option_scores(clip, "what happens ?", options)
    ref = []
    for opt in options:
        b = proc([FRAMES], [proc.prompt_text("what happens ?")], answers=[opt])
        b["pixel_values_videos"] = b["pixel_values_videos"].double()
        with torch.no_grad():
            logp = model(**b).logits[0, :-1].log_softmax(-1)
        lab = b["labels"][0, 1:]
        ref.append(sum(logp[i, t] for i, t in enumerate(lab.tolist()) if t != -100))
    torch.testing.assert_close(scores.double(), torch.stack(ref), rtol=1e-9, atol=1e-9)
    ans = pipe.answer(clip, "what happens ?", options)
    best = int(torch.stack(ref).argmax())
    assert ans.letter == "ABCD"[best] and ans.text == f"{'ABCD'[best]}. {options[best]}"
