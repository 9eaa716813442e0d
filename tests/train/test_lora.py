"""LoRA on STORM's LLM through PEFT: a `train: lora` stage, adapters saved beside the base
weights, loaded with the folder, merged by `stormvl merge-lora`."""

import json
import os
import subprocess
import sys

import pytest
import torch

from stormvl.cli import main
from stormvl.train.config import load_train_config
from stormvl.train.trainer import train

from .test_trainer import _config, split  # noqa: F401  (the split fixture)

pytest.importorskip("peft")
pytestmark = pytest.mark.slow

LORA = {"name": "lora", "train": "lora", "steps": 20, "lr": 1e-2, "lora": {"r": 4, "alpha": 8}}
BIG = {"hidden": 64, "llm_layers": 2, "vision_hidden": 16, "vision_layers": 1, "image_size": 32, "patch_size": 8}


def _batch(model_dir):
    from stormvl.pipeline import load

    pipe = load(model_dir)
    frames = torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = pipe.processor([frames.numpy()], [pipe.processor.prompt_text("what happens ?")])
    return pipe.model, batch


def _logits(model_dir):
    model, batch = _batch(model_dir)
    with torch.no_grad():
        return model(**batch).logits


def test_lora_stage_trains_adapters_saves_loads_and_merges(tmp_path, split):  # noqa: F811
    cfg = load_train_config(_config(tmp_path, split, stages=[LORA], log_every=1,
                                    model={"init": "tiny", "tiny": BIG, "storm": {"temporal_pool": 2,
                                                                                  "mamba_head_dim": 16}}))  # fmt: skip
    cfg.data.open_ended_ratio = 0.0
    final = train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    adapter = final / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file() and (final / "adapter" / "adapter_config.json").is_file()
    assert adapter.stat().st_size < 0.10 * (final / "model.safetensors").stat().st_size
    # The base weights are saved unchanged, under their plain names.
    from safetensors.torch import load_file

    base = load_file(final / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in base)
    # Loading applies the adapter: the logits are the trained model's, not the base model's.
    model, batch = _batch(final)
    with torch.no_grad():
        trained = model(**batch).logits
        with model.language_model.disable_adapter():
            plain = model(**batch).logits
    assert not torch.allclose(trained, plain, atol=1e-4)
    torch.testing.assert_close(_logits(final), trained)  # a second load gives identical logits
    # merge-lora: one plain folder, the same logits.
    (tmp_path / "merged.partial").mkdir()  # the user's, by a name a temporary folder could have had
    (tmp_path / "merged.partial" / "notes.txt").write_text("mine")
    assert main(["merge-lora", str(final), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged.partial" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("merged.") and p.name != "merged.partial"]
    assert not (tmp_path / "merged" / "adapter").exists()
    torch.testing.assert_close(_logits(tmp_path / "merged"), trained, atol=1e-5, rtol=1e-5)
    assert main(["merge-lora", str(final), str(tmp_path / "merged")]) == 2  # never overwritten
    assert main(["merge-lora", str(tmp_path / "merged"), str(tmp_path / "m2")]) == 2  # nothing to merge


def test_lora_resume_equals_uninterrupted(tmp_path, split):  # noqa: F811
    stages = [{"name": "align", "train": "projector", "steps": 2, "lr": 3e-3}, {**LORA, "steps": 4}]
    a = load_train_config(_config(tmp_path / "a", split, stages=stages))
    train(a, progress=False)
    b = load_train_config(_config(tmp_path / "b", split, stages=stages))
    assert train(b, progress=False, stop_after=4) is None  # inside the LoRA stage, after a checkpoint
    train(load_train_config(_config(tmp_path / "b", split, stages=stages)), progress=False)
    from safetensors.torch import load_file

    for f in ("model.safetensors", "adapter/adapter_model.safetensors"):
        sa, sb = (load_file(tmp_path / r / "run" / "final" / f) for r in ("a", "b"))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.allclose(sa[k], sb[k], atol=1e-6), (f, k)


def test_lora_under_two_process_ddp(tmp_path, split):  # noqa: F811
    path = _config(tmp_path, split, stages=[{**LORA, "steps": 3}])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", "-m",
         "stormvl.cli", "train", str(path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_model.safetensors").is_file()
