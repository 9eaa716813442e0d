"""Typed training configuration, read from YAML or JSON. Unknown keys are errors, not ignored."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_overrides
from ..errors import ConfigError
from ..frame_plan import MAX_FRAMES
from ..model_folder import check_model_folder
from ..models.lora import LoraSettings
from ..testing import TinySize

STAGE_KINDS = ("projector", "temporal_encoder", "lora", "all")  # what a stage trains (StageConfig.train)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # annotation files: MC records or LLaVA conversations (.json/.jsonl)
    video_root: str | None = None  # default: each annotation file's folder
    num_frames: int = 16
    # Fraction of multiple-choice samples shown open-ended (question only, answer = option text):
    # direct supervision of what was seen, which a small LM learns far faster than letter picking.
    open_ended_ratio: float = 0.0


@dataclass
class ModelConfig:
    init: str = "tiny"  # "tiny" (new small model), "pretrained" (a STORM folder), "parts"
    path: str | None = None  # STORM folder for init=pretrained
    vision_path: str | None = None  # for init=parts
    llm_path: str | None = None  # for init=parts
    tiny: TinySize = field(default_factory=TinySize)  # sizes for init=tiny
    storm: dict = field(default_factory=dict)  # StormConfig fields to set (pooling, encoder on/off, ...)


@dataclass
class StageConfig:
    name: str = "sft"
    # "projector": projector + temporal encoder only (alignment); "temporal_encoder": the encoder
    # only (STORM added to a trained video LLM); "lora": projector, encoder and LoRA adapters on the
    # frozen LLM; "all": everything.
    train: str = "all"
    steps: int = 100
    lr: float = 1e-3
    num_frames: int | None = None  # default: data.num_frames
    temporal_pool: int | None = None  # switch pooling on for this stage (e.g. the long-video stage)
    # Test-time sampling is test-time only (the paper's): training reads every pooled frame unless a
    # stage asks for a stride here, whatever the model's saved temporal_sample says.
    temporal_sample: int | None = None
    data: list[str] | None = None  # this stage's annotation files (default: data.train)
    lora: LoraSettings | None = None  # adapter settings for train: lora (default: LoraSettings())


@dataclass
class TrainConfig:
    output_dir: str = "runs/storm"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    batch_size: int = 8  # per process
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    strategy: str = "ddp"  # "ddp" or "fsdp" when more than one process runs
    dtype: str = "float32"  # "float32" or "bfloat16" (autocast)

    def validate(self):
        if not self.data.train:
            raise ConfigError("data.train: name at least one annotation file")
        if self.model.init not in ("tiny", "pretrained", "parts"):
            raise ConfigError(f"model.init must be tiny, pretrained or parts, not {self.model.init!r}")
        if self.model.init == "pretrained" and not self.model.path:
            raise ConfigError("model.path is required with init: pretrained")
        if self.model.init == "parts" and not (self.model.vision_path and self.model.llm_path):
            raise ConfigError("model.vision_path and model.llm_path are required with init: parts")
        if self.model.init == "parts":
            for name in ("vision_path", "llm_path"):
                folder = Path(getattr(self.model, name))
                if not (folder / "config.json").is_file():
                    # A name that is not a local folder would be looked up on a model hub: never silently.
                    raise ConfigError(f"model.{name}: {folder} is not a local model folder (no config.json)")
        if self.model.init == "pretrained":
            check_model_folder(self.model.path)
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output_dir: {out} exists and is not a folder")
        existing = next(p for p in (out, *out.parents) if p.exists())
        if not os.access(existing, os.W_OK):  # found now, not after the data is read and the model built
            raise ConfigError(f"output_dir: {existing} is not writable")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"strategy must be ddp or fsdp, not {self.strategy!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, not {self.dtype!r}")
        if not self.stages:
            raise ConfigError("stages: give at least one stage")
        for s in self.stages:
            if s.train not in STAGE_KINDS:
                raise ConfigError(f"stage {s.name}: train must be one of {list(STAGE_KINDS)}, not {s.train!r}")
            if s.lora is not None and s.train != "lora":
                raise ConfigError(f"stage {s.name}: lora settings need train: lora")
            if s.lora is not None and (s.lora.r < 1 or s.lora.alpha <= 0 or not 0 <= s.lora.dropout < 1):
                raise ConfigError(f"stage {s.name}: lora needs r >= 1, alpha > 0 and dropout in [0, 1)")
            if s.train == "lora" and self.strategy == "fsdp":
                raise ConfigError(f"stage {s.name}: LoRA stages run under ddp, not fsdp")
            if s.steps < 1 or s.lr <= 0:
                raise ConfigError(f"stage {s.name}: steps must be >= 1 and lr > 0")
        if not 0.0 <= self.data.open_ended_ratio <= 1.0:
            raise ConfigError("data.open_ended_ratio must be in [0, 1]")
        if self.batch_size < 1 or not 1 <= self.data.num_frames <= MAX_FRAMES:
            raise ConfigError(f"batch_size must be >= 1 and data.num_frames in [1, {MAX_FRAMES}]")
        for name, low in (("save_every", 1), ("log_every", 1), ("seed", 0), ("warmup_steps", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for s in self.stages:
            for name in ("temporal_pool", "temporal_sample"):
                if getattr(s, name) is not None and getattr(s, name) < 1:
                    raise ConfigError(f"stage {s.name}: {name} must be >= 1, got {getattr(s, name)}")
            if s.num_frames is not None and not 1 <= s.num_frames <= MAX_FRAMES:
                raise ConfigError(f"stage {s.name}: num_frames must be in [1, {MAX_FRAMES}], got {s.num_frames}")
        reserved = sorted(set(self.model.storm) & {"vision_config", "text_config", "video_token", "video_token_id"})
        if reserved:
            raise ConfigError(f"model.storm: {reserved} come from the backbones and tokenizer, not the config")
        if "num_frames" in self.model.storm:
            raise ConfigError(
                "model.storm.num_frames: set the frame count in data.num_frames (or a stage's num_frames)"
            )
        return self


def _convert(hint, v, where):
    """`v` as the annotated type `hint`, or a ConfigError naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], v, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, v, where)
    if origin is list:
        if isinstance(v, str) and args[0] is str:
            v = [v]  # a single file name where a list is expected
        if not isinstance(v, list):
            raise ConfigError(f"{where}: expected a list, got {type(v).__name__}")
        return [_convert(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict or hint is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(v).__name__}")
        return v
    if hint is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if hint in (int, float, str, bool) and (not isinstance(v, hint) or (hint is int and isinstance(v, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {v!r}")
    return v


def _build(cls, data, where):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def load_train_config(path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ConfigError(f"{path}: cannot parse ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    data = data or {}
    cfg = _build(TrainConfig, data, str(path))
    check_overrides(cfg.model.storm, f"{path}: model.storm")

    # Relative paths in the file (data, output_dir) are relative to the config file, so a run
    # does not depend on the directory it was started from.
    def rel(p):
        return p if p is None or Path(p).is_absolute() else str((path.parent / p).resolve())

    cfg.data.train = [rel(p) for p in cfg.data.train]
    for stage in cfg.stages:
        if stage.data is not None:
            stage.data = [rel(p) for p in stage.data]
    cfg.output_dir = rel(cfg.output_dir) if "output_dir" in data else cfg.output_dir
    cfg.data.video_root = rel(cfg.data.video_root)
    cfg.model.path = rel(cfg.model.path)
    cfg.model.vision_path = rel(cfg.model.vision_path)
    cfg.model.llm_path = rel(cfg.model.llm_path)
    return cfg.validate()
