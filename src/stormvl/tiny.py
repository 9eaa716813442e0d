"""Tiny STORM models and word-level tokenizers, built locally: for tests, for the synthetic
ablations, and for the embedded default model. Nothing here downloads anything."""
from __future__ import annotations

import re

from .config import StormConfig

SPECIAL = ["<pad>", "<unk>", "<eos>", "<video>"]


def build_word_tokenizer(texts, extra_words=()):
    """A word-level tokenizer over every word (and punctuation mark) in `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(extra_words)
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]", t))
    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(words - set(SPECIAL)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   additional_special_tokens=["<video>"])


def tiny_config(tokenizer, llm: str = "qwen2", *, hidden: int = 64, llm_layers: int = 2, vision_hidden: int = 32,
                vision_layers: int = 2, image_size: int = 32, patch_size: int = 4, **storm_kwargs) -> StormConfig:
    """A small STORM configuration with a SigLIP vision tower and a Qwen2 or Llama LM."""
    heads = max(1, hidden // 32)
    text = dict(model_type=llm, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                num_hidden_layers=llm_layers, num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=4096, tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.eos_token_id)
    vision = dict(model_type="siglip_vision_model", hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                  num_hidden_layers=vision_layers, num_attention_heads=max(1, vision_hidden // 16),
                  image_size=image_size, patch_size=patch_size)
    kw = dict(mamba_state_size=16, mamba_head_dim=16, mamba_chunk_size=64, temporal_layers=1, num_frames=8)
    kw.update(storm_kwargs)
    return StormConfig(vision_config=vision, text_config=text, video_token="<video>",
                       video_token_id=tokenizer.convert_tokens_to_ids("<video>"), **kw)
