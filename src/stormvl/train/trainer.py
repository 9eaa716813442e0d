"""STORM training: staged (alignment -> SFT -> optional long-video), one process or many under
torchrun (DDP; FSDP selectable for GPUs), atomic checkpoints and exact resume.

The sample order is a pure function of (seed, stage, step), so a resumed run reads exactly the
batches the interrupted one would have, with no data-loader state to save.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data.dataset import VideoQADataset, read_training_samples
from ..data.records import write_atomic
from ..errors import ConfigError, DataFormatError, ModelFolderError, first_line
from ..models import lora
from ..models.storm import StormForConditionalGeneration
from ..processing import OPTION_LETTERS, StormProcessor, move_batch
from .config import TrainConfig

CKPT_DIR = "checkpoints"
RUN_CONFIG = "train_config.json"  # the config a run started with
STATE_FILE = "trainer_state.pt"


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def build_model(cfg: TrainConfig, samples):
    m = cfg.model
    storm = {**m.storm, "num_frames": cfg.data.num_frames}
    if m.init == "tiny":
        from ..testing import build_word_tokenizer, tiny_config

        # The vocabulary is the training data's own words (plus what the processor writes), so a
        # tiny model trains on any data, not only on the synthetic tasks.
        texts = [t for s in samples for t in (s.question, s.answer, *(s.options or []), *sum(s.history, ()))]
        tok = build_word_tokenizer(texts)
        config = tiny_config(tok, m.tiny, **storm)
        model = StormForConditionalGeneration(config)
        return model, StormProcessor(tok, config)
    if m.init == "pretrained":
        model = StormForConditionalGeneration.from_folder(m.path)
        model.config.with_overrides(storm, where="model.storm")
        return model, StormProcessor.from_pretrained(m.path, model.config)
    model, tok = StormForConditionalGeneration.from_parts(m.vision_path, m.llm_path, **storm)
    return model, StormProcessor(tok, model.config)


def load_trainer_state(path: Path) -> dict:
    """Optimizer, scheduler, step counters and RNG state of a checkpoint. Only tensors and plain
    containers load (`weights_only=True`): a crafted pickle in an output folder must not run."""
    import pickle

    try:
        state = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ModelFolderError(
            f"{path}: not a loadable trainer state, refusing to resume from it ({first_line(e)})"
        ) from None
    need = {"optimizer", "scheduler", "stage", "stage_step", "global_step", "torch_rng"}
    if not isinstance(state, dict) or not need <= set(state):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ModelFolderError(f"{path}: not a stormvl trainer state (has {have}); refusing to resume from it")
    return state


def _truncate_log(path: Path, global_step: int) -> None:
    """Keep only the log lines up to `global_step`: a run interrupted after its last checkpoint
    logged steps that the resumed run trains (and logs) again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["global_step"] <= global_step:
                keep.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line cut off by the interruption
    write_atomic(path, keep)


