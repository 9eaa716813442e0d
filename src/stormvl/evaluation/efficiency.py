"""What token reduction buys: per-stage FLOPs, wall time, time to first token and peak memory of
the VILA-style baseline and STORM settings, at fixed input frame counts, in one run.

The model is randomly initialised (speed does not depend on the weights) with a shape that
mirrors SigLIP-so400m feeding a 7B LLM, scaled down for a CPU. The vision tower has ~4% of the
LLM's parameters (~5% at full size) and reads 4 patches per LLM token, as SigLIP does with a 2x2
pixel shuffle. At 64 frames it costs about a seventh of the baseline LLM prefill (about a fifth
at full size), so the LLM dominates and the reduction shows up in latency the way it does in the
paper.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..config import StormConfig
from ..models.storm import StormForConditionalGeneration
from ..models.token_reduction import reduce_tokens

SETTINGS = {
    # name: (use_temporal_encoder, projector, temporal_pool, spatial_pool, temporal_sample)
    "baseline": (False, "mlp", 1, 1, 1),
    "storm": (True, "linear", 1, 1, 1),
    "storm+tpool4": (True, "linear", 4, 1, 1),
    "storm+tpool4+tsample2": (True, "linear", 4, 1, 2),
    "storm+tpool4+spool2": (True, "linear", 4, 2, 1),
}


def bench_config(setting: str, size: str = "cpu") -> StormConfig:
    enc, proj, kt, ks, s = SETTINGS[setting]
    if size == "cpu":
        vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                      image_size=224, patch_size=14)
        text = dict(hidden_size=384, intermediate_size=2048, num_hidden_layers=24, num_attention_heads=6,
                    num_key_value_heads=2, vocab_size=32000)
    elif size == "tiny":  # for tests
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=56, patch_size=14)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, vocab_size=256)
    else:
        raise ValueError(f"unknown bench size {size!r}")
    return StormConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision),
        text_config=dict(model_type="qwen2", max_position_embeddings=32768, **text),
        video_token_id=text["vocab_size"] - 1, use_temporal_encoder=enc, projector_type=proj,
        temporal_pool=kt, spatial_pool=ks, temporal_sample=s, temporal_layers=1, mamba_head_dim=64,
        mamba_state_size=64, mamba_chunk_size=64,
    )


# -- analytic FLOPs (multiply-adds x 2) -------------------------------------------------------
def vision_flops(cfg: StormConfig, frames: int) -> float:
    v = cfg.vision_config
    n = (v.image_size // v.patch_size) ** 2
    d, i, L = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    per_layer = 2 * n * (4 * d * d + 2 * d * i) + 4 * n * n * d
    patch = 2 * n * 3 * v.patch_size ** 2 * d
    return frames * (L * per_layer + patch)


def projector_flops(cfg: StormConfig, frames: int) -> float:
    g = cfg.grid_size[0] * cfg.grid_size[1]
    din, d = cfg.vision_config.hidden_size * cfg.downsample ** 2, cfg.text_config.hidden_size
    return frames * g * 2 * (din * d + (d * d if cfg.projector_type == "mlp" else 0))


def temporal_flops(cfg: StormConfig, frames: int) -> float:
    if not cfg.use_temporal_encoder:
        return 0.0
    from ..ops.ssd import ssd_chunked_flops

    tokens = frames * cfg.grid_size[0] * cfg.grid_size[1]
    d = cfg.text_config.hidden_size
    di = cfg.mamba_expand * d
    heads = di // cfg.mamba_head_dim
    proj = 2 * tokens * d * (2 * di + 2 * cfg.mamba_n_groups * cfg.mamba_state_size + heads) + 2 * tokens * di * d
    scan = ssd_chunked_flops(1, tokens, heads, cfg.mamba_head_dim, cfg.mamba_state_size, cfg.mamba_n_groups,
                             cfg.mamba_chunk_size)
    directions = 2 if cfg.temporal_bidirectional else 1
    return cfg.temporal_layers * directions * (proj + scan)


def llm_prefill_flops(cfg: StormConfig, tokens: int) -> float:
    t = cfg.text_config
    d, i, L = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    kv = d * t.num_key_value_heads // t.num_attention_heads
    per_layer = 2 * tokens * (2 * d * d + 2 * d * kv + 3 * d * i) + 2 * tokens * tokens * d  # causal: half of 4*T^2*d
    return L * per_layer + 2 * tokens * d * t.vocab_size / tokens  # lm head on the last position only


# -- measurement ----------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of the tensors allocated inside the block, above what was live when it began.

    On CUDA that is the caching allocator's own peak. On CPU, resident-set size cannot give it:
    glibc keeps freed pages, so a run after a larger one reuses them and reads as ~0 MiB. Instead a
    dispatch mode sees every aten op's outputs and tallies live storages (a storage counts until
    the last tensor using it is freed), which is the CPU analogue of the CUDA figure at op
    granularity (kernels' internal scratch buffers are not seen)."""

    def __init__(self, device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.mode = _LiveStorageTally()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.mode.__exit__(*exc)
            self.peak = self.mode.peak

    @property
    def mib(self):
        return self.peak / 2 ** 20


class _LiveStorageTally(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = {}  # data_ptr -> (weak ref to the storage, bytes)
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Storages freed since the last op no longer count; this op's inputs are still alive.
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        # An output sharing an input's storage (a view, an in-place op) allocated nothing; this
        # also keeps views of tensors made before the block (weights) out of the tally.
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.live and key not in inputs:
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
                    self.current += st.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StageTimes:
    vision: float
    temporal: float
    reduction: float
    prefill: float
    per_token: float

    @property
    def ttft(self):
        return self.vision + self.temporal + self.reduction + self.prefill


@torch.no_grad()
def time_once(model: StormForConditionalGeneration, pixel, prompt_tokens: int, new_tokens: int, device) -> StageTimes:
    cfg = model.config
    clock = time.perf_counter
    _sync(device)
    t0 = clock()
    feats = model.encode_frames(pixel)[None]            # (1, T, N, D)
    _sync(device)
    t1 = clock()
    if model.temporal_encoder is not None:
        feats = model.temporal_encoder(feats)
    _sync(device)
    t2 = clock()
    red = reduce_tokens(feats, grid=cfg.grid_size, temporal_pool_k=cfg.temporal_pool, spatial_pool_k=cfg.spatial_pool,
                        temporal_sample_s=cfg.temporal_sample).flatten(1, 2)
    text = model.get_input_embeddings()(torch.zeros(1, prompt_tokens, dtype=torch.long, device=device))
    emb = torch.cat([red.to(text.dtype), text], 1)
    _sync(device)
    t3 = clock()
    # Logits for the last position only, as `generate` computes them in prefill.
    out = model.language_model(inputs_embeds=emb, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    t4 = clock()
    past = out.past_key_values
    for _ in range(new_tokens):
        out = model.language_model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    t5 = clock()
    return StageTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3, (t5 - t4) / max(1, new_tokens))


def run_bench(frame_counts=(32, 64, 128), settings=tuple(SETTINGS), size="cpu", repeats=3, warmup=1,
              new_tokens=8, prompt_tokens=32, device="cpu", dtype=torch.float32, video=None, progress=True):
    """Returns a list of result rows (one per frame count and setting)."""
    from ..video import load_video

    device = torch.device(device)
    rows = []
    models = {}
    torch.manual_seed(0)
    for s in settings:
        m = StormForConditionalGeneration(bench_config(s, size)).eval().to(device=device, dtype=dtype)
        models[s] = m
    S = models[settings[0]].config.vision_config.image_size
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(frame_counts) * len(settings) * (warmup + repeats + 1), desc="bench", unit="pass")

    def once(s, pixel):
        t = time_once(models[s], pixel, prompt_tokens, new_tokens, device)
        if bar is not None:
            bar.update(1)
        return t

    for T in frame_counts:
        t_decode = None
        if video is not None:
            t = time.perf_counter()
            clip = load_video(video, T)
            t_decode = time.perf_counter() - t
            from ..models.vision import preprocess_frames

            pixel = preprocess_frames(clip.frames, S, [0.5] * 3, [0.5] * 3)
        else:
            pixel = torch.randn(T, 3, S, S)
        pixel = pixel.to(device=device, dtype=dtype)
        for s in settings:
            for _ in range(warmup):
                once(s, pixel)
        # Repeats go round the settings, so a slow spell on a shared machine hits all of them
        # alike instead of skewing one setting's median (the ratios are what matter).
        times = {s: [] for s in settings}
        for _ in range(repeats):
            for s in settings:
                times[s].append(once(s, pixel))
        for s in settings:
            m = models[s]
            cfg = m.config
            with PeakMemory(device) as mem:
                once(s, pixel)
            med = {k: statistics.median(getattr(t, k) for t in times[s])
                   for k in ("vision", "temporal", "reduction", "prefill", "per_token")}
            ttft = statistics.median(t.ttft for t in times[s])
            vis_tokens = cfg.tokens_per_video(T)
            flops = {"vision": vision_flops(cfg, T) + projector_flops(cfg, T), "temporal": temporal_flops(cfg, T),
                     "llm_prefill": llm_prefill_flops(cfg, vis_tokens + prompt_tokens)}
            rows.append({"frames": T, "setting": s, "llm_visual_tokens": vis_tokens,
                         "gflops": {k: round(v / 1e9, 2) for k, v in flops.items()},
                         "seconds": {k: round(v, 4) for k, v in med.items()}, "ttft_s": round(ttft, 4),
                         "decode_s": None if t_decode is None else round(t_decode, 4),
                         "temporal_share": round(med["temporal"] / (ttft + new_tokens * med["per_token"]), 4),
                         "peak_mem_mib": round(mem.mib, 3)})
    if bar is not None:
        bar.close()
    for r in rows:  # ratios against the baseline of the same frame count, same run
        base = next((b for b in rows if b["frames"] == r["frames"] and b["setting"] == "baseline"), None)
        if base:
            r["token_reduction_x"] = round(base["llm_visual_tokens"] / r["llm_visual_tokens"], 2)
            r["ttft_speedup_x"] = round(base["ttft_s"] / r["ttft_s"], 2)
    return rows


def format_table(rows) -> str:
    lines = ["| frames | setting | LLM visual tokens | tokens / | GFLOPs vision / temporal / LLM | vision s | temporal s "
             "| prefill s | s / token | TTFT s | TTFT speed-up | temporal share | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, s = r["gflops"], r["seconds"]
        lines.append(f"| {r['frames']} | {r['setting']} | {r['llm_visual_tokens']} | {r.get('token_reduction_x', '')}x "
                     f"| {g['vision']:.0f} / {g['temporal']:.0f} / {g['llm_prefill']:.0f} | {s['vision']:.3f} "
                     f"| {s['temporal']:.3f} | {s['prefill']:.3f} | {s['per_token']:.4f} | {r['ttft_s']:.3f} "
                     f"| {r.get('ttft_speedup_x', '')}x | {100 * r['temporal_share']:.1f}% | {r['peak_mem_mib']:.0f} |")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    frames = sorted({r["frames"] for r in rows})
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in settings:
        pts = [next(r for r in rows if r["frames"] == f and r["setting"] == s) for f in frames]
        axes[0].plot(frames, [p["ttft_s"] for p in pts], marker="o", label=s)
        axes[1].plot(frames, [p["llm_visual_tokens"] for p in pts], marker="o", label=s)
    axes[0].set(xlabel="input frames", ylabel="time to first token (s)", title="Latency")
    axes[1].set(xlabel="input frames", ylabel="LLM visual tokens", title="Tokens", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return True


def write_outputs(rows, out_dir, meta: dict):
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".bench.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "bench.json"))
    table = format_table(rows)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(table + "\n")
    plotted = plot(rows, os.path.join(out_dir, "bench.png"))
    return table, plotted
