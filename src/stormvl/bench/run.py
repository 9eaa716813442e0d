"""Times each stage of one answer through the model's own methods (`get_frame_features`,
`get_temporal_features`, `reduce_video_tokens`, `get_inputs_embeds`, then the LLM's prefill and
decode through `generation.greedy_decode`), so the bench measures exactly what `answer` runs."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..generation import greedy_decode
from ..models.storm import StormForConditionalGeneration
from ..processing import preprocess_frames
from .flops import llm_prefill_flops, projector_flops, temporal_flops, vision_flops
from .memory import PeakMemory
from .settings import SETTINGS, bench_config


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


def prompt_ids(model: StormForConditionalGeneration, num_frames: int, prompt_tokens: int, device) -> torch.Tensor:
    """(1, visual + prompt_tokens) ids: the video placeholders sized as the processor sizes them,
    then a text prompt (the bench model has no tokenizer; the ids' values do not affect speed)."""
    n = model.config.tokens_per_video(num_frames)
    ids = torch.zeros(1, n + prompt_tokens, dtype=torch.long, device=device)
    ids[0, :n] = model.config.video_token_id
    return ids


@torch.no_grad()
def time_once(model: StormForConditionalGeneration, pixel, input_ids, new_tokens: int, device) -> StageTimes:
    clock = time.perf_counter
    _sync(device)
    t0 = clock()
    feats = model.get_frame_features(pixel)[None]  # (1, T, N, D)
    _sync(device)
    t1 = clock()
    feats = model.get_temporal_features(feats)
    _sync(device)
    t2 = clock()
    red = model.reduce_video_tokens(feats)  # (1, T', N', D)
    emb = model.get_inputs_embeds(input_ids, video_features=list(model.video_token_sequence(red)))
    _sync(device)
    t3 = clock()
    # The prompt's pass, then new_tokens steps, through the decoding loop `answer` runs (no stop
    # token: every row runs its steps). Its first token comes right after the prompt's pass.
    first = []

    def on_token(_row, tokens):
        if len(tokens) == 1:
            _sync(device)
            first.append(clock())

    greedy_decode(model.language_model, [emb[0]], new_tokens + 1, set(), on_token=on_token)
    _sync(device)
    t5 = clock()
    t4 = first[0]
    return StageTimes(t1 - t0, t2 - t1, t3 - t2, t4 - t3, (t5 - t4) / max(1, new_tokens))


def available_mib() -> float:
    """Memory the system can still give this process (Linux's MemAvailable), or infinity."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def predicted_cost(prev: dict, frames: int) -> tuple[float, float]:
    """(seconds per pass, peak MiB) at `frames`, from the same setting's row at fewer frames: the
    vision tower and temporal encoder grow linearly with frames, the LLM's prefill and the peak
    memory (attention over the prompt) are taken to grow with its square, so the guess errs high."""
    r = frames / prev["frames"]
    s = prev["seconds"]
    t = (s["vision"] + s["temporal"] + s["reduction"]) * r + s["prefill"] * r * r
    return t, prev["peak_mem_mib"] * r * r


def skipped_row(frames, setting, cfg, why) -> dict:
    return {"frames": frames, "setting": setting, "llm_visual_tokens": cfg.tokens_per_video(frames), "skipped": why}


def run_bench(
    frame_counts=(32, 64, 128),
    settings=tuple(SETTINGS),
    size="cpu",
    temporal_layers=None,
    repeats=3,
    warmup=1,
    new_tokens=8,
    prompt_tokens=32,
    device="cpu",
    dtype=torch.float32,
    video=None,
    progress=True,
    max_pass_s: float = 120.0,
):
    """Returns a list of result rows (one per frame count and setting). A setting whose pass would
    take more than `max_pass_s` seconds, or more memory than is available, judged from its row at
    the previous frame count, is not run: its row says why (`skipped`); so is one that runs out of
    memory."""
    from ..video import load_video

    device = torch.device(device)
    rows = []
    torch.manual_seed(0)
    models = {
        s: StormForConditionalGeneration(bench_config(s, size, temporal_layers)).eval().to(device=device, dtype=dtype)
        for s in settings
    }
    cfg0 = models[settings[0]].config
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(frame_counts) * len(settings) * (warmup + repeats + 1), desc="bench", unit="pass")

    for T in sorted(frame_counts):  # each setting's cost at fewer frames predicts the next
        t_decode = None
        if video is not None:
            t = time.perf_counter()
            clip = load_video(video, T, size=cfg0.vision_config.image_size, resample=cfg0.decode_resample)
            t_decode = time.perf_counter() - t
            pixel = preprocess_frames(clip.frames, cfg0.vision_config.image_size, cfg0.image_mean, cfg0.image_std)
        else:
            pixel = torch.randn(T, 3, cfg0.vision_config.image_size, cfg0.vision_config.image_size)
        pixel = pixel.to(device=device, dtype=dtype)  # (T, 3, S, S)
        last = {}  # setting -> its row at the largest frame count measured so far
        for r in rows:
            if "skipped" not in r:
                last[r["setting"]] = r
        active = []
        for s in settings:
            cfg = models[s].config
            if s in last:
                secs, mib = predicted_cost(last[s], T)
                if secs > max_pass_s:
                    why = f"one pass would take about {secs:.0f} s (over --max-seconds {max_pass_s:g})"
                    rows.append(skipped_row(T, s, cfg, why))
                    continue
                if mib > 0.8 * available_mib():
                    why = f"would need about {mib / 1024:.1f} GiB, more than this machine has free"
                    rows.append(skipped_row(T, s, cfg, why))
                    continue
            elif any(r["setting"] == s for r in rows):  # skipped at fewer frames: more cannot fit
                rows.append(skipped_row(T, s, cfg, "skipped at fewer frames"))
                continue
            active.append(s)
        if bar is not None:
            bar.total -= (len(settings) - len(active)) * (warmup + repeats + 1)
        ids = {s: prompt_ids(models[s], T, prompt_tokens, device) for s in active}

        def once(s):
            t = time_once(models[s], pixel, ids[s], new_tokens, device)
            if bar is not None:
                bar.update(1)
            return t

        for s in list(active):
            try:
                for _ in range(warmup):
                    once(s)
            except (MemoryError, RuntimeError) as e:
                if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
                    raise
                active.remove(s)
                rows.append(skipped_row(T, s, models[s].config, "ran out of memory"))
        # Repeats go round the settings, so a slow spell on a shared machine hits all of them
        # alike instead of skewing one setting's median (the ratios are what matter).
        times = {s: [] for s in active}
        for _ in range(repeats):
            for s in active:
                times[s].append(once(s))
        for s in active:
            cfg = models[s].config
            with PeakMemory(device) as mem:
                once(s)
            med = {
                k: statistics.median(getattr(t, k) for t in times[s])
                for k in ("vision", "temporal", "reduction", "prefill", "per_token")
            }
            ttft = statistics.median(t.ttft for t in times[s])
            answer = ttft + new_tokens * med["per_token"]
            vis_tokens = cfg.tokens_per_video(T)
            flops = {
                "vision": vision_flops(cfg, T) + projector_flops(cfg, T),
                "temporal": temporal_flops(cfg, T),
                "llm_prefill": llm_prefill_flops(cfg, vis_tokens + prompt_tokens),
            }
            rows.append(
                {
                    "frames": T,
                    "setting": s,
                    "overrides": SETTINGS[s],
                    "llm_visual_tokens": vis_tokens,
                    "gflops": {k: round(v / 1e9, 6) for k, v in flops.items()},
                    "seconds": {k: round(v, 4) for k, v in med.items()},
                    "ttft_s": round(ttft, 4),
                    "decode_s": None if t_decode is None else round(t_decode, 4),
                    # The whole answer: TTFT plus the generated tokens; with --video, decoding too.
                    "answer_s": round(answer, 4),
                    "end_to_end_s": None if t_decode is None else round(t_decode + answer, 4),
                    "temporal_share": round(med["temporal"] / answer, 4),
                    "peak_mem_mib": round(mem.mib, 3),
                }
            )
    if bar is not None:
        bar.close()
    rows.sort(key=lambda r: (r["frames"], settings.index(r["setting"])))
    add_ratios(rows)
    return rows


def add_ratios(rows) -> None:
    """Ratios against the baseline of the same frame count, same run: tokens always (they are
    known without running), time only when both ran."""
    for r in rows:
        base = next((b for b in rows if b["frames"] == r["frames"] and b["setting"] == "baseline"), None)
        if base is None or "skipped" in r:
            continue
        r["token_reduction_x"] = round(base["llm_visual_tokens"] / r["llm_visual_tokens"], 2)
        if "skipped" not in base:
            r["ttft_speedup_x"] = round(base["ttft_s"] / r["ttft_s"], 2)
