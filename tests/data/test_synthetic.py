import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stormvl.data.records import MCRecord, read_jsonl
from stormvl.data.synthetic import BG, COLORS, TASKS, generate_split, make_sample
from stormvl.video import load_video


def _centroid(frame, color):
    m = np.all(np.abs(frame.astype(int) - np.array(COLORS[color])) < 40, axis=-1)
    if m.sum() < 4:
        return None
    ys, xs = np.nonzero(m)
    return xs.mean(), ys.mean()


def _visible(frame):
    return (np.abs(frame.astype(int) - np.array(BG)).sum(-1) > 60).sum() > 4


@pytest.mark.parametrize("seed", range(6))
def test_ground_truth_matches_rendered_frames(seed):
    rng = random.Random(seed)
    for task in TASKS:
        f, q, opts, ans, truth = make_sample(rng, task, 16)
        assert f.shape == (16, 64, 64, 3) and len(opts) == 4 and len(set(opts)) == 4
        assert ans in "ABCD"
        correct = opts["ABCD".index(ans)]
        if task == "direction":
            color = q.split()[4]
            (x0, y0), (x1, y1) = _centroid(f[0], color), _centroid(f[-1], color)
            dx, dy = x1 - x0, y1 - y0
            seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert seen == truth["direction"] == correct
        elif task == "count":
            on = [_visible(fr) for fr in f]
            flashes = sum(1 for t in range(16) if on[t] and (t == 0 or not on[t - 1]))
            assert flashes == truth["count"] and correct == ["one", "two", "three", "four"][flashes - 1]
        elif task == "order":
            c1 = truth["first"].split()[0]
            c2 = truth["second"].split()[0]
            first1 = min(t for t in range(16) if _centroid(f[t], c1) is not None)
            first2 = min(t for t in range(16) if _centroid(f[t], c2) is not None)
            assert first1 < first2 and correct == truth["first"]
        elif task == "state":
            assert _centroid(f[0], truth["start"]) is not None and _centroid(f[-1], truth["end"]) is not None
            assert correct == (truth["start"] if "start" in q else truth["end"])
        elif task == "recall":
            assert correct == truth["first"] and _visible(f[0])


def test_split_is_deterministic_and_balanced(tmp_path):
    a = generate_split(tmp_path / "a", 10, frames=8, seed=3)
    b = generate_split(tmp_path / "b", 10, frames=8, seed=3)
    assert [r.to_json() for r in a] == [r.to_json() for r in b]
    assert [r.task_type for r in a] == TASKS * 2
    rows = [MCRecord.from_json(r) for r in read_jsonl(tmp_path / "a" / "annotations.jsonl")]
    assert rows == a
    clip = load_video(tmp_path / "a" / rows[0].video, 8)
    assert clip.frames.shape == (8, 64, 64, 3)
    with pytest.raises(ValueError, match="at least 8 frames"):
        generate_split(tmp_path / "c", 2, frames=4)


def test_worker_processes_write_the_same_split(tmp_path):
    one = generate_split(tmp_path / "one", 7, frames=8, seed=5)
    two = generate_split(tmp_path / "two", 7, frames=8, seed=5, workers=2)
    assert one == two
    for r in one:
        assert (tmp_path / "one" / r.video).read_bytes() == (tmp_path / "two" / r.video).read_bytes()
    assert (tmp_path / "one" / "captions.jsonl").read_text() == (tmp_path / "two" / "captions.jsonl").read_text()


def _stat(pid) -> tuple[str, int] | None:
    """A process's state and parent pid, from /proc (Linux); None once it is gone."""
    try:
        state, ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return state, int(ppid)


def _running(pid) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # a zombie has exited; only its exit status waits


def _descendants(pid: int) -> list[int]:
    parents = {int(d): (_stat(d) or ("", 0))[1] for d in os.listdir("/proc") if d.isdigit()}
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_synth_workers_die_with_a_killed_parent(tmp_path):
    argv = [sys.executable, "-m", "stormvl.cli", "synth", "--out", str(tmp_path), "--num", "400", "--frames", "64",
            "--workers", "2"]  # fmt: skip
    parent = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        workers = []
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.05)
            workers = _descendants(parent.pid)  # forked workers, or a forkserver and its workers
        assert len(workers) >= 2
    finally:
        parent.kill()  # SIGKILL: none of its own cleanup runs
        parent.wait()
    deadline = time.time() + 5
    while any(map(_running, workers)) and time.time() < deadline:
        time.sleep(0.05)
    orphans = [w for w in workers if _running(w)]
    for w in orphans:  # cleaned up before the test fails
        os.kill(w, signal.SIGKILL)
    assert not orphans, "synth's worker processes outlived their killed parent"


