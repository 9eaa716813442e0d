import json
import os
import subprocess
import sys

import pytest

from stormvl.cli import main
from stormvl.data.synthetic import FPS, blank_frames, draw, generate_split
from stormvl.video import write_video


def _moving_clip(path, direction, color="green", shape="circle"):
    f = blank_frames(16)
    for t in range(16):
        p = 12 + 40 * t / 15
        pos = {"right": (p, 32), "left": (64 - p, 32), "down": (32, p), "up": (32, 64 - p)}[direction]
        draw(f[t], shape, color, *pos)
    write_video(path, f, fps=FPS)
    return path


def _eval_argv(annotations, out, *extra):
    """`stormvl eval` on a synthetic split, quietly."""
    return ["eval", "--benchmark", "synthetic", "--annotations", str(annotations), "--out", str(out), "--no-progress",
            *extra]  # fmt: skip


def _tokens(frames, sample=None):
    from stormvl import StormConfig
    from stormvl.pipeline import DEFAULT_MODEL

    return StormConfig.from_pretrained(DEFAULT_MODEL).tokens_per_video(frames, sample)


@pytest.mark.slow
def test_bench_cli_writes_outputs(tmp_path):
    base = "bench --size tiny --frames 8 --repeats 1 --warmup 0 --settings storm+tpool4".split()
    for layers in ("1", "2"):
        out = tmp_path / layers
        assert main([*base, "--temporal-layers", layers, "--video", "examples/clip.mp4", "--out", str(out)]) == 0
    one, two = (json.load(open(tmp_path / n / "bench.json")) for n in ("1", "2"))
    assert {r["setting"] for r in one["rows"]} == {"baseline", "storm+tpool4"}
    storm1, storm2 = (next(r for r in d["rows"] if r["setting"] == "storm+tpool4") for d in (one, two))
    assert storm2["gflops"]["temporal"] == pytest.approx(2 * storm1["gflops"]["temporal"], rel=0.02)
    assert storm1["end_to_end_s"] == pytest.approx(storm1["decode_s"] + storm1["answer_s"], abs=2e-4)
    assert (tmp_path / "1" / "bench.md").read_text().startswith("| frames")
    assert "end-to-end s" in (tmp_path / "1" / "bench.md").read_text()


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_answer_with_embedded_model(tmp_path, capsys, direction):
    clip = _moving_clip(tmp_path / "clip.mp4", direction)
    options = ["up", "left", "down", "right"]
    rc = main(["answer", str(clip), "Which direction does the green circle move?", "--options", *options, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["letter"] == "ABCD"[options.index(direction)], out
    assert out["num_frames"] == 16 and out["visual_tokens"] == _tokens(16)


@pytest.mark.slow
def test_embedded_model_answers_fresh_synthetic_questions(tmp_path, capsys):
    # A seed used neither for training (1000) nor for the held-out report (4242).
    generate_split(tmp_path / "split", 20, frames=16, seed=777)
    assert main(_eval_argv(str(tmp_path / "split" / "annotations.jsonl"), str(tmp_path / "o"))) == 0
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert s["answered"] == 20 and s["settings"]["choice_mode"] == "likelihood"
    assert s["overall"] >= 80, s["per_task"]


@pytest.mark.parametrize("direction", ["left", "up"])
def test_answer_text_output_and_temporal_sampling(tmp_path, capsys, direction):
    """32 frames sampled every 2nd after the encoder: the LLM reads the 16-frame token count the
    model was trained on, and still names the motion, open-ended and as a choice."""
    clip = _moving_clip(tmp_path / "clip.mp4", direction)
    q = "Which direction does the green circle move?"
    assert main(["answer", str(clip), q, "--frames", "32", "--temporal-sample", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_frames"] == 32 and out["visual_tokens"] == _tokens(32, 2) == _tokens(16)
    assert out["answer"] == direction and not out["uncertain"]
    options = ["left", "right", "up", "down"]
    assert main(["answer", str(clip), q, "--frames", "32", "--temporal-sample", "2", "--options", *options]) == 0
    letter = "ABCD"[options.index(direction)]
    assert capsys.readouterr().out.strip() == f"{letter}. {direction}"


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(tmp_path, audio_only_file):
    good = _moving_clip(tmp_path / "good.mp4", "up")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    data = good.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    cases = [
        (tmp_path / "missing.mp4", "no such file"),
        (tmp_path / "empty.mp4", "empty"),
        (tmp_path / "text.mp4", "not a readable video"),
        (tmp_path / "trunc.mp4", "not a readable video"),
        (audio_only_file, "audio-only"),
    ]
    for path, msg in cases:
        r = subprocess.run(
            [sys.executable, "-m", "stormvl.cli", "answer", str(path), "What happens?"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 2, (path, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0] and str(path) in lines[0], r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "stormvl.cli", "answer", str(good), "q", "--frames", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "num_frames" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_eval_resume_and_two_process_merge(tmp_path):
    generate_split(tmp_path / "split", 10, frames=16, seed=99)
    ann = str(tmp_path / "split" / "annotations.jsonl")
    out1 = tmp_path / "one"
    assert main(_eval_argv(ann, str(out1), "--limit", "6")) == 0
    assert len(open(out1 / "predictions.jsonl").readlines()) == 6
    # Resume: the rerun answers only the 4 new questions and keeps the 6 done ones.
    before = open(out1 / "predictions.rank0.jsonl").read()
    assert main(_eval_argv(ann, str(out1))) == 0
    after = open(out1 / "predictions.rank0.jsonl").read()
    assert after.startswith(before) and len(after.splitlines()) == 10
    s1 = json.load(open(out1 / "summary.json"))
    out2 = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            "-m",
            "stormvl.cli",
            *_eval_argv(ann, str(out2)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s2 = json.load(open(out2 / "summary.json"))
    assert s2["per_task"] == s1["per_task"] and s2["overall"] == s1["overall"]
    assert s2["settings"]["processes"] == 2 and s2["answered"] == 10
    assert [json.loads(x)["id"] for x in open(out2 / "predictions.jsonl")] == [
        json.loads(x)["id"] for x in open(out1 / "predictions.jsonl")
    ]


def test_eval_skips_missing_videos(tmp_path):
    generate_split(tmp_path / "split", 3, frames=16, seed=98)
    os.remove(next((tmp_path / "split" / "videos").glob("s98_000001_*.mp4")))
    assert main(_eval_argv(str(tmp_path / "split" / "annotations.jsonl"), str(tmp_path / "o"))) == 0
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert s["answered"] == 2 and s["skipped"] == 1


def test_unknown_benchmark_exits_2(tmp_path, capsys):
    (tmp_path / "a.json").write_text("[]")
    assert (
        main(["eval", "--benchmark", "kinetics", "--annotations", str(tmp_path / "a.json"), "--out", str(tmp_path)])
        == 2
    )
    assert "unknown benchmark" in capsys.readouterr().err


def _train_config(tmp_path, **over):
    cfg = {"data": {"train": ["a.jsonl"]}, "model": {"init": "tiny", "tiny": {}, "storm": {}}, "stages": [{}]}
    for path, value in over.items():
        *parents, key = path.split(".")
        node = cfg
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[key] = value
    p = tmp_path / "train.json"
    p.write_text(json.dumps(cfg))
    return p


@pytest.mark.parametrize(
    "path,key",
    [
        ("optimiser", "optimiser"),
        ("data.shuffle", "shuffle"),
        ("model.vision", "vision"),
        ("model.tiny.hiden", "hiden"),
        ("model.storm.temporal_pol", "temporal_pol"),
        ("stages.0.lrate", "lrate"),
    ],
)
def test_unknown_training_config_key_at_any_depth_exits_2(tmp_path, capsys, path, key):
    assert main(["train", str(_train_config(tmp_path, **{path: 1}))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unknown key(s) ['{key}']" in err[0], err


def test_wrong_value_type_in_training_config_exits_2(tmp_path, capsys):
    assert main(["train", str(_train_config(tmp_path, **{"stages.0.steps": "ten"}))]) == 2
    assert "stages[0].steps: expected int, got 'ten'" in capsys.readouterr().err


def test_every_verb_reports_user_errors_in_one_line(tmp_path, capsys):
    clip = _moving_clip(tmp_path / "clip.mp4", "up")
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (["answer", str(tmp_path / "missing.mp4"), "q"], "no such file"),
        (["answer", str(clip), "q", "--model", str(tmp_path / "nomodel")], "model folder not found"),
        (["answer", str(clip), "q", "--model", str(tmp_path)], "no config.json"),
        (["synth", "--out", str(tmp_path / "s"), "--tasks", "juggling"], "unknown task type"),
        (["train", str(tmp_path / "missing.yaml")], "no such config file"),
        (
            ["eval", "--benchmark", "nope", "--annotations", str(tmp_path / "notes.txt"), "--out", "o"],
            "unknown benchmark",
        ),
        (
            ["eval", "--benchmark", "mlvu", "--annotations", str(tmp_path / "none.json"), "--out", "o"],
            "no such annotation",
        ),
        (["bench", "--settings", "nope", "--out", str(tmp_path / "b")], "unknown setting"),
        (["bench", "--frames", "8", "--out", str(tmp_path / "notes.txt")], "exists and is not a folder"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stormvl: error: ") and msg in err[0], (argv, err)


@pytest.mark.slow
def test_internal_bugs_keep_their_traceback(tmp_path, monkeypatch):
    import stormvl.cli as cli

    def broken(_):
        raise ValueError("a bug, not the user's fault")

    monkeypatch.setattr(cli, "cmd_synth", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["synth", "--out", str(tmp_path)])
    # As a process: exit status 1 and Python's traceback, not the one-line user error.
    code = (
        "import sys, stormvl.cli as c\n"
        "def f(_): raise ValueError('boom')\n"
        "c.cmd_synth = f\n"
        "sys.exit(c.main(['synth', '--out', 'x']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ValueError: boom" in r.stderr


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = "import sys, stormvl, stormvl.cli\nstormvl.cli.build_parser().format_help()\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


def test_unknown_words_and_ties_are_flagged_not_hidden(capsys):
    q = "What animal appears in the video?"
    picks = []
    for options in (["dog", "cat", "rabbit", "bird"], ["bird", "rabbit", "cat", "dog"]):
        assert main(["answer", "examples/clip.mp4", q, "--options", *options, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["uncertain"] is True
        assert any("does not know these words" in w and "dog (option" in w for w in out["warnings"])
        assert any("indistinguishable" in w and "comes first" in w for w in out["warnings"])
        picks.append(out["answer"])
    assert picks == ["A. dog", "A. bird"]  # a position-made pick, which the flag above owns up to
    assert main(["answer", "examples/clip.mp4", "Which direction does the red square move?", "--options",
                 "left", "right", "up", "down"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out.strip() == "B. right" and "warning" not in captured.err


def test_a_cut_off_video_makes_the_answer_uncertain(tmp_path, capsys):
    f = blank_frames(48)
    for t in range(48):
        draw(f[t], "circle", "green", 12 + 40 * t / 47, 32)
    full = write_video(tmp_path / "full.mp4", f, fps=FPS, faststart=True)  # index first: a cut still opens
    data = open(full, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 7 // 10])  # about the first 2 s of 6 s decode
    assert main(["answer", str(tmp_path / "cut.mp4"), "Which direction does the green circle move?", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["uncertain"] and any("decode; sampled within them" in w for w in out["warnings"])
    assert max(out["timestamps"]) < 48 / FPS * 0.75
    assert captured.err.count("decode; sampled within them") == 1  # said once, not twice


def test_answer_batch_file_equals_single_answers(tmp_path, capsys):
    clips = {d: _moving_clip(tmp_path / f"{d}.mp4", d, "red", "square") for d in ("left", "up")}
    q = "Which direction does the red square move?"
    rows = [{"video": "left.mp4", "question": q, "options": ["left", "right", "up", "down"]},
            {"video": str(clips["up"]), "question": q, "options": ["left", "right", "up", "down"]},
            {"video": "up.mp4", "question": "What happens in the video?"}]  # fmt: skip
    # Saved with a byte-order mark, as some editors do: the mark is not part of the first line.
    (tmp_path / "q.jsonl").write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    assert main(["answer", "--batch", str(tmp_path / "q.jsonl"), "--out", str(out), "--batch-size", "2"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    for r, g in zip(rows, got):
        argv = ["answer", str(tmp_path / r["video"]), r["question"], "--json"]
        assert main(argv + (["--options", *r["options"]] if "options" in r else [])) == 0
        single = json.loads(capsys.readouterr().out)
        assert g["answer"] == single["answer"] and g["visual_tokens"] == single["visual_tokens"]
    assert [g["letter"] for g in got[:2]] == ["A", "C"]


@pytest.mark.slow
def test_chat_answers_each_line_and_keeps_the_video(tmp_path):
    clip = _moving_clip(tmp_path / "right.mp4", "right", "red", "square")
    lines = "What happens in the video?\nWhich direction does the red square move? || left | right | up | down\n"
    r = subprocess.run([sys.executable, "-m", "stormvl.cli", "chat", str(clip)], input=lines, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    replies = r.stdout.strip().splitlines()
    assert len(replies) == 2 and replies[1] == "B. right"
    assert "encoded once" in r.stderr
