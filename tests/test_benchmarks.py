import json
from pathlib import Path

import pytest

from stormvl.errors import BenchmarkFormatError
from stormvl.evaluation.readers import read_benchmark
from stormvl.processing import parse_letter

FIX = Path(__file__).parent / "fixtures"


def test_videomme():
    r = read_benchmark("videomme", FIX / "videomme.json")
    assert len(r) == 2
    assert r[0].video == "fFjv93ACGo8.mp4" and r[0].answer == "C" and r[0].options[2] == "Berries."
    assert r[0].task_type == "Counting Problem" and r[0].duration == "short" and r[0].id == "001-1"


def test_mlvu_official_folder_and_lmms_copy():
    r = read_benchmark("mlvu", FIX / "mlvu")
    assert [x.task_type for x in r] == ["plotQA", "count"]
    assert r[0].answer == "A" and r[1].answer == "D" and r[1].options == ["3", "5", "2", "4"]
    r2 = read_benchmark("mlvu", FIX / "mlvu_lmms.jsonl")
    assert r2[0].options == ["Yellow", "Red", "Green", "Blue"] and r2[0].answer == "A"
    assert r2[0].question == "What color is the main male character in the video?"


def test_longvideobench_both_option_layouts():
    r = read_benchmark("longvideobench", FIX / "longvideobench.json")
    assert r[0].answer == "B" and r[0].video == "86CxyhFV9MI.mp4" and r[0].subtitles == "86CxyhFV9MI_en.json"
    assert r[1].options == ["a", "b", "c", "d"] and r[1].answer == "D"  # "N/A" option dropped


def test_mvbench_subtask_paths():
    r = read_benchmark("mvbench", FIX / "mvbench")
    assert r[0].task_type == "action_sequence" and r[0].video == "action_sequence/ZS9XR.mp4" and r[0].answer == "A"


@pytest.mark.parametrize("name,content,msg", [
    ("videomme", [{"question": "q", "options": ["A. x"], "answer": "A"}], "no 'videoID' field"),
    ("videomme", [{"videoID": "v", "question": "q", "options": ["A. x", "B. y"], "answer": "E"}], "not an option letter"),
    ("longvideobench", [{"video_path": "v.mp4", "question": "q", "candidates": ["a"], "correct_choice": 4}], "out of range"),
    ("mvbench", [{"video": "v.mp4", "question": "q", "candidates": ["a", "b"], "answer": "c"}], "not one of its candidates"),
    ("videomme", {"foo": 1}, "expected a list"),
])
def test_malformed_files_name_file_and_field(tmp_path, name, content, msg):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(content))
    with pytest.raises(BenchmarkFormatError, match=msg) as e:
        read_benchmark(name, p)
    assert str(p) in str(e.value)


def test_unknown_benchmark_and_bad_json(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="unknown benchmark"):
        read_benchmark("egoschema2", FIX / "videomme.json")
    p = tmp_path / "x.json"
    p.write_text("{oops")
    with pytest.raises(BenchmarkFormatError, match="not valid JSON"):
        read_benchmark("videomme", p)


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("The answer is B", "B"), ("The answer is (C).", "C"),
    ("d) cat", "D"), ("Answer: A", "A"), ("  C  ", "C"), ("I think it is B, the cat", "B"), ("none", None),
])
def test_letter_parser(text, letter):
    assert parse_letter(text, 4) == letter


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
        args = ("Question?\nA. x\nB. y", {"until": ["\nUSER:"], "max_new_tokens": 4}, lambda doc: [doc["video"]], 7,
                "videomme", "test")

    assert m.generate_until([Req()]) == ["B. because /v/x.mp4"]


def test_lmms_eval_adapter_loglikelihood(tmp_path, tiny_tokenizer):
    import numpy as np
    import torch

    from stormvl import StormForConditionalGeneration, StormProcessor
    from stormvl.evaluation.lmms_eval_adapter import StormLMMS
    from stormvl.testing import TinySize, tiny_config
    from stormvl.video import load_video, write_video

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
    clip = load_video(tmp_path / "v.mp4", 8)
    ref = m.pipe.option_scores(clip, "what happens ?", ["red", "blue square"])
    assert [round(s, 5) for s, _ in got] == [round(float(s), 5) for s in ref]
    assert all(s < 0 and isinstance(g, bool) for s, g in got)
    # Greedy decoding of the open question gives the continuation flagged greedy (if either is).
    first = m.pipe.answer(clip, "what happens ?", max_new_tokens=4).text
    for (s, g), cont in zip(got, ["red", "blue square"]):
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
    from stormvl.testing import TinySize, tiny_config
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
    ll = [Instance("loglikelihood", ("what happens ?", c, visual, 0, "t", "test"), i, meta)
          for i, c in enumerate(["red", "blue square"])]
    [text] = model.generate_until([gen])
    assert isinstance(text, str) and text
    scores = model.loglikelihood(ll)
    assert len(scores) == 2 and all(s < 0 and isinstance(g, bool) for s, g in scores)
