import json
from pathlib import Path

import pytest

from stormvl.errors import BenchmarkFormatError
from stormvl.evaluation.readers import read_benchmark

FIX = Path(__file__).parents[1] / "fixtures"


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


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("videomme", [{"question": "q", "options": ["A. x"], "answer": "A"}], "record 1 has no 'videoID' field"),
        (
            "videomme",
            [{"videoID": "v", "question": "q", "options": ["A. x", "B. y"], "answer": "E"}],
            "not an option letter",
        ),
        (
            "longvideobench",
            [{"video_path": "v.mp4", "question": "q", "candidates": ["a"], "correct_choice": 4}],
            "out of range",
        ),
        (
            "mvbench",
            [
                {"video": "v.mp4", "question": "q", "candidates": ["a", "b"], "answer": "a"},
                {"video": "v.mp4", "question": "q", "candidates": ["a", "b"], "answer": "c"},
            ],
            "record 2: answer 'c' is not one of its candidates",
        ),
        ("videomme", {"foo": 1}, "expected a list"),
    ],
)
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
