"""The device a user named, checked once, before anything is loaded onto it."""

from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1", "mps") as a usable torch.device, or InputError saying why not."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"device {name!r}: not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name}: stormvl runs on cpu, cuda or mps")
    return device
