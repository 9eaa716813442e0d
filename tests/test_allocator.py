import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Encodes of 1, 4 and 2 clips in a thread, as the server's encoder runs them: minor page faults
# over the later rounds, with or without keep_freed_memory.
SCRIPT = """
import resource, sys, threading
import torch
import stormvl
from stormvl.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
pipe = stormvl.load()
clip = pipe.load_clip("examples/clip.mp4", 16)
faults = []
def work():
    with torch.inference_mode():
        for n in (1, 4, 2, 4):
            pipe.encode([clip] * n)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(2):
            for n in (1, 4, 2, 4):
                pipe.encode([clip] * n)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work)
t.start()
t.join()
print(faults[0])
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only")
def test_kept_memory_is_not_faulted_in_again_by_each_encode():
    plain, kept = faults("plain"), faults("kept")
    if plain < 2000:
        pytest.skip(f"this C library kept the memory by itself ({plain} faults)")
    assert kept * 20 < plain, (kept, plain)


def test_off_glibc_or_tuned_by_the_user_nothing_changes(monkeypatch):
    from stormvl import allocator

    monkeypatch.setattr(allocator.ctypes, "CDLL", None)  # would fail if it reached the C library
    for env in ({"MALLOC_MMAP_THRESHOLD_": "1048576"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False


def test_serve_keeps_freed_memory_before_loading_the_model(monkeypatch):
    from stormvl import allocator, cli, pipeline

    class Called(Exception):
        pass

    def called():
        raise Called

    def loaded(*a, **k):
        raise AssertionError("the model was loaded before the allocator was set")

    monkeypatch.setattr(allocator, "keep_freed_memory", called)
    monkeypatch.setattr(pipeline, "load", loaded)
    with pytest.raises(Called):
        cli.main(["serve", "--port", "0"])
