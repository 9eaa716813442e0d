"""Conversion from the published video-instruction formats, each with every kind of bad record."""

import json
import os

import pytest

from stormvl.cli import main
from stormvl.data.dataset import read_training_samples
from stormvl.data.formats import convert
from stormvl.data.records import write_atomic, write_jsonl
from stormvl.errors import DataFormatError


@pytest.fixture
def media(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "b.mp4", "vid1.mp4"):
        (tmp_path / "v" / name).write_bytes(b"x")
    (tmp_path / "v" / "p.jpg").write_bytes(b"x")
    return tmp_path


def _llava(video="v/a.mp4", turns=None, key="video", **extra):
    turns = turns or [("human", "<image>\nWhat happens?"), ("gpt", "A ball rolls."), ("human", "Where?"),
                      ("gpt", "On a table.")]  # fmt: skip
    return {"id": "r", key: video, "conversations": [{"from": f, "value": v} for f, v in turns], **extra}


LLAVA_BAD = [
    (_llava(video="v/missing.mp4"), "does not exist"),
    (_llava(turns=[("human", "What happens?"), ("gpt", "x")]), "0 <video>/<image> placeholders"),
    (_llava(turns=[("human", "<video><video> q"), ("gpt", "x")]), "2 <video>/<image> placeholders"),
    (_llava(turns=[("human", "<image> q"), ("human", "q2")]), "turn 1 is the user's"),
    (_llava(turns=[("gpt", "<image> q"), ("human", "x")]), "turn 0 is the assistant's"),
    (_llava(turns=[("human", "<image> q")]), "has 1 turns"),
    (_llava(turns=[("human", "<image> q"), ("robot", "x")]), "turn 1 is from 'robot'"),
    (_llava(turns=[(["human"], "<image> q"), ("gpt", "x")]), "turn 0 is from ['human']"),
    (_llava(turns=[("human", "<image> q"), ("gpt", "")]), "turn 1's value must be a non-empty text"),
    (_llava(turns=[("human", "q"), ("gpt", "x"), ("human", "<image> q2"), ("gpt", "y")]), "first user turn"),
    ({"id": "r", "conversations": []}, "exactly one of 'video' or 'image'"),
    (_llava(video=["v/a.mp4", "v/b.mp4"]), "lists 2 videos"),
    ("just a string", "is a str"),
]


@pytest.mark.parametrize("fmt", ["llava-video", "llava-onevision", "vila"])
def test_llava_style_formats(media, fmt):
    good = [_llava(), _llava(video="p.jpg", key="image", turns=[("human", "<image>\nDescribe."), ("gpt", "A dog.")])]
    good[1]["image"] = "v/p.jpg"
    rows = good + [r for r, _ in LLAVA_BAD]
    (media / "d.json").write_text(json.dumps(rows))
    out = convert(fmt, media / "d.json")
    assert len(out.records) == 2 and len(out.problems) == len(LLAVA_BAD)
    for problem, (_, message) in zip(out.problems, LLAVA_BAD):
        assert message in problem and "d.json: record" in problem, (problem, message)
    assert out.records[0]["conversations"][2] == {"from": "human", "value": "Where?"}
    assert "image" in out.records[1]


def test_llamafactory_and_sharegpt4video(media):
    def lf(videos=("v/a.mp4",), msgs=None):
        msgs = msgs or [("user", "<video>Why is it funny?"), ("assistant", "The cat falls.")]
        return {"messages": [{"role": r, "content": c} for r, c in msgs], "videos": list(videos)}

    rows = [lf(), lf(videos=()), lf(videos=("v/a.mp4", "v/b.mp4")), lf(msgs=[("user", "<video>q"), ("user", "x")]),
            lf(msgs=[("user", "<video>q"), ("tool", "x")]), lf(videos=("v/none.mp4",))]  # fmt: skip
    (media / "lf.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    out = convert("llamafactory", media / "lf.jsonl")
    assert len(out.records) == 1 and len(out.problems) == 6
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in out.problems] == ["2", "3", "4", "5", "6", "7"]
    assert "not valid JSON" in out.problems[-1]

    s4v = [{"video_id": "vid1", "captions": [{"idx": "0", "content": "start"}, {"idx": "-1", "content": "All of it."}]},
           {"video_id": "vid1", "captions": [{"idx": "0", "content": "no whole caption"}]},
           {"video_id": "nope", "captions": [{"idx": "-1", "content": "x"}]}, {"captions": []}]  # fmt: skip
    (media / "s.jsonl").write_text("\n".join(json.dumps(r) for r in s4v))
    out = convert("sharegpt4video", media / "s.jsonl", video_root=media / "v")
    assert len(out.records) == 1 and out.records[0]["conversations"][1]["value"] == "All of it."
    assert ["idx -1" in out.problems[0], "does not exist" in out.problems[1], "'video_id'" in out.problems[2]] == [
        True, True, True]  # fmt: skip


