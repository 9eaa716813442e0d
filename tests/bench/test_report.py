import json
import os
from pathlib import Path

import pytest

from stormvl.bench.report import write_outputs

ROWS = [{"frames": 8, "setting": "baseline", "llm_visual_tokens": 32, "skipped": "too slow"}]


def test_a_rerun_moves_the_earlier_results_aside_instead_of_replacing_them(tmp_path):
    write_outputs(ROWS, tmp_path, {"run": 1})
    first = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    assert {"bench.json", "bench.md"} <= set(first)
    write_outputs(ROWS, tmp_path, {"run": 2})
    [kept] = (tmp_path / "previous").iterdir()
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == first
    assert json.loads((tmp_path / "bench.json").read_text())["meta"] == {"run": 2}
    again = Path(write_outputs(ROWS, tmp_path, {"run": 3})[2])  # in the same second: a folder of its own
    assert len(os.listdir(tmp_path / "previous")) == 2
    assert json.loads((again / "bench.json").read_text()) == {"meta": {"run": 2}, "rows": ROWS}


def test_bench_md_is_written_whole_or_not_at_all(tmp_path):
    rows = [{**ROWS[0], "setting": "bad \ud800"}]  # a lone surrogate: the write fails halfway
    with pytest.raises(UnicodeEncodeError):
        write_outputs(rows, tmp_path, {})
    assert os.listdir(tmp_path) == ["bench.json"]  # no empty bench.md, no temporary file
