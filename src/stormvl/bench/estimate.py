"""Time and memory of each stage for a planned answer, estimated on this machine without running
it: every stage is timed once on a small slice (a few frames, a short prompt) and scaled by how its
cost grows (decoding, the vision tower and the temporal scan linearly in frames; the LLM's prefill
linearly in tokens, which under-counts attention for very long prompts). Memory counts the tensors
each stage holds at its peak."""

from __future__ import annotations

import time

import torch

CALIBRATION_FRAMES = 8


def _timed(fn, repeats=2):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


@torch.inference_mode()
def estimate_stages(pipe, video, num_frames: int, temporal_sample: int) -> list[dict]:
    """[{stage, seconds, MiB}] for answering about `video` with this plan."""
    model, cfg = pipe.model, pipe.config
    k = min(num_frames, CALIBRATION_FRAMES)
    scale = num_frames / k
    S = cfg.vision_config.image_size
    gh, gw = cfg.grid_size
    d = cfg.text_config.hidden_size
    decode_s = _timed(lambda: pipe.load_clip(video, k), repeats=1) * scale
    pixel = torch.randn(k, 3, S, S)
    vision_s = _timed(lambda: model.get_frame_features(pixel)) * scale
    feats = model.get_frame_features(pixel)[None]  # (1, k, N, D)
    temporal_s = _timed(lambda: model.get_temporal_features(feats)) * scale
    visual = cfg.tokens_per_video(num_frames, temporal_sample)
    n = min(visual + 32, 2048)
    emb = torch.randn(1, n, d)
    prefill_s = _timed(lambda: model.language_model(inputs_embeds=emb)) * (visual + 32) / n
    f32 = 4
    frames_mib = num_frames * S * S * 3 / 2**20  # decoded uint8 frames at the tower's input size
    tokens_mib = num_frames * gh * gw * d * f32 / 2**20  # projected tokens, all frames
    chunk = min(num_frames, cfg.vision_batch_size)
    vision_mib = chunk * 3 * S * S * f32 / 2**20 + tokens_mib
    # The scan's activations: inner width expand * d, a few copies per layer, one layer at a time.
    temporal_mib = tokens_mib * (1 + 3 * cfg.mamba_expand) if model.temporal_encoder is not None else 0.0
    lm = cfg.text_config
    kv_heads = getattr(lm, "num_key_value_heads", None) or lm.num_attention_heads
    head_dim = getattr(lm, "head_dim", None) or lm.hidden_size // lm.num_attention_heads
    kv_mib = 2 * lm.num_hidden_layers * (visual + 64) * kv_heads * head_dim * f32 / 2**20
    prefill_mib = kv_mib + (visual + 64) * (lm.intermediate_size + lm.vocab_size / (visual + 64)) * f32 / 2**20
    return [
        {"stage": "decode", "seconds": decode_s, "MiB": frames_mib},
        {"stage": "vision tower + projector", "seconds": vision_s, "MiB": vision_mib},
        {"stage": "temporal encoder", "seconds": temporal_s, "MiB": temporal_mib},
        {"stage": "LLM prefill", "seconds": prefill_s, "MiB": prefill_mib},
    ]