def test_convert_data_cli_and_the_trainer_reads_the_result(media, capsys):
    rows = [_llava(), _llava(video="v/missing.mp4")]
    (media / "d.json").write_text(json.dumps(rows))
    out = media / "train.jsonl"
    assert main(["convert-data", "--from", "llava-video", str(media / "d.json"), str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "d.json: record 2: its video" in err and "wrote 1 record to" in err
    samples = read_training_samples([out])
    # One sample per reply; the second carries the first exchange as history, placeholders removed.
    assert [(s.question, s.answer) for s in samples] == [("What happens?", "A ball rolls."), ("Where?", "On a table.")]
    assert samples[1].history == (("What happens?", "A ball rolls."),)
    assert main(["convert-data", "--from", "llava-video", str(media / "d.json"), str(out)]) == 2  # never overwritten
    (media / "bad.json").write_text(json.dumps([rows[1]]))
    assert main(["convert-data", "--from", "vila", str(media / "bad.json"), str(media / "o.jsonl")]) == 2
    assert not (media / "o.jsonl").exists()


@pytest.mark.parametrize("output", ["", "sub/"])
def test_convert_data_refuses_an_output_that_names_no_file_and_leaves_nothing(media, capsys, monkeypatch, output):
    monkeypatch.chdir(media)
    (media / "d.json").write_text(json.dumps([_llava()]))
    before = sorted(os.listdir(media))
    assert main(["convert-data", "--from", "llava-video", "d.json", output]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a file name" in err, err
    assert sorted(os.listdir(media)) == before  # no temporary file left behind


def test_a_failed_atomic_write_removes_its_temporary_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \ud800\n")  # a lone surrogate fails halfway through the write
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["a.jsonl"]

    def rows():  # written piece by piece; the source fails after the first
        yield {"a": 1}
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        write_jsonl(path, rows())
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["a.jsonl"]
    write_jsonl(path, ({"i": i} for i in range(3)))
    assert path.read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    with pytest.raises(IsADirectoryError):  # the rename onto a folder fails
        write_jsonl(tmp_path, [{"a": 1}])
    assert not os.path.exists(f"{tmp_path}.tmp{os.getpid()}")


def test_the_trainer_skips_bad_records_and_says_how_many(media):
    (media / "d.json").write_text(json.dumps([_llava(), _llava(turns=[("human", "q"), ("gpt", "x")])]))
    with pytest.warns(UserWarning, match=r"skipped 1 bad training record.*d.json: record 2: has 0 <video>"):
        samples = read_training_samples([media / "d.json"])
    assert len(samples) == 2


def test_records_are_named_alike_in_json_lists_and_jsonl(media):
    """The trainer and convert-data name a bad record the same way: a JSON list's by its number
    from 1, a JSONL file's by its line; a line that is not JSON is a bad record, not a failed file."""
    rows = [_llava(), "not a record", _llava()]
    (media / "d.json").write_text(json.dumps(rows))
    (media / "d.jsonl").write_text(json.dumps(rows[0]) + "\n\n{oops\n" + json.dumps(rows[2]) + "\n")
    with pytest.warns(UserWarning, match=r"d.json: record 2: is a string, not an object"):
        assert len(read_training_samples([media / "d.json"])) == 4
    with pytest.warns(UserWarning, match=r"d.jsonl:3: not valid JSON"):
        assert len(read_training_samples([media / "d.jsonl"])) == 4
    bad = f"{media / 'd.json'}: record 2: is a string, not an object"
    assert convert("llava-video", media / "d.json").problems == [bad]
    assert convert("llava-video", media / "d.jsonl").problems[0].startswith(f"{media / 'd.jsonl'}:3: not valid JSON")
    (media / "one.json").write_text(json.dumps(rows[0], indent=1))
    with pytest.raises(DataFormatError, match=r"one.json: one JSON object, not a list of records"):
        read_training_samples([media / "one.json"])
    (media / "empty.jsonl").write_text(" \n")
    with pytest.raises(DataFormatError, match=r"empty.jsonl: empty file, no records"):
        read_training_samples([media / "d.json", media / "empty.jsonl"])
    # A byte-order mark (some editors write one) is not part of the first record.
    (media / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[:1]).encode())
    (media / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n")
    assert len(read_training_samples([media / "bom.json", media / "bom.jsonl"])) == 4
    assert convert("llava-video", media / "bom.jsonl").problems == []
    # A file of nothing but bad records is the wrong file or format, even beside good ones.
    (media / "bad.jsonl").write_text('{oops\n"a string"\n7\nnull\n')
    with pytest.raises(
        DataFormatError, match=r"bad.jsonl: no usable training record \(4 bad; the first: .*bad.jsonl:1: not"
    ):
        read_training_samples([media / "d.json", media / "bad.jsonl"])
    assert [p.split(": ", 1)[1] for p in convert("llava-video", media / "bad.jsonl").problems][1:] == [
        "is a string, not an object", "is a number, not an object", "is null, not an object"]  # fmt: skip
    # Text in another encoding is named by its first bad line.
    (media / "latin.jsonl").write_bytes(
        json.dumps(rows[0]).encode() + b"\n" + '{"video": "caf\u00e9"}'.encode("latin-1")
    )
    with pytest.raises(DataFormatError, match=r"latin.jsonl:2: not UTF-8 text"):
        read_training_samples([media / "latin.jsonl"])