def latest_checkpoint(output_dir) -> Path | None:
    d = Path(output_dir) / CKPT_DIR
    done = sorted(p for p in d.glob("step_*") if (p / STATE_FILE).is_file() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def _same_setting(now, before) -> bool:
    """Recorded and current config values agree. A key one side lacks counts as None there, so a
    setting added to stormvl since the run started (left at its None default) does not block
    resuming it."""
    if isinstance(now, dict) and isinstance(before, dict):
        return all(_same_setting(now.get(k), before.get(k)) for k in set(now) | set(before))
    if isinstance(now, list) and isinstance(before, list):
        return len(now) == len(before) and all(_same_setting(a, b) for a, b in zip(now, before))
    return now == before


def set_trainable(model: StormForConditionalGeneration, what: str):
    """'projector': the alignment stage, vision tower and LLM frozen; 'temporal_encoder': only the
    encoder trains; 'lora': 'projector' plus the LLM's LoRA adapters; 'all': everything trains."""
    for p in model.parameters():
        p.requires_grad_(what == "all")
    if what == "temporal_encoder" and model.temporal_encoder is None:
        raise ConfigError("train: temporal_encoder needs a model with a temporal encoder (use_temporal_encoder)")
    if what in ("projector", "lora", "temporal_encoder"):
        mods = [model.temporal_encoder] if what == "temporal_encoder" else [model.projector, model.temporal_encoder]
        for mod in mods:
            if mod is not None:
                for p in mod.parameters():
                    p.requires_grad_(True)
    if what == "lora":
        for p in lora.lora_parameters(model):
            p.requires_grad_(True)


def lr_lambda(warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True):
        self.cfg = cfg
        self.world, self.rank, self.local_rank = _dist_info()
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.progress = progress and self.rank == 0
        self.out = Path(cfg.output_dir)
        # Every rank checks (and refuses) alike: rank 0 records the config before it writes anything
        # else, so a rank that sees this run's own files also sees its config.
        self._check_not_foreign()
        self.finished = (self.out / "final").is_dir()
        if self.finished:  # nothing to train: neither the data nor the model is read
            self._check_same_run()
            return
        # Each stage reads its own files (stage.data) or data.train; a file list is read once.
        self._samples: dict[tuple, list] = {}
        for stage in cfg.stages:
            self.samples_for(stage)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.resume_from = latest_checkpoint(self.out)
        self._check_same_run()
        if self.resume_from is not None:
            self.model = StormForConditionalGeneration.from_folder(self.resume_from)
            self.processor = StormProcessor.from_pretrained(self.resume_from, self.model.config)
        else:
            self.model, self.processor = build_model(cfg, [s for ss in self._samples.values() for s in ss])
        self.model.to(self.device)
        self.datasets: dict[tuple, VideoQADataset] = {}
        self._frame_cache: dict = {}

    def _check_not_foreign(self):
        """A run writes log.jsonl, checkpoints/ and final/ into its output folder (and would replace
        them): where those names exist, the folder must hold a run, found by the config it recorded.
        Other files (the run's YAML, notes) are the user's and stay. Checked before the data is read,
        like eval's --out."""
        ours = ("log.jsonl", CKPT_DIR, "final", "final.tmp")
        if self.out.is_dir() and not (self.out / RUN_CONFIG).exists():
            taken = sorted(n for n in ours if (self.out / n).exists())
            if taken:
                raise ConfigError(
                    f"output_dir: {self.out} already holds {', '.join(taken)} but no {RUN_CONFIG} of a stormvl "
                    "train run; use a new output_dir (nothing was changed)"
                )

    def _check_same_run(self):
        """An output folder holds one run: resuming it under a changed config (other data, model or
        stages) would silently continue the old run. The first start records its config."""
        cfg = dataclasses.asdict(self.cfg)
        cfg.pop("output_dir")
        path = self.out / RUN_CONFIG
        if path.exists():
            try:
                before = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ConfigError(
                    f"{path}: unreadable (cut short?); it records the run this folder holds: "
                    "use a new output_dir, or remove the folder to start over"
                ) from None
            changed = sorted(k for k in set(cfg) | set(before) if not _same_setting(cfg.get(k), before.get(k)))
            if changed:
                raise ConfigError(
                    f"{self.out}: holds a run with another config ({', '.join(changed)} differ); "
                    "use a new output_dir, or remove it to start over"
                )
        elif self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(cfg, indent=2) + "\n")

    # -- data ----------------------------------------------------------------------------------
    def _files(self, stage) -> tuple:
        return tuple(stage.data or self.cfg.data.train)

    def samples_for(self, stage):
        files = self._files(stage)
        if files not in self._samples:
            samples = read_training_samples(files, self.cfg.data.video_root)
            missing = [s.video for s in samples if not os.path.isfile(s.video)]
            if len(missing) == len(samples):
                raise DataFormatError(f"none of the {len(samples)} videos named in {list(files)} exist ({missing[0]})")
            if missing and self.rank == 0:
                warnings.warn(
                    f"{len(missing)} of {len(samples)} training videos do not exist (first: {missing[0]})", stacklevel=2
                )
            self._samples[files] = samples
        return self._samples[files]

    def dataset(self, stage, frames: int) -> VideoQADataset:
        key = (self._files(stage), frames)
        if key not in self.datasets:
            c = self.model.config
            self.datasets[key] = VideoQADataset(
                self.samples_for(stage), frames, cache=self._frame_cache, size=c.vision_config.image_size,
                resample=c.decode_resample,
            )  # fmt: skip
        return self.datasets[key]

    def batch_indices(self, stage_idx: int, step: int) -> list[tuple[int, bool]]:
        """This rank's (sample index, open-ended?) pairs for one step: a fresh permutation per pass
        over the data."""
        n, b = len(self.samples_for(self.cfg.stages[stage_idx])), self.cfg.batch_size
        per_step = b * self.world
        start = step * per_step + self.rank * b
        out = []
        for pos in range(start, start + b):
            epoch, k = divmod(pos, n)
            perm = np.random.default_rng([self.cfg.seed, stage_idx, epoch]).permutation(n)
            open_ended = (
                np.random.default_rng([self.cfg.seed, stage_idx, pos, 1]).random() < self.cfg.data.open_ended_ratio
            )
            out.append((int(perm[k]), bool(open_ended)))
        return out

    def collate(self, ds, picks, temporal_sample: int = 1):
        items = []
        for i, open_ended in picks:
            it = ds[i]
            if it is None:
                continue
            frames, q, opts, ans, history, times = it
            if open_ended and opts:
                opts, ans = None, opts[OPTION_LETTERS.index(ans)]
            items.append((frames, q, opts, ans, history, times))
        if not items:
            return None
        frames, questions, options, answers, histories, times = zip(*items)
        prompts = [self.processor.prompt_text(*it) for it in zip(questions, options, histories, times)]
        return self.processor(list(frames), prompts, answers=list(answers), temporal_sample=temporal_sample)

    # -- checkpoints ---------------------------------------------------------------------------
    def _unwrapped(self, model):
        return model.module if hasattr(model, "module") else model

    def _full_state(self, wrapped):
        if self.world > 1 and self.cfg.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return None

    def save(self, wrapped, optimizer, scheduler, stage_idx, stage_step, global_step, final=False):
        full = self._full_state(wrapped)
        if self.rank == 0:
            name = "final" if final else f"{CKPT_DIR}/step_{global_step:08d}"
            target = self.out / name
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model = self._unwrapped(wrapped)
            model.save_pretrained(tmp, state_dict=full)
            self.processor.save_pretrained(tmp)
            if not final:
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "stage": stage_idx,
                        "stage_step": stage_step,
                        "global_step": global_step,
                        "torch_rng": torch.get_rng_state(),
                    },
                    tmp / STATE_FILE,
                )
            old = target.with_name(target.name + ".old")
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            if not final:  # keep the two newest checkpoints
                ckpts = sorted((self.out / CKPT_DIR).glob("step_????????"))
                for p in ckpts[:-2]:
                    shutil.rmtree(p, ignore_errors=True)
        if self.world > 1:
            dist.barrier()

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> Path | None:
        """Train all stages; `stop_after` global steps simulates an interruption (for tests)."""
        cfg = self.cfg
        final = self.out / "final"
        if self.finished:  # training again would replace its model and log
            if self.rank == 0:
                print(f"{self.out}: this run has finished already, nothing to train (its model is {final}; "
                      "use a new output_dir to train again)", flush=True)  # fmt: skip
            return final
        state = None
        if self.resume_from is not None:
            state = load_trainer_state(self.resume_from / STATE_FILE)
            if self.rank == 0:
                print(f"resuming from {self.resume_from} (step {state['global_step']})", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        global_step = state["global_step"] if state else 0
        if self.rank == 0:
            _truncate_log(self.out / "log.jsonl", global_step)
        log = open(self.out / "log.jsonl", "a") if self.rank == 0 else None
        wrapped = self.model
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()
        for si, stage in enumerate(cfg.stages):
            if state and si < state["stage"]:
                continue
            start_step = state["stage_step"] if state and si == state["stage"] else 0
            if start_step >= stage.steps:
                continue
            model = self._unwrapped(self.model)
            if stage.train == "lora" and not lora.has_lora(model):
                lora.add_lora(model, stage.lora or lora.LoraSettings())
                model.to(self.device)
            set_trainable(model, stage.train)
            frames = stage.num_frames or cfg.data.num_frames
            changes = {"num_frames": frames}
            if stage.temporal_pool is not None:
                changes["temporal_pool"] = stage.temporal_pool
            model.config.with_overrides(changes, where=f"stage {stage.name}")
            wrapped = self._wrap(model)
            params = [p for p in wrapped.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lr_lambda(min(cfg.warmup_steps, stage.steps // 2), stage.steps)
            )
            if state and si == state["stage"]:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                torch.set_rng_state(state["torch_rng"])
            ds = self.dataset(stage, frames)
            bar = None
            if self.progress:
                from tqdm import tqdm

                bar = tqdm(
                    total=stage.steps,
                    initial=start_step,
                    desc=f"stage {si + 1}/{len(cfg.stages)} {stage.name}",
                    unit="step",
                    dynamic_ncols=True,
                )
            wrapped.train()
            t0 = time.time()
            empty = 0
            for step in range(start_step, stage.steps):
                batch = self.collate(ds, self.batch_indices(si, step), stage.temporal_sample or 1)
                if not self._all_ranks_have(batch is not None):
                    empty += 1  # every rank skips together: a lone rank in all-reduce would hang
                    continue
                batch = move_batch(batch, self.device)
                with autocast:
                    loss = wrapped(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                global_step += 1
                last = step == stage.steps - 1
                logged = step % cfg.log_every == 0 or last
                saving = global_step % cfg.save_every == 0 or last or (stop_after and global_step >= stop_after)
                if bar is not None:
                    bar.update(1)
                if not (logged or saving):
                    # No host sync between logged steps: on a GPU the Python loop queues the next
                    # steps while this one runs. Divergence is caught at the next check, which
                    # comes before anything is saved.
                    continue
                lv = loss.detach()
                if self.world > 1:
                    dist.all_reduce(lv)
                    lv /= self.world
                if not torch.isfinite(lv):  # every rank sees the reduced value, so all stop together
                    raise ConfigError(
                        f"stage {stage.name}, step {step}: the loss is {lv.item()} (training diverged: lower the "
                        "learning rate, or check the data and the model folder); nothing was saved from this step"
                    )
                if bar is not None:
                    bar.set_postfix(loss=f"{lv.item():.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
                if log and logged:
                    log.write(
                        json.dumps(
                            {
                                "stage": stage.name,
                                "step": step,
                                "global_step": global_step,
                                "loss": round(lv.item(), 6),
                                "lr": sched.get_last_lr()[0],
                                "elapsed_s": round(time.time() - t0, 2),
                            }
                        )
                        + "\n"
                    )
                    log.flush()
                if saving:
                    self.save(wrapped, opt, sched, si, step + 1, global_step)
                if stop_after and global_step >= stop_after:
                    if bar is not None:
                        bar.close()
                    return None
            if bar is not None:
                bar.close()
            if empty == stage.steps - start_step:
                raise DataFormatError(
                    f"stage {stage.name}: trained 0 steps, no sample's video could be decoded (see the warnings above)"
                )
            if empty:
                warnings.warn(
                    f"stage {stage.name}: {empty} of {stage.steps - start_step} steps had no usable sample",
                    stacklevel=2,
                )
            state = None
        self.save(wrapped, None, None, len(cfg.stages), 0, global_step, final=True)
        if log:
            log.close()
        return self.out / "final"

    def _all_ranks_have(self, ok: bool) -> bool:
        if self.world == 1:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _wrap(self, model):
        if self.world == 1:
            return model
        if self.cfg.strategy == "fsdp":
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            return FSDP(model, use_orig_params=True, device_id=self.device if self.device.type == "cuda" else None)
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)


def train(cfg: TrainConfig, progress: bool = True, stop_after: int | None = None):
    trainer = Trainer(cfg, progress=progress)
    try:
        return trainer.run(stop_after=stop_after)
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
