"""Analytic FLOPs (multiply-adds x 2) of each stage, from a StormConfig and a frame count. They
count the model's work independently of how fast this machine runs it."""

from __future__ import annotations

import math

from ..config import StormConfig
from ..ops.ssd import ssd_chunked_flops


def vision_flops(cfg: StormConfig, frames: int) -> float:
    v = cfg.vision_config
    n = (v.image_size // v.patch_size) ** 2
    d, i, L = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    per_layer = 2 * n * (4 * d * d + 2 * d * i) + 4 * n * n * d
    patch = 2 * n * 3 * v.patch_size**2 * d
    return frames * (L * per_layer + patch)


def projector_flops(cfg: StormConfig, frames: int) -> float:
    g = cfg.grid_size[0] * cfg.grid_size[1]
    din, d = cfg.vision_config.hidden_size * cfg.downsample**2, cfg.text_config.hidden_size
    return frames * g * 2 * (din * d + (d * d if cfg.projector_type == "mlp" else 0))


def temporal_flops(cfg: StormConfig, frames: int) -> float:
    if not cfg.use_temporal_encoder:
        return 0.0
    tokens = frames * cfg.grid_size[0] * cfg.grid_size[1]
    d = cfg.text_config.hidden_size
    di = cfg.mamba_expand * d
    n = cfg.mamba_state_size
    if cfg.mamba_version == 1:
        r = cfg.mamba_dt_rank or math.ceil(d / 16)
        # in_proj, x_proj, dt_proj, out_proj; the scan: per token, channel and state index an exp,
        # two multiply-adds for the state and one for the read-out.
        proj = 2 * tokens * (d * 2 * di + di * (r + 2 * n) + r * di + di * d)
        scan = 7 * tokens * di * n
    else:
        heads = di // cfg.mamba_head_dim
        proj = 2 * tokens * d * (2 * di + 2 * cfg.mamba_n_groups * n + heads) + 2 * tokens * di * d
        scan = ssd_chunked_flops(1, tokens, heads, cfg.mamba_head_dim, n, cfg.mamba_n_groups, cfg.mamba_chunk_size)
    directions = 2 if cfg.temporal_bidirectional else 1
    return cfg.temporal_layers * directions * (proj + scan)


def llm_prefill_flops(cfg: StormConfig, tokens: int) -> float:
    t = cfg.text_config
    d, i, L = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    kv = d * t.num_key_value_heads // t.num_attention_heads
    per_layer = 2 * tokens * (2 * d * d + 2 * d * kv + 3 * d * i) + 2 * tokens * tokens * d  # causal: half of 4*T^2*d
    return L * per_layer + 2 * tokens * d * t.vocab_size / tokens  # lm head on the last position only
