import pytest


def test_lmms_eval_adapter_on_request_tuples(monkeypatch):
    from stormvl.evaluation import lmms_eval_adapter as mod

    class FakePipe:
        def answer(self, video, question, num_frames=None, temporal_sample=None, max_new_tokens=32):
            class A:
                text = f"B. because {video}\nUSER: more"

            return A()

    monkeypatch.setattr("stormvl.pipeline.load", lambda *a, **k: FakePipe())
    m = mod.StormLMMS(pretrained="unused")
    m.task_dict = {"videomme": {"test": {7: {"video": "/v/x.mp4"}}}}

    class Req:
        args = (
            "Question?\nA. x\nB. y",
            {"until": ["\nUSER:"], "max_new_tokens": 4},
            lambda doc: [doc["video"]],
            7,
            "videomme",
            "test",
        )

    assert m.generate_until([Req()]) == ["B. because /v/x.mp4"]


def test_lmms_eval_adapter_loglikelihood(tmp_path, tiny_tokenizer):
    import numpy as np
    import torch

    from stormvl import StormForConditionalGeneration, StormProcessor
    from stormvl.evaluation.lmms_eval_adapter import StormLMMS
    from stormvl.testing import tiny_config
    from stormvl.video import write_video

    torch.manual_seed(0)
    cfg = tiny_config(tiny_tokenizer, temporal_pool=2, num_frames=8)
    StormForConditionalGeneration(cfg).save_pretrained(tmp_path / "m")
    StormProcessor(tiny_tokenizer, cfg).save_pretrained(tmp_path / "m")
    frames = np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mp4", frames, fps=4)
    m = StormLMMS(pretrained=str(tmp_path / "m"))
    m.task_dict = {"t": {"test": {0: {"video": str(tmp_path / "v.mp4")}}}}

    class Req:
        def __init__(self, cont):
            self.args = ("what happens ?", cont, lambda doc: [doc["video"]], 0, "t", "test")

    got = m.loglikelihood([Req("red"), Req("blue square")])
    # By hand: log p(continuation) = sum over its tokens (and the end of the answer) of the log
    # probability of that token after the prompt, the video and the tokens before it, each from
    # its own forward pass on the growing prefix.
    pipe, tok = m.pipe, m.pipe.processor.tokenizer
    clip = pipe.load_clip(tmp_path / "v.mp4", 8)
    prompt = pipe.processor.prompt_text("what happens ?")
    for (score, _), cont in zip(got, ["red", "blue square"]):
        answer = tok(" " + cont, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        want = 0.0
        for i, token in enumerate(answer):
            batch = pipe.processor([clip.frames], [prompt + tok.decode(answer[:i])])
            with torch.no_grad():
                logits = pipe.model(**batch).logits[0, -1].double()
            want += float(logits.log_softmax(-1)[token])
        assert abs(score - want) < 1e-4, (cont, score, want)
    assert all(s < 0 and isinstance(g, bool) for s, g in got)
    # Greedy decoding of the open question gives the continuation flagged greedy (if either is).
    first = m.pipe.answer(clip, "what happens ?", max_new_tokens=4).text
    for (_, g), cont in zip(got, ["red", "blue square"]):
        assert g == (first == cont)


def test_lmms_eval_resolves_and_runs_the_adapter(tmp_path, tiny_tokenizer):
    """Against the real lmms-eval (skipped where it is not installed; its full install needs
    torchvision, which pulls a CUDA torch, so CI does not have it): the entry point makes
    "stormvl" resolvable by lmms-eval's model registry, the class is a real `lmms`, and real
    `Instance` requests get answers."""
    pytest.importorskip("lmms_eval.api.model")
    import numpy as np
    import torch
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from stormvl import StormForConditionalGeneration, StormProcessor
    from stormvl.testing import tiny_config
    from stormvl.video import write_video

    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    cls = registry.get_model_class("stormvl")
    assert issubclass(cls, lmms)

    torch.manual_seed(0)
    cfg = tiny_config(tiny_tokenizer, temporal_pool=2, num_frames=8)
    StormForConditionalGeneration(cfg).save_pretrained(tmp_path / "m")
    StormProcessor(tiny_tokenizer, cfg).save_pretrained(tmp_path / "m")
    write_video(tmp_path / "v.mp4", np.random.default_rng(1).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=4)
    model = cls.create_from_arg_string(f"pretrained={tmp_path / 'm'},num_frames=8")
    model.task_dict = {"t": {"test": {0: {"video": str(tmp_path / "v.mp4")}}}}
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    visual = lambda doc: [doc["video"]]  # noqa: E731
    gen = Instance("generate_until", ("what happens ?", {"max_new_tokens": 3}, visual, 0, "t", "test"), 0, meta)
    ll = [
        Instance("loglikelihood", ("what happens ?", c, visual, 0, "t", "test"), i, meta)
        for i, c in enumerate(["red", "blue square"])
    ]
    [text] = model.generate_until([gen])
    assert isinstance(text, str) and text
    scores = model.loglikelihood(ll)
    assert len(scores) == 2 and all(s < 0 and isinstance(g, bool) for s, g in scores)
