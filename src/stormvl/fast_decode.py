"""A lean token step for Llama-family LLMs (transformers' Llama and Qwen2), used by
`generation.greedy_decode` for every token after the prompt's pass.

Why it is written out here: a decode step of a small LLM is per-operation overhead, not arithmetic.
transformers' forward spends a step on about 650 ATen calls for the embedded 3-layer model: mask
and cache bookkeeping, dtype round trips, and one concatenation per layer and step that copies the
whole KV cache so far. On 2 CPU cores that step took 2.3-3.4 ms; this one, which computes the same
operations in the same order on a KV cache allocated once for the whole reply, 1.1-2.1 ms
(interleaved runs of 30 steps). The model's own forward stays the reference path: it runs every
model this one does not recognise (another architecture, a sliding window, a rotary scaling that
changes with length, LoRA layers or hooks), and the tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENABLED = True  # tests turn it off to run the reference path

_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm")
# Rotary embeddings whose angles depend on the position only (a "dynamic" scaling recomputes its
# frequencies as the sequence grows, so a table made up front would differ from the model's).
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def supported(lm) -> bool:
    """Whether `lm` computes exactly what this step computes."""
    if not ENABLED or type(lm).__name__ not in _ARCHITECTURES:
        return False
    cfg, model = lm.config, lm.model
    if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    layer_types = getattr(cfg, "layer_types", None) or ()
    if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        return False
    if getattr(getattr(model, "rotary_emb", None), "rope_type", None) not in _STATIC_ROPE:
        return False
    for m in lm.modules():
        if m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook"):
            return False  # someone watches or moves these modules: their own forward must run
    for layer in model.layers:
        a, mlp = layer.self_attn, layer.mlp
        linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(x) is not nn.Linear for x in linears):
            return False
        if any(type(n).__name__ not in _NORMS for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return False
    return type(model.norm).__name__ in _NORMS and type(lm.lm_head) is nn.Linear


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values), (B, KV heads, L, head dim), from a transformers DynamicCache
    (5.x keeps them in `layers`, 4.x in `key_cache` / `value_cache`)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _set_kv(cache, i: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    if hasattr(cache, "layers"):
        cache.layers[i].keys, cache.layers[i].values = keys, values
    else:
        cache.key_cache[i], cache.value_cache[i] = keys, values


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    # transformers' Llama/Qwen2 RMSNorm, operation for operation: in float32, back, then the weight.
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _linear(x: torch.Tensor, m: nn.Linear) -> torch.Tensor:
    return F.linear(x, m.weight, m.bias)  # without the module call's own overhead


class FastSteps:
    """Decode steps for one batch, continuing the KV cache of its prompt's pass.

    The cache's tensors are copied once into buffers with room for `capacity` positions, and the
    transformers cache is pointed at those buffers (views), so the KV memory is not held twice and
    the cache object stays usable by the model's own forward: `sync` brings it up to date after
    the steps (a chat's next turn continues it).

    `key_mask`: (B, L) with 0 at the prompt's left padding, or None when no row is padded."""

    def __init__(self, lm, cache, key_mask: torch.Tensor | None, capacity: int):
        model = lm.model
        self.lm, self.cache = lm, cache
        self.heads = lm.config.num_attention_heads
        self.kv_heads = lm.config.num_key_value_heads
        kv = _kv(cache)
        b, n_kv, self.length, d = kv[0][0].shape
        self.keys, self.values = [], []
        for i, (k, v) in enumerate(kv):
            kb = k.new_empty(b, n_kv, capacity, d)  # (B, KV heads, capacity, head dim)
            vb = v.new_empty(b, n_kv, capacity, d)
            kb[:, :, : self.length] = k
            vb[:, :, : self.length] = v
            self.keys.append(kb)
            self.values.append(vb)
            _set_kv(cache, i, kb[:, :, : self.length], vb[:, :, : self.length])
        self.mask = None  # (B, 1, 1, capacity), True where a key may be attended to
        if key_mask is not None:
            self.mask = torch.ones(b, 1, 1, capacity, dtype=torch.bool, device=key_mask.device)
            self.mask[:, 0, 0, : self.length] = key_mask.bool()
        # The model's own rotary module makes the table, so its scaling (linear, llama3, yarn)
        # and attention factor are the model's: (capacity, head dim) each.
        cos, sin = model.rotary_emb(kv[0][0], torch.arange(capacity, device=kv[0][0].device)[None])
        self.cos, self.sin = cos[0], sin[0]

    @classmethod
    def start(cls, lm, cache, key_mask, capacity) -> FastSteps | None:
        """The steps for this model and cache, or None where the model's own forward must run."""
        return cls(lm, cache, key_mask, capacity) if cache is not None and supported(lm) else None

    def step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids (B,), positions (B, 1) -> the next logits (B, vocab). Appends one position."""
        col = self.length
        if col >= self.keys[0].shape[2]:
            raise RuntimeError("the decode buffers are full")  # a caller's bug: capacity is the reply's limit
        lm, b, h, kvh = self.lm, ids.shape[0], self.heads, self.kv_heads
        x = F.embedding(ids[:, None], lm.model.embed_tokens.weight)  # (B, 1, D)
        cos, sin = self.cos[positions], self.sin[positions]  # (B, 1, head dim)
        mask = None if self.mask is None else self.mask[..., : col + 1]
        for i, layer in enumerate(lm.model.layers):
            a = layer.self_attn
            y = _rms(x, layer.input_layernorm)
            q = _linear(y, a.q_proj).view(b, h, -1)  # (B, heads, head dim)
            k = _linear(y, a.k_proj).view(b, kvh, -1)  # (B, KV heads, head dim)
            v = _linear(y, a.v_proj).view(b, kvh, -1)
            qk = torch.cat([q, k], 1)  # rotate queries and keys together
            half = qk.shape[-1] // 2
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
            self.keys[i][:, :, col] = qk[:, h:]
            self.values[i][:, :, col] = v
            # Grouped-query attention without repeating keys: with one query position, the query
            # heads sharing a KV head are that head's "query positions", (B, KV heads, group, dim).
            o = F.scaled_dot_product_attention(
                qk[:, :h].reshape(b, kvh, h // kvh, -1), self.keys[i][:, :, : col + 1], self.values[i][:, :, : col + 1],
                attn_mask=mask, scale=a.scaling,
            )  # fmt: skip
            x = x + _linear(o.reshape(b, 1, -1), a.o_proj)
            y = _rms(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            x = x + _linear(F.silu(_linear(y, mlp.gate_proj)) * _linear(y, mlp.up_proj), mlp.down_proj)
        self.length = col + 1
        return _linear(_rms(x, lm.model.norm), lm.lm_head)[:, -1]

    def sync(self) -> None:
        """Points the transformers cache at every position computed so far."""
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            _set_kv(self.cache, i, k[:, :, : self.length], v[:, :, : self.length])
