"""The bench's analytic FLOP counts against torch's FlopCounterMode on the real modules (which
counts matmuls, convolutions and attention products, not elementwise work)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stormvl.bench.flops import llm_prefill_flops, projector_flops, temporal_flops, vision_flops
from stormvl.bench.settings import bench_config
from stormvl.models.storm import StormForConditionalGeneration


def _counted(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        out = fn()
    return fc.get_total_flops(), out


@pytest.mark.parametrize("setting", ["baseline", "storm", "storm+tpool4", "storm-m1"])
def test_flop_formulas_match_the_counted_modules(setting):
    torch.manual_seed(0)
    cfg = bench_config(setting, "tiny")
    model = StormForConditionalGeneration(cfg).eval()
    for sub in (model.vision_tower, model.language_model):
        sub.config._attn_implementation = "eager"  # attention as plain matmuls, which the counter sees
    T = 8
    counted, feats = _counted(lambda: model.get_frame_features(torch.randn(T, 3, 56, 56)))
    assert counted == vision_flops(cfg, T) + projector_flops(cfg, T)

    counted, mixed = _counted(lambda: model.get_temporal_features(feats[None]))
    want = temporal_flops(cfg, T)
    if cfg.mamba_version == 1 and cfg.use_temporal_encoder:
        # The S6 scan is elementwise (the formula's 7 per token, channel and state index), except
        # its read-out, an einsum the counter sees (2 per token, channel and state index).
        tokens, di, n = T * cfg.grid_size[0] * cfg.grid_size[1], 2 * cfg.text_config.hidden_size, cfg.mamba_state_size
        want -= 2 * (7 - 2) * tokens * di * n  # two directions
    assert counted == want

    red = model.reduce_video_tokens(mixed)
    ids = torch.zeros(1, red.shape[1] * red.shape[2] + 5, dtype=torch.long)
    ids[0, : red.shape[1] * red.shape[2]] = cfg.video_token_id
    emb = model.get_inputs_embeds(ids, video_features=[red.flatten(0, 2)])
    counted, _ = _counted(lambda: model.language_model(inputs_embeds=emb, logits_to_keep=1))
    L, d, t = cfg.text_config.num_hidden_layers, cfg.text_config.hidden_size, ids.shape[1]
    # Eager attention computes the full T x T scores; the formula counts the causal half, as the
    # fused kernels do.
    assert counted - L * 2 * t * t * d == llm_prefill_flops(cfg, t)
