import json

from stormvl.data.synthetic import generate_split
from stormvl.evaluation.readers import read_benchmark
from stormvl.evaluation.runner import evaluate, merge


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
