"""The lean decode step (stormvl.fast_decode) against transformers' own forward, its reference."""

import pytest
import torch

from stormvl.generation import _forward_args

ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},  # scales attention too
}  # fmt: skip


def small_lm(arch="llama", rope=None, kv_heads=2, **kw):
    """A random 2-layer LLM with grouped-query attention (4 query heads, `kv_heads` KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    extra = {} if rope is None else {"rope_parameters": {"rope_theta": 10000.0, **rope}}
    cfg = config_cls(
        vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256, **extra, **kw,
    )  # fmt: skip
    return model_cls(cfg).eval().double()


def prompts(lengths):
    """Left-padded random prompts: (ids, mask) with 0 in the mask at the padding, (B, L) each."""
    width = max(lengths)
    ids = torch.randint(0, 50, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    return ids, mask


def forward(lm, ids, mask, pos, cache=None):
    """The model's own forward: (its cache, the last logits (B, vocab))."""
    name = _forward_args(type(lm))[0]  # `cache` in transformers 5, `past_key_values` before
    out = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **({name: cache} if cache else {}))
    return out[name], out.logits[:, -1]


def prefill(lm, ids, mask):
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    cache, logits = forward(lm, ids, mask, pos)
    return cache, pos[:, -1:] + 1, logits


def reference_steps(lm, cache, mask, pos, tokens):
    """The model's forward, one position at a time: the logits after each of `tokens` (steps, B)."""
    out = []
    for t in tokens:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        cache, logits = forward(lm, t[:, None], mask, pos, cache)
        pos = pos + 1
        out.append(logits)
    return out


