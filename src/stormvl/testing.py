"""Tiny STORM models and word-level tokenizers, built locally: for tests, for the synthetic
ablations, and for the embedded default model. Nothing here downloads anything."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import StormConfig
from .processing import MC_INSTRUCTION, OPTION_LETTERS, PLAIN_TEMPLATE, time_text

SPECIAL = ["<pad>", "<unk>", "<eos>", "<video>"]


@dataclass
class TinySize:
    """Sizes of a tiny STORM (a training config's `model.tiny`)."""

    llm: str = "qwen2"  # "qwen2" or "llama"
    hidden: int = 64  # LLM width
    llm_layers: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 4


def build_word_tokenizer(texts, extra_words=()):
    """A word-level tokenizer over every word (and punctuation mark) in `texts`, plus the words the
    processor itself writes (the plain chat template, the multiple-choice instruction, option
    letters, the frames' times), so any prompt built from these texts tokenizes without `<unk>`.
    Digits are words of their own, so every number reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(extra_words) | set(OPTION_LETTERS) | set("0123456789")
    for t in [*texts, PLAIN_TEMPLATE, MC_INSTRUCTION, time_text(1.0, [0.0])]:
        words.update(re.findall(r"\d|[^\W\d]+|[^\w\s]", t))
    words -= {"prompt"}  # PLAIN_TEMPLATE's format field, never text
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(words - set(SPECIAL)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<eos>",
        additional_special_tokens=["<video>"],
    )


def tiny_config(tokenizer, size: TinySize | str | None = None, **storm_kwargs) -> StormConfig:
    """A small STORM configuration with a SigLIP vision tower and a Qwen2 or Llama LM (`size` may
    be just the LM's name, "qwen2" or "llama")."""
    z = TinySize(llm=size) if isinstance(size, str) else size or TinySize()
    heads = max(1, z.hidden // 32)
    text = dict(
        model_type=z.llm,
        vocab_size=len(tokenizer),
        hidden_size=z.hidden,
        intermediate_size=4 * z.hidden,
        num_hidden_layers=z.llm_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=z.vision_hidden,
        intermediate_size=4 * z.vision_hidden,
        num_hidden_layers=z.vision_layers,
        num_attention_heads=max(1, z.vision_hidden // 16),
        image_size=z.image_size,
        patch_size=z.patch_size,
    )
    kw = dict(mamba_state_size=16, mamba_head_dim=16, mamba_chunk_size=64, temporal_layers=1, num_frames=8)
    kw.update(storm_kwargs)
    return StormConfig(
        vision_config=vision,
        text_config=text,
        video_token="<video>",
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        **kw,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args, env=None, cwd=None, timeout=120):
    """`stormvl serve ARGS` on a free port of 127.0.0.1; returns (process, base URL) once /health
    answers. For tests and benchmarks; stop it with `process.terminate()`."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stormvl.cli", "serve", "--port", str(port), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **(env or {})), cwd=cwd,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited: " + proc.stdout.read())
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not start within {timeout} s")
