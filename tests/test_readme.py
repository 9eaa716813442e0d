"""The README's examples run as written (the setup block itself is what .ci/run executes)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(heading: str, lang: str) -> str:
    section = README[README.index(heading) :]
    return re.search(rf"```{lang}\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.slow
def test_python_example_answers_the_bundled_clip():
    r = subprocess.run(
        [sys.executable, "-c", _block("## Use", "python")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    letter, *text, tokens = r.stdout.split()
    assert (letter, text) == ("B", ["B.", "right"]) and int(tokens) == 16


@pytest.mark.slow
def test_training_example_runs_offline(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for line in _block("### Training", "bash").strip().splitlines():
        r = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, (line, r.stderr[-2000:])
    assert (tmp_path / "runs" / "tiny" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "eval" / "summary.json").is_file()