def test_captions_describe_the_ground_truth(tmp_path):
    records = generate_split(tmp_path, 10, frames=16, seed=11, write_videos=False)
    rows = [json.loads(x) for x in open(tmp_path / "captions.jsonl")]
    assert [r["id"] for r in rows] == [r.id for r in records]
    for rec, row in zip(records, rows):
        human, gpt = row["conversations"]
        assert human["value"] == "<video>\nDescribe the video." and row["video"] == rec.video
        t, cap = rec.extra["truth"], gpt["value"]
        want = {
            "direction": lambda: cap.endswith(f"moves {t['direction']}") and rec.question.split()[4] in cap,
            "order": lambda: cap == f"the {t['first']} appears then the {t['second']}",
            "count": lambda: cap.endswith(f"flashes {['one', 'two', 'three', 'four'][t['count'] - 1]} times"),
            "state": lambda: cap.endswith(f"is {t['start']} then {t['end']}"),
            "recall": lambda: cap == f"the {t['first']} is shown first",
        }[rec.task_type]
        assert want(), (rec.task_type, cap, t)


def test_rerun_with_other_settings_never_reuses_a_mismatched_clip(tmp_path):
    from stormvl.video import probe

    a = generate_split(tmp_path, 2, frames=8, seed=3, tasks=["direction"])
    b = generate_split(tmp_path, 2, frames=16, seed=3, tasks=["count"])
    assert {r.video for r in a}.isdisjoint({r.video for r in b})
    assert all(probe(tmp_path / r.video).num_frames == 16 for r in b)


def test_synth_cli_resumes_its_own_split_and_refuses_to_replace_another(tmp_path, capsys):
    from stormvl.cli import main

    out = tmp_path / "s"
    argv = ["synth", "--out", str(out), "--num", "2", "--frames", "8"]
    assert main(argv) == 0
    first = (out / "annotations.jsonl").read_bytes()
    (out / "annotations.jsonl").unlink()  # as if interrupted before the last file
    assert main(argv) == 0  # the same settings again: that split, completed
    assert (out / "annotations.jsonl").read_bytes() == first
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a split of other settings (seed: see synth.json)" in err, err
    assert (out / "annotations.jsonl").read_bytes() == first
    # A synth.json synth did not write is someone's file: refused, unchanged, with or without annotations.
    for i, text in enumerate(('{"num": "x"}', "{}", "[]", "not json")):
        other = tmp_path / f"other{i}"
        other.mkdir()
        (other / "synth.json").write_text(text)
        assert main(["synth", "--out", str(other), "--num", "2", "--frames", "8"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not the settings of a synth split" in err, err
        assert (other / "synth.json").read_text() == text and not (other / "annotations.jsonl").exists()


@pytest.mark.parametrize("seed", range(4))
def test_when_clips_show_the_shape_from_the_answered_second(seed):
    from stormvl.data.synthetic import FPS, WHEN_LENGTHS, option_seconds

    rng = random.Random(seed)
    lengths = set()
    for _ in range(12):
        f, q, opts, ans, truth = make_sample(rng, "when", 16)
        k = len(f) // 16
        assert len(f) == 16 * k and k in WHEN_LENGTHS and truth["duration"] == len(f) / FPS
        lengths.add(k)
        on = [_visible(fr) for fr in f]
        first = on.index(True)
        assert not any(on[:first]) and all(on[first:])  # appears once and stays
        assert option_seconds(opts["ABCD".index(ans)]) == truth["seconds"] == first / FPS
        assert len(set(opts)) == 4 and q.startswith("At what second does the")
        # Every option is the same fraction of a clip of another length: the frames cannot tell.
        fractions = {
            round(option_seconds(o) / (16 * j / FPS), 6) for o, j in zip(sorted(opts, key=option_seconds), WHEN_LENGTHS)
        }
        assert fractions == {round(first / len(f), 6)}
    assert len(lengths) > 1  # clip lengths vary, so frame positions alone cannot tell the second


def test_when_split_records_each_clips_own_duration(tmp_path):
    from stormvl.video import probe

    recs = generate_split(tmp_path, 6, frames=8, seed=1, tasks=["when"])
    for r in recs:
        info = probe(tmp_path / r.video)
        assert r.duration == r.extra["truth"]["duration"] == pytest.approx(info.duration, abs=1e-6)
        assert info.num_frames == round(r.duration * 8)
    with pytest.raises(ValueError, match="unknown task type"):
        generate_split(tmp_path / "x", 2, tasks=["sometime"])
