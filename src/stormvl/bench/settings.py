"""The compared settings, each a named dict of StormConfig overrides on one bench model.

The model is randomly initialised (speed does not depend on the weights) with a shape that
mirrors SigLIP-so400m feeding a 7B LLM, scaled down for a CPU. The vision tower has ~4% of the
LLM's parameters (~5% at full size) and reads 4 patches per LLM token, as SigLIP does with a 2x2
pixel shuffle. At 64 frames it costs about a seventh of the baseline LLM prefill (about a fifth
at full size), so the LLM dominates and the reduction shows up in latency the way it does in the
paper.
"""

from __future__ import annotations

from ..config import StormConfig
from ..errors import InputError

SETTINGS: dict[str, dict] = {
    "baseline": {"use_temporal_encoder": False, "projector_type": "mlp"},  # VILA-style, every token
    "storm": {},
    "storm+tpool4": {"temporal_pool": 4},
    "storm+tpool4+tsample2": {"temporal_pool": 4, "temporal_sample": 2},
    "storm+tpool4+spool2": {"temporal_pool": 4, "spatial_pool": 2},
    # The paper's Mamba-1 block, with Mamba-1's usual state size, in place of Mamba-2.
    "storm-m1": {"mamba_version": 1, "mamba_state_size": 16},
    "storm-m1+tpool4": {"mamba_version": 1, "mamba_state_size": 16, "temporal_pool": 4},
}

# Shared by every setting: one bidirectional Mamba layer at the LLM width (Mamba-2 unless a
# setting names Mamba-1).
BASE = {"temporal_layers": 1, "mamba_head_dim": 64, "mamba_state_size": 64, "mamba_chunk_size": 64}

SIZES: dict[str, tuple[dict, dict]] = {
    # name: (vision tower, LLM)
    "cpu": (
        dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=224,
            patch_size=14,
        ),
        dict(
            hidden_size=384,
            intermediate_size=2048,
            num_hidden_layers=24,
            num_attention_heads=6,
            num_key_value_heads=2,
            vocab_size=32000,
        ),
    ),
    "tiny": (  # for tests
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=256,
        ),
    ),
}


def bench_config(setting: str, size: str = "cpu", temporal_layers: int | None = None) -> StormConfig:
    if setting not in SETTINGS:
        raise InputError(f"unknown bench setting {setting!r}; choose from {list(SETTINGS)}")
    if size not in SIZES:
        raise InputError(f"unknown bench size {size!r}; choose from {list(SIZES)}")
    vision, text = SIZES[size]
    return StormConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision),
        text_config=dict(model_type="qwen2", max_position_embeddings=32768, **text),
        video_token_id=text["vocab_size"] - 1,
        **{**BASE, **SETTINGS[setting], **({"temporal_layers": temporal_layers} if temporal_layers else {})},
    )
