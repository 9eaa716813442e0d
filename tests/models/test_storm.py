import math

import numpy as np
import pytest
import torch

from stormvl import StormForConditionalGeneration, StormProcessor
from stormvl.errors import InputError
from stormvl.testing import TinySize, tiny_config

FRAMES = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_generate_returns_text(tiny_model, llm):
    model, proc = tiny_model(llm, temporal_pool=2)
    batch = proc([FRAMES], [proc.prompt_text("what happens ?")])
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4)
    assert isinstance(proc.decode(out[0]), str) and proc.decode(out[0])


@pytest.mark.parametrize("kt,ks,s", [(1, 1, 1), (4, 1, 1), (2, 2, 1), (4, 1, 2)])
def test_placeholder_expands_to_reduced_token_count(tiny_model, kt, ks, s):
    model, proc = tiny_model(temporal_pool=kt, spatial_pool=ks)
    batch = proc([FRAMES], [proc.prompt_text("what happens ?")], temporal_sample=s)
    n_video = int((batch["input_ids"] == model.config.video_token_id).sum())
    grid = model.config.grid_size  # 32 px / patch 4 = 8x8 patches -> 4x4 after pixel shuffle
    assert grid == (4, 4)
    assert n_video == math.ceil(math.ceil(8 / kt) / s) * (16 // ks // ks) == model.config.tokens_per_video(8, s)
    feats = model.get_video_features(batch["pixel_values_videos"], temporal_sample=s)
    assert feats[0].shape == (n_video, model.config.text_config.hidden_size)
    with torch.no_grad():
        model(**batch)  # the batch carries its sampling stride: shapes line up end to end


def test_mismatched_prompt_is_an_error(tiny_model):
    model, proc = tiny_model(temporal_pool=2)
    batch = proc([FRAMES], [proc.prompt_text("what happens ?")])  # built for s=1
    batch["temporal_sample"] = 2  # a hand-built batch that disagrees with its own prompt
    with pytest.raises(InputError, match=r"the prompt has \[64\] video tokens but the video gives \[32\]"):
        model(**batch)


def test_loss_only_on_answer_tokens_and_gradients(tiny_model):
    model, proc = tiny_model(temporal_pool=2)
    model.train()
    batch = proc(
        [FRAMES, FRAMES[::-1].copy()], [proc.prompt_text("what happens ?")] * 2, answers=["red", "blue square"]
    )
    lab = batch["labels"]
    assert (lab != -100).sum(1).tolist() == [2, 3]  # answer words + end of sequence
    assert (lab[batch["input_ids"] == model.config.video_token_id] == -100).all()
    out = model(**batch)
    # Same value as a loss computed by hand from the logits.
    logits = out.logits[:, :-1].float()
    ref = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.allclose(out.loss, ref, atol=1e-5)
    out.loss.backward()
    for name in ("projector", "temporal_encoder", "vision_tower", "language_model"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name


def test_baseline_is_same_class_without_encoder(tiny_model):
    model, proc = tiny_model(use_temporal_encoder=False, projector_type="mlp")
    assert model.temporal_encoder is None
    # VILA's projector: LayerNorm, Linear, GELU, Linear on the pixel-shuffled features.
    assert [type(m).__name__ for m in model.projector.net] == ["LayerNorm", "Linear", "GELU", "Linear"]
    batch = proc([FRAMES], [proc.prompt_text("what happens ?")])
    assert model.generate(**batch, max_new_tokens=2).shape == (1, 2)


def test_fresh_encoder_is_identity(tiny_model):
    a, _ = tiny_model()
    x = torch.randn(1, 3, 16, a.config.text_config.hidden_size)
    assert torch.equal(a.temporal_encoder(x), x)


def test_save_load_round_trip(tiny_model, tmp_path):
    model, proc = tiny_model(temporal_pool=2)
    with torch.no_grad():  # make the encoder non-trivial first
        for p in model.temporal_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path).eval()
    proc2 = StormProcessor.from_pretrained(tmp_path)
    assert loaded.config.temporal_pool == 2 and loaded.config.video_token_id == model.config.video_token_id
    b1 = proc([FRAMES], [proc.prompt_text("what happens ?")])
    b2 = proc2([FRAMES], [proc2.prompt_text("what happens ?")])
    assert torch.equal(b1["input_ids"], b2["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**b1).logits, loaded(**b2).logits)
    assert torch.equal(model.generate(**b1, max_new_tokens=5), loaded.generate(**b2, max_new_tokens=5))


def test_from_parts_loads_local_backbones(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

    cfg = tiny_config(tiny_tokenizer, TinySize(llm="llama"))
    vision = SiglipVisionModel(
        SiglipVisionConfig(
            **{
                k: v
                for k, v in cfg.vision_config.to_dict().items()
                if k
                in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "image_size",
                    "patch_size",
                )
            }
        )
    )
    vision.save_pretrained(tmp_path / "vision")
    lm = AutoModelForCausalLM.from_config(cfg.text_config)
    lm.save_pretrained(tmp_path / "llm")
    tiny_tokenizer.save_pretrained(tmp_path / "llm")
    model, tok = StormForConditionalGeneration.from_parts(tmp_path / "vision", tmp_path / "llm", temporal_pool=4)
    sd = vision.state_dict()
    assert all(torch.equal(v, model.vision_tower.state_dict()[k]) for k, v in sd.items() if "head" not in k.split("."))
    assert torch.equal(model.language_model.get_input_embeddings().weight, lm.get_input_embeddings().weight)
    assert model.config.temporal_pool == 4 and model.config.video_token_id == tok.convert_tokens_to_ids("<video>")


def test_per_row_mismatches_cannot_cancel_out(tiny_model):
    model, proc = tiny_model()
    videos = [FRAMES, FRAMES[:4]]  # 8 and 4 frames: different token counts per row
    batch = proc(videos, [proc.prompt_text("what happens ?")] * 2)
    with torch.no_grad():
        model(**batch)  # as built: fine
        batch["pixel_values_videos"] = batch["pixel_values_videos"][::-1]  # same total, rows swapped
        with pytest.raises(InputError, match=r"\[128, 64\] video tokens but the video gives \[64, 128\]"):
            model(**batch)


def test_mamba1_model_round_trip_and_identity_start(tiny_model, tmp_path):
    model, proc = tiny_model(temporal_pool=2, mamba_version=1, mamba_dt_rank=3)
    mixer = model.temporal_encoder.layers[0].forward_mixer
    assert type(mixer).__name__ == "Mamba1Mixer" and mixer.dt_rank == 3
    x = torch.randn(1, 4, 16, model.config.text_config.hidden_size)
    assert torch.equal(model.get_temporal_features(x), x)  # zeroed out_proj: a fresh encoder is the identity
    with torch.no_grad():
        for p in model.temporal_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(tmp_path)
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.mamba_version == 1
    batch = proc([FRAMES], [proc.prompt_text("what happens ?")])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_siglip_pooling_head_is_never_built(tiny_tokenizer):
    # Older transformers build SigLIP's pooling head when the config does not mention it; a folder
    # saved that way would not load in newer versions, and the head is never used.
    cfg = tiny_config(tiny_tokenizer, TinySize())
    assert cfg.vision_config.model_type == "siglip_vision_model"
    cfg.vision_config.vision_use_head = True
    model = StormForConditionalGeneration(cfg)
    assert not [n for n, _ in model.named_parameters() if n.startswith("vision_tower.head.")]
    assert model.config.vision_config.vision_use_head is False
