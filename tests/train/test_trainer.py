import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stormvl.data.synthetic import generate_split
from stormvl.train.config import load_train_config
from stormvl.train.trainer import Trainer, train

pytestmark = pytest.mark.slow  # every test here trains

TINY = {"hidden": 32, "llm_layers": 1, "vision_hidden": 16, "vision_layers": 1, "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    generate_split(d, 12, frames=8, seed=5)
    return d


def _config(tmp_path, split, **over):
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "data": {"train": [str(split / "annotations.jsonl")], "num_frames": 8, "open_ended_ratio": 0.5},
        "model": {"init": "tiny", "tiny": TINY, "storm": {"temporal_pool": 2, "mamba_head_dim": 16}},
        "stages": [
            {"name": "align", "train": "projector", "steps": 3, "lr": 3e-3, "data": [str(split / "captions.jsonl")]},
            {"name": "sft", "train": "all", "steps": 5, "lr": 3e-3},
        ],
        "batch_size": 4,
        "save_every": 2,
        "warmup_steps": 1,
    }
    for k, v in over.items():
        cfg[k] = v
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


def test_loss_falls_and_stages_freeze(tmp_path, split):
    cfg = load_train_config(_config(tmp_path, split, stages=[{"name": "sft", "steps": 40, "lr": 3e-3}]))
    cfg.data.open_ended_ratio = 0.0
    final = train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert sum(losses[-2:]) / 2 < 0.7 * losses[0]
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()


def test_stages_read_their_own_data(tmp_path, split):
    t = Trainer(load_train_config(_config(tmp_path, split)), progress=False)
    captions, qa = (t.samples_for(st) for st in t.cfg.stages)
    assert len(captions) == len(qa) == 12
    assert all(s.options is None and s.question == "Describe the video." for s in captions)
    assert all(s.options and s.answer in "ABCD" for s in qa)
    # Both sets decode the same videos: one shared frame cache.
    a, b = t.dataset(t.cfg.stages[0], 8), t.dataset(t.cfg.stages[1], 8)
    a[0], b[0], b[1]
    assert a.cache is b.cache and len(a.cache) == 2
    assert t.processor.tokenizer.unk_token_id not in t.processor.tokenizer(captions[1].answer)["input_ids"]


def test_alignment_stage_trains_only_projector_and_encoder(tmp_path, split):
    cfg = load_train_config(
        _config(tmp_path, split, stages=[{"name": "align", "train": "projector", "steps": 2, "lr": 1e-2}])
    )
    t = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.run()
    after = t.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"projector", "temporal_encoder"}


