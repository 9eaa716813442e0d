import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "clip.mp4"
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args, env=None):
    """`stormvl serve` on a free port of 127.0.0.1; returns (process, base URL) once /health answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stormvl.cli", "serve", "--port", str(port), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **(env or {})),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited: " + proc.stdout.read())
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


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