@pytest.mark.parametrize("arch,rope,kv_heads", [
    ("llama", "default", 2), ("llama", "default", 4), ("llama", "llama3", 2), ("llama", "linear", 1),
    ("llama", "yarn", 2), ("qwen2", "default", 2),
])  # fmt: skip
@torch.inference_mode()
def test_steps_equal_the_models_forward(arch, rope, kv_heads):
    """Rows of different lengths (left-padded), grouped-query attention, each rotary scaling: every
    step's logits are the model's own (float64), and so is the cache the steps leave."""
    from stormvl.fast_decode import FastSteps, _kv

    lm = small_lm(arch, ROPES[rope], kv_heads)
    ids, mask = prompts([5, 9, 2])
    tokens = torch.randint(0, 50, (6, 3))  # (steps, B)
    cache, pos, _ = prefill(lm, ids, mask)
    ref = reference_steps(lm, cache, mask, pos, tokens)
    ref_kv = [(k.clone(), v.clone()) for k, v in _kv(cache)]

    cache, pos, _ = prefill(lm, ids, mask)
    steps = FastSteps.start(lm, cache, mask, capacity=9 + len(tokens))
    assert steps is not None
    for i, t in enumerate(tokens):
        torch.testing.assert_close(steps.step(t, pos + i), ref[i], rtol=1e-9, atol=1e-9)
    steps.sync()
    for (k, v), (k_ref, v_ref) in zip(_kv(cache), ref_kv):  # both end at the last token fed
        torch.testing.assert_close(k, k_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(v, v_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rope,kv_heads", [("default", 2), ("llama3", 1), ("yarn", 4)])
@torch.inference_mode()
def test_a_chats_new_turn_equals_the_models_forward(rope, kv_heads):
    """A follow-up's new tokens in one call (causal among themselves, after the cached turn), past
    the buffers' first capacity, then a step: the model's own logits and cache (float64)."""
    from stormvl.fast_decode import FastSteps, _kv

    lm = small_lm("llama", ROPES[rope], kv_heads)
    ids, mask = prompts([6])
    new = torch.randint(0, 50, (1, 5))
    cache, pos, _ = prefill(lm, ids, mask)
    cache, ref = forward(lm, new, None, pos + torch.arange(5), cache)
    cache, ref_next = forward(lm, new[:, :1], None, pos + 5, cache)

    cache, pos, _ = prefill(lm, ids, mask)
    steps = FastSteps.start(lm, cache, None, capacity=7)
    steps.reserve(12)  # the turn needs more room than the first reply had
    emb = lm.get_input_embeddings()
    torch.testing.assert_close(steps.forward(emb(new), pos + torch.arange(5)), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(steps.step(new[:, 0], pos + 5), ref_next, rtol=1e-9, atol=1e-9)
    steps.keep(8)  # a later turn that parts from this one after 8 positions
    assert cache.get_seq_length() == 8 and steps.length == 8
    torch.testing.assert_close(_kv(cache)[1][0], _kv(forward(lm, torch.cat([ids, new[:, :2]], 1), None, None)[0])[1][0])


@torch.inference_mode()
def test_the_cache_is_not_held_twice_and_the_buffers_are_bounded():
    from stormvl.fast_decode import FastSteps, _kv

    lm = small_lm()
    cache, pos, logits = prefill(lm, *prompts([4]))
    steps = FastSteps.start(lm, cache, None, capacity=6)
    # The model's cache now views the buffers: one copy of the KV memory, not two.
    assert _kv(cache)[0][0].data_ptr() == steps.keys[0].data_ptr()
    t = logits.argmax(-1)
    for i in range(2):
        t = steps.step(t, pos + i).argmax(-1)
    with pytest.raises(RuntimeError, match="buffers are full"):
        steps.step(t, pos + 2)


def test_models_it_does_not_compute_exactly_keep_their_own_forward():
    from peft import LoraConfig, get_peft_model

    from stormvl import fast_decode

    assert fast_decode.supported(small_lm("llama"))
    assert fast_decode.supported(small_lm("qwen2"))
    assert not fast_decode.supported(small_lm("llama", {"rope_type": "dynamic", "factor": 2.0}))
    assert not fast_decode.supported(small_lm("qwen2", use_sliding_window=True, sliding_window=8))
    assert not fast_decode.supported(small_lm("llama", hidden_act="gelu"))
    lora = get_peft_model(small_lm(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not fast_decode.supported(lora.get_base_model())  # LoRA layers: their adapters must run
    hooked = small_lm()
    hooked.model.layers[1].mlp.register_forward_hook(lambda *_: None)
    assert not fast_decode.supported(hooked)
    # Eager attention rounds its softmax to the model's dtype; the step computes SDPA's.
    assert not fast_decode.supported(small_lm(attn_implementation="eager"))
    # The step looks tokens up in the embedding table itself: an adapter there would be skipped.
    lora = get_peft_model(small_lm(), LoraConfig(r=2, target_modules=["embed_tokens"]))
    assert not fast_decode.supported(lora.get_base_model())


@torch.inference_mode()
def test_the_rotary_table_follows_the_models_frequencies():
    """A dtype round trip rounds the rotary frequencies; the steps then use the rounded ones,
    as the model's forward does, not a table kept from before."""
    from stormvl.fast_decode import FastSteps

    lm = small_lm()
    ids, mask = prompts([6])
    tokens = torch.randint(0, 50, (3, 1))

    def lean_logits():
        cache, pos, _ = prefill(lm, ids, mask)
        steps = FastSteps.start(lm, cache, None, capacity=12)
        return [steps.step(t, pos + i) for i, t in enumerate(tokens)]

    lean_logits()  # makes the table from the float64 frequencies
    lm.model.rotary_emb.inv_freq = lm.model.rotary_emb.inv_freq.to(torch.bfloat16).to(torch.float64)
    cache, pos, _ = prefill(lm, ids, mask)
    for a, b in zip(reference_steps(lm, cache, mask, pos, tokens), lean_logits()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_a_failed_allocation_leaves_the_buffers_whole(monkeypatch):
    """Out of memory while growing: every buffer keeps its old capacity, so the chat goes on."""
    from stormvl.fast_decode import FastSteps

    lm = small_lm()
    cache, pos, logits = prefill(lm, *prompts([4]))
    steps = FastSteps.start(lm, cache, None, capacity=6)
    real, made = torch.Tensor.new_empty, []

    def failing(self, *shape, **kw):
        made.append(shape)
        if len(made) == 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real(self, *shape, **kw)

    monkeypatch.setattr(torch.Tensor, "new_empty", failing)
    with pytest.raises(RuntimeError, match="allocate"):
        steps.reserve(64)
    monkeypatch.undo()
    assert {b.shape[2] for b in steps.keys + steps.values} == {6}
    with torch.inference_mode():
        steps.reserve(8)
        t = logits.argmax(-1)
        for i in range(4):  # past the old capacity
            t = steps.step(t, pos + i).argmax(-1)
    assert {b.shape[2] for b in steps.keys + steps.values} == {8}


def test_a_chat_turn_stopped_midway_in_the_models_forward_starts_the_next_afresh(monkeypatch):
    """The reference path (here: a model with a hook) extends transformers' cache layer by layer;
    a turn stopped in its second layer must not leave the layers at different lengths."""
    from stormvl.generation import PrefixCache, greedy_decode

    lm = small_lm()
    emb = lm.get_input_embeddings()
    stop = [False]

    def hook(*_):
        if stop[0]:
            raise KeyboardInterrupt

    lm.model.layers[1].register_forward_pre_hook(hook)
    prefix, ids = PrefixCache(), list(range(1, 9))
    with torch.inference_mode():
        out = greedy_decode(lm, [emb(torch.tensor(ids))], 4, set(), prefix=prefix, prompt_ids=ids)[0]
        ids = ids + out + [5, 6, 7]
        stop[0] = True
        with pytest.raises(KeyboardInterrupt):
            greedy_decode(lm, [emb(torch.tensor(ids))], 4, set(), prefix=prefix, prompt_ids=ids)
        stop[0] = False
        ids = ids + [9, 9]
        again = greedy_decode(lm, [emb(torch.tensor(ids))], 4, set(), prefix=prefix, prompt_ids=ids)[0]
        assert again == greedy_decode(lm, [emb(torch.tensor(ids))], 4, set())[0]
        assert prefix.cache.get_seq_length() == len(prefix.ids) == len(ids) + 4 - 1


@pytest.mark.parametrize("llm", ["qwen2", "llama"])
def test_greedy_decode_gives_the_reference_paths_tokens(tiny_model, monkeypatch, llm):
    """Batched rows of different lengths, and a chat whose second turn continues the first turn's
    cache: the same tokens with the lean steps as with the model's forward (float64)."""
    from stormvl import fast_decode
    from stormvl.fast_decode import _kv
    from stormvl.generation import PrefixCache, greedy_decode

    model, _ = tiny_model(llm=llm)
    lm = model.double().language_model
    emb = lm.get_input_embeddings()
    torch.manual_seed(0)
    prompts = [torch.randint(5, 40, (n,)) for n in (7, 3, 11)]
    follow = torch.randint(5, 40, (4,))

    def run():
        batch = greedy_decode(lm, [emb(p) for p in prompts], 8, stop_ids=set())
        prefix, turns = PrefixCache(), []
        ids = prompts[0].tolist()
        for _ in range(2):
            out = greedy_decode(lm, [emb(torch.tensor(ids))], 5, set(), prefix=prefix, prompt_ids=ids)[0]
            turns.append(out)
            ids = ids + out + follow.tolist()
        return batch, turns, prefix.ids, [t.clone() for kv in _kv(prefix.cache) for t in kv]

    threads = []  # the intra-op threads each lean step ran with
    real_step = fast_decode.FastSteps.step
    monkeypatch.setattr(fast_decode.FastSteps, "step",
                        lambda self, *a: threads.append(torch.get_num_threads()) or real_step(self, *a))  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast = run()
    finally:
        torch.set_num_threads(before)
    assert threads and set(threads) == {1}  # they ran, on one thread (see generation.one_thread)
    monkeypatch.setattr(fast_decode, "ENABLED", False)
    threads.clear()
    ref = run()
    assert ref[:3] == fast[:3] and not threads
    for a, b in zip(ref[3], fast[3]):  # the chat's cache, ready for a third turn
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