def test_resume_equals_uninterrupted(tmp_path, split):
    a = load_train_config(_config(tmp_path / "a", split))
    train(a, progress=False)
    b = load_train_config(_config(tmp_path / "b", split))
    assert train(b, progress=False, stop_after=4) is None  # "interrupted" inside stage 2
    assert (tmp_path / "b" / "run" / "checkpoints" / "step_00000004" / "trainer_state.pt").is_file()
    # The interrupted run had logged two more steps, the last half-written, after its checkpoint.
    with open(tmp_path / "b" / "run" / "log.jsonl", "a") as f:
        f.write(json.dumps({"stage": "sft", "step": 1, "global_step": 5, "loss": 9.0}) + '\n{"stage": "sft", "st')
    train(load_train_config(_config(tmp_path / "b", split)), progress=False)
    logs = [[json.loads(line) for line in open(tmp_path / r / "run" / "log.jsonl")] for r in ("a", "b")]
    assert [r["global_step"] for r in logs[1]] == [r["global_step"] for r in logs[0]]  # no duplicates
    assert 9.0 not in [r["loss"] for r in logs[1]]
    from safetensors.torch import load_file

    sa = load_file(tmp_path / "a" / "run" / "final" / "model.safetensors")
    sb = load_file(tmp_path / "b" / "run" / "final" / "model.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k


def test_ddp_two_processes_gloo_equal_one_process_on_the_global_batch(tmp_path, split):
    """Two gloo ranks with 4 samples each train the same weights as one process with the same 8.
    (Multiple-choice answers only: every sample has the same number of answer tokens, so averaging
    the ranks' mean losses equals the global mean.)"""
    from safetensors.torch import load_file

    data = {"train": [str(split / "annotations.jsonl")], "num_frames": 8, "open_ended_ratio": 0.0}
    stages = [{"name": "sft", "steps": 3, "lr": 1e-3}]
    ddp = _config(tmp_path / "ddp", split, stages=stages, data=data, log_every=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m",
         "stormvl.cli", "train", str(ddp)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    one = load_train_config(_config(tmp_path / "one", split, stages=stages, data=data, batch_size=8, log_every=1))
    train(one, progress=False)
    logs = [[json.loads(line) for line in open(tmp_path / d / "run" / "log.jsonl")] for d in ("ddp", "one")]
    assert [r["global_step"] for r in logs[0]] == [r["global_step"] for r in logs[1]] == [1, 2, 3]
    for a, b in zip(*logs):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(b["loss"]))
    wa = load_file(tmp_path / "ddp" / "run" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "one" / "run" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=2e-5), k


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_pickle_in_a_checkpoint_is_refused(tmp_path, split, monkeypatch):
    from stormvl.errors import ModelFolderError

    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(_config(tmp_path, split))
    train(cfg, progress=False, stop_after=2)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002" / "trainer_state.pt"
    torch.save({"global_step": 2, "payload": _RunsCode()}, ckpt)  # pickles the object
    with pytest.raises(ModelFolderError, match="refusing to resume"):
        train(load_train_config(_config(tmp_path, split)), progress=False)
    assert not (tmp_path / "pwned").exists()
    torch.save({"global_step": 2}, ckpt)  # loadable, but not a trainer state
    with pytest.raises(ModelFolderError, match="not a stormvl trainer state"):
        train(load_train_config(_config(tmp_path, split)), progress=False)


def test_a_run_where_no_video_decodes_fails_instead_of_reporting_success(tmp_path, split, capsys):
    from stormvl.cli import main

    broken = tmp_path / "broken"
    broken.mkdir()
    rows = [json.loads(line) for line in open(split / "annotations.jsonl")]
    for r in rows:
        (broken / Path(r["video"]).name).write_bytes(b"not a video")
        r["video"] = str(broken / Path(r["video"]).name)
    (broken / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _config(tmp_path, split, data={"train": [str(broken / "ann.jsonl")], "num_frames": 8})
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "trained 0 steps, no sample's video could be decoded" in err and "model written" not in err
    assert not (tmp_path / "run" / "final").exists()


def test_test_time_sampling_stays_out_of_training(tmp_path, split):
    storm = {"temporal_pool": 2, "mamba_head_dim": 16, "temporal_sample": 2}  # saved for answering
    cfg = load_train_config(_config(tmp_path, split, model={"init": "tiny", "tiny": TINY, "storm": storm}))
    t = Trainer(cfg, progress=False)
    ds = t.dataset(t.cfg.stages[1], 8)
    picks = t.batch_indices(1, 0)
    grid = t.model.config.grid_size[0] * t.model.config.grid_size[1]
    batch = t.collate(ds, picks)
    assert batch["temporal_sample"] == 1
    per_row = (batch["input_ids"] == t.model.config.video_token_id).sum(1)
    assert per_row.tolist() == [4 * grid] * len(per_row)  # 8 frames / pool 2, all kept
    assert (t.collate(ds, picks, temporal_sample=2)["input_ids"] == t.model.config.video_token_id).sum(1).tolist() == [
        2 * grid
    ] * len(per_row)  # a stage that asks for a stride gets it
    assert t.model.config.temporal_sample == 2  # and answering still uses the saved stride


def test_resuming_under_a_changed_config_is_refused(tmp_path, split):
    from stormvl.errors import ConfigError

    stages = [{"name": "sft", "steps": 4, "lr": 1e-3}]
    train(load_train_config(_config(tmp_path, split, stages=stages)), progress=False, stop_after=2)
    changed = [{"name": "sft", "steps": 4, "lr": 5e-3}]
    with pytest.raises(ConfigError, match=r"holds a run with another config \(stages differ\)"):
        train(load_train_config(_config(tmp_path, split, stages=changed)), progress=False)
    assert train(load_train_config(_config(tmp_path, split, stages=stages)), progress=False) is not None


def test_an_output_dir_holding_its_own_config_and_notes_trains(tmp_path, split):
    """Only the names a run writes mark a folder as taken: a config kept in its own output folder
    (with the user's notes) is the user's, trained beside and left alone."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.yaml").write_text("kept")
    final = train(load_train_config(_config(tmp_path, split, stages=[{"name": "sft", "steps": 1, "lr": 1e-3}])),
                  progress=False)  # fmt: skip
    assert final == out / "final" and (final / "model.safetensors").is_file()
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.yaml").read_text() == "kept"


def test_a_finished_run_is_never_trained_again(tmp_path, split):
    """Rerunning a finished run (its checkpoints kept or removed) leaves its model and log as they were."""
    stages = [{"name": "sft", "steps": 2, "lr": 1e-3}]
    final = train(load_train_config(_config(tmp_path, split, stages=stages)), progress=False)
    (final / "notes.txt").write_text("mine")
    log = (tmp_path / "run" / "log.jsonl").read_text()
    weights = (final / "model.safetensors").read_bytes()
    for keep_checkpoints in (True, False):
        if not keep_checkpoints:
            shutil.rmtree(tmp_path / "run" / "checkpoints")
        assert train(load_train_config(_config(tmp_path, split, stages=stages)), progress=False) == final
        assert (final / "notes.txt").read_text() == "mine" and (final / "model.safetensors").read_bytes() == weights
        assert (tmp_path / "run" / "log.jsonl").read_text() == log


def test_a_finished_run_reads_no_data(tmp_path):
    """Rerunning a finished run whose videos have moved since says it has finished: nothing is read."""
    split = tmp_path / "split"
    generate_split(split, 4, frames=8, seed=6)
    cfg = _config(tmp_path, split, stages=[{"name": "sft", "steps": 1, "lr": 1e-3}])
    final = train(load_train_config(cfg), progress=False)
    shutil.move(split / "videos", tmp_path / "moved")
    assert train(load_train_config(cfg), progress=False) == final
