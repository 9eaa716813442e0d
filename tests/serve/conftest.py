import shutil
from pathlib import Path

import pytest

from stormvl.testing import start_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "clip.mp4"
API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    """The allowed directory: a copy of the example clip, and a symlink that leaves it."""
    d = tmp_path_factory.mktemp("media")
    shutil.copy(EXAMPLE, d / "clip.mp4")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(EXAMPLE, outside / "secret.mp4")
    (d / "escape.mp4").symlink_to(outside / "secret.mp4")
    return d, outside


@pytest.fixture(scope="session")
def server(media_dir):
    proc, url = start_server("--allowed-local-media-path", media_dir[0], "--api-key", API_KEY, "--max-frames", "64",
                             "--max-upload-mb", "2")  # fmt: skip
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
