"""stormvl: STORM (arXiv 2503.04130) for long-video question answering.

The public names load on first use, so `import stormvl` and `stormvl --help` do not pay for
importing torch and transformers (seconds) until something needs them.
"""

from __future__ import annotations

import importlib

from .errors import StormError, VideoError

__version__ = "0.1.0"

_LAZY = {
    "StormConfig": ".config",
    "StormForConditionalGeneration": ".models.storm",
    "StormProcessor": ".processing",
    "parse_letter": ".processing",
    "StormPipeline": ".pipeline",
    "Answer": ".pipeline",
    "load": ".pipeline",
    "load_video": ".video",
}

__all__ = [*_LAZY, "StormError", "VideoError", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stormvl' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
