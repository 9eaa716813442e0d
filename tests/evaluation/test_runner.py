import json

import pytest

from stormvl.data.records import MCRecord
from stormvl.data.synthetic import generate_split
from stormvl.errors import InputError
from stormvl.evaluation.readers import read_benchmark
from stormvl.evaluation.runner import check_resume, evaluate, merge


def test_resume_repairs_a_half_written_line(tmp_path):
    import stormvl

    generate_split(tmp_path / "split", 3, frames=16, seed=11)
    records = read_benchmark("synthetic", tmp_path / "split" / "annotations.jsonl")
    pipe = stormvl.load()
    out = tmp_path / "out"
    evaluate(pipe, records[:1], out, video_root=tmp_path / "split", progress=False)
    shard = out / "predictions.rank0.jsonl"
    first = shard.read_text()
    with open(shard, "a") as f:  # the interrupted run died while writing its second row
        f.write('{"id": "' + records[1].id + '", "status": "o')
    evaluate(pipe, records, out, video_root=tmp_path / "split", progress=False)
    rows = [json.loads(line) for line in shard.read_text().splitlines()]  # every line parses
    assert shard.read_text().startswith(first)
    assert [r["id"] for r in rows] == [r.id for r in records]  # the cut row ran again, once
    summary = merge(out, records, {})
    assert summary["answered"] == 3 and summary["skipped"] == 0 and summary["uncertain"] == 0


NOT_ROWS = {
    "a number": b"5",
    "an id that is a list": b'{"id": ["q0"], "status": "ok"}',
    "no status": b'{"id": "q0"}',
    "an answer without its result": b'{"id": "q0", "status": "ok"}',
    "not UTF-8": b'{"id": "caf\xe9", "status": "skipped", "error": "x"}',
}


@pytest.mark.parametrize("line", NOT_ROWS.values(), ids=NOT_ROWS.keys())
def test_resume_and_merge_refuse_a_shard_line_that_is_not_a_row(tmp_path, line):
    records = [MCRecord(id="q0", video="v.mp4", question="q", options=["a", "b"], answer="A")]
    ok = {"id": "q0", "task_type": "", "answer": "A", "status": "ok", "correct": True, "seconds": 0.1}
    shard = tmp_path / "predictions.rank0.jsonl"
    shard.write_bytes(json.dumps(ok).encode() + b"\n" + line + b"\n")
    before = shard.read_bytes()
    # Both read the shards before anything else (evaluate before it touches the model).
    for run in (lambda: evaluate(None, records, tmp_path, progress=False), lambda: merge(tmp_path, records, {})):
        with pytest.raises(InputError, match=r"predictions\.rank0\.jsonl(:2)?: not"):
            run()
    assert shard.read_bytes() == before and not (tmp_path / "summary.json").exists()


def test_a_run_json_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "run.json").write_bytes(b'{"model": "caf\xe9"}')
    with pytest.raises(InputError, match="run.json: unreadable"):
        check_resume(tmp_path, {"model": "m"})
