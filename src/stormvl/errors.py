"""What a user can get wrong, as one exception tree.

Everything below `StormError` is caused by input a user chose (a video, a config, an annotation
file, a model folder, an argument) and carries a message that names the input and the problem on
its first line. The CLI turns exactly these into one line on stderr and exit status 2; any other
exception is a bug in stormvl and keeps its traceback.

Each class also derives from the built-in exception a Python caller would expect (`ValueError`,
`FileNotFoundError`), so `except ValueError` around library calls keeps working.
"""

from __future__ import annotations

__all__ = [
    "StormError",
    "first_line",
    "InputError",
    "MissingFileError",
    "VideoError",
    "ConfigError",
    "DataFormatError",
    "BenchmarkFormatError",
    "ModelFolderError",
]


class StormError(Exception):
    """Root of every error a user can cause."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its class name): what a one-line error quotes
    of a library's longer report."""
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


class InputError(StormError, ValueError):
    """A bad argument: an out-of-range count, an unknown name, a prompt that does not fit."""


class MissingFileError(StormError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class VideoError(StormError, ValueError):
    """A video cannot be used: missing, empty, not a video, audio-only, or nothing decodes."""


class ConfigError(StormError, ValueError):
    """A configuration (training YAML/JSON, StormConfig keys or values) is invalid."""


class DataFormatError(StormError, ValueError):
    """A training annotation file is malformed."""


class BenchmarkFormatError(DataFormatError):
    """A benchmark annotation file is malformed, or the benchmark is unknown."""


class ModelFolderError(StormError, ValueError):
    """A folder given as a STORM model is not one (no config.json, broken weights, ...)."""
