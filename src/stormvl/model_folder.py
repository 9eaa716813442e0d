"""What a saved STORM model folder must hold, checked without importing torch, so a wrong
`--model` is a one-line error before seconds of imports and loading."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelFolderError

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def check_model_folder(path) -> Path:
    """`path` as a Path if it looks like a STORM model folder, else ModelFolderError naming what is
    missing. Weights must be safetensors: pickled `.bin` weights are refused, never loaded."""
    path = Path(path)
    if not path.exists():
        raise ModelFolderError(f"{path}: model folder not found")
    if not path.is_dir():
        raise ModelFolderError(f"{path}: is a file, not a model folder")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelFolderError(f"{path}: not a STORM model folder (no config.json)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("model_type") != "storm":
        kind = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise ModelFolderError(f"{path}: not a STORM model folder (config.json model_type is {kind!r}, not 'storm')")
    if not any((path / w).is_file() for w in WEIGHTS):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        why = f"only pickled weights {pickled}, which stormvl does not load" if pickled else "no model.safetensors"
        raise ModelFolderError(f"{path}: {why}")
    if not (path / "tokenizer_config.json").is_file():
        raise ModelFolderError(f"{path}: no tokenizer (tokenizer_config.json) saved with the model")
    return path
