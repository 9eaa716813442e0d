"""A lean token step for Llama-family LLMs (transformers' Llama and Qwen2), used by
`generation.greedy_decode` for every token after the prompt's pass.

Why it is written out here: a decode step of a small LLM is per-operation overhead, not arithmetic.
transformers' forward spends a step on about 650 ATen calls for the embedded 3-layer model: mask
and cache bookkeeping, dtype round trips, and one concatenation per layer and step that copies the
whole KV cache so far. On 2 CPU cores that step took 2.3-3.4 ms; this one, which computes the same
operations in the same order on a KV cache allocated once for the whole reply, 1.1-2.1 ms
(interleaved runs of 30 steps). The model's own forward stays the reference path: it runs every
model this one does not recognise (another architecture, a sliding window, a rotary scaling that
changes with length, eager attention, LoRA layers or an adapter on the embedding, hooks), and the
tests compare the two.
"""

from __future__ import annotations

import weakref

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
    # Eager attention rounds its fp32 softmax to the model's dtype before the product; this step's
    # is PyTorch's fused attention, as the "sdpa" models compute it.
    if getattr(cfg, "_attn_implementation", None) not in (None, "sdpa"):
        return False
    # The step looks token ids up in the table itself: an adapter on the embedding would be skipped.
    if type(model.embed_tokens) is not nn.Embedding or lm.get_input_embeddings() is not model.embed_tokens:
        return False
    for m in lm.modules():  # someone watches or moves these modules: their own forward must run
        if m._forward_hooks or m._forward_pre_hooks or "_hf_hook" in m.__dict__:
            return False
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


# rotary module -> {(dtype, device): (cos, sin, the inv_freq and attention factor they were made from)}
_ROPE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rope_table(rotary: nn.Module, like: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), (at least n positions, head dim) each, made by the model's own rotary module,
    so its scaling (linear, llama3, yarn) and attention factor are the model's. Kept per module:
    making it costs a decode step's worth of small operations, and every reply would pay it. Made
    again when the module's frequencies changed (a dtype round trip rounds them)."""
    tables = _ROPE_TABLES.setdefault(rotary, {})
    key = (like.dtype, like.device)
    made = tables.get(key)
    scaling = getattr(rotary, "attention_scaling", None)
    if made is None or made[0].shape[0] < n or made[3] != scaling or not torch.equal(made[2], rotary.inv_freq):
        size = max(256, 1 << (n - 1).bit_length())
        cos, sin = rotary(like, torch.arange(size, device=like.device)[None])
        tables[key] = made = (cos[0], sin[0], rotary.inv_freq.clone(), scaling)
    return made[0], made[1]


class FastSteps:
    """The lean forward for the positions after a prompt's pass, on KV buffers with room for the
    whole reply. The prompt's transformers cache is copied into the buffers once and then pointed at
    them (views): the KV memory is not held twice, and the model's own forward can continue the
    cache after `sync`. A chat keeps its FastSteps between turns, so a follow-up's new tokens run
    here too (`forward` with several positions).

    `key_mask`: (B, L) with 0 at the prompt's left padding, or None when no row is padded."""

    def __init__(self, lm, cache, key_mask: torch.Tensor | None, capacity: int):
        self.lm, self.cache = lm, cache
        self.heads = lm.config.num_attention_heads
        self.kv_heads = lm.config.num_key_value_heads
        kv = _kv(cache)
        self.length = kv[0][0].shape[2]
        self.keys, self.values = [k for k, _ in kv], [v for _, v in kv]  # copied into buffers below
        self.mask = None if key_mask is None else key_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        self._grow(max(capacity, self.length))

    @classmethod
    def start(cls, lm, cache, key_mask, capacity) -> FastSteps | None:
        """The steps for this model and cache, or None where the model's own forward must run."""
        return cls(lm, cache, key_mask, capacity) if cache is not None and supported(lm) else None

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` positions in all."""
        if capacity > self.keys[0].shape[2]:
            self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        # Everything is made before anything is replaced: an allocation that fails (out of memory)
        # leaves the buffers as they were, all of one capacity.
        grown = []
        for buffers in (self.keys, self.values):
            new = []
            for old in buffers:
                b, n_kv, _, d = old.shape
                new.append(old.new_empty(b, n_kv, capacity, d))  # (B, KV heads, capacity, head dim)
                new[-1][:, :, : self.length] = old[:, :, : self.length]
            grown.append(new)
        mask = None
        if self.mask is not None:  # (B, 1, 1, capacity), True where a key may be attended to
            mask = self.mask.new_ones(*self.mask.shape[:3], capacity)
            mask[..., : self.length] = self.mask[..., : self.length]
        cos, sin = _rope_table(self.lm.model.rotary_emb, grown[0][0], capacity)
        (self.keys, self.values), self.mask, self.cos, self.sin = grown, mask, cos, sin
        self.sync()

    def keep(self, n: int) -> None:
        """Drops every position after the first n."""
        self.length = min(self.length, n)
        self.sync()

    def sync(self) -> None:
        """Points the transformers cache at every position computed so far."""
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            _set_kv(self.cache, i, k[:, :, : self.length], v[:, :, : self.length])

    def step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids (B,), positions (B, 1) -> the next logits (B, vocab). Appends one position."""
        return self.forward(F.embedding(ids[:, None], self.lm.model.embed_tokens.weight), positions)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) input embeddings at positions (B, L) -> the last position's logits (B, vocab).
        Appends L positions; several only for one unpadded row (a chat's new turn)."""
        lm, (b, n, _), h, kvh = self.lm, x.shape, self.heads, self.kv_heads
        col = self.length
        if col + n > self.keys[0].shape[2]:
            raise RuntimeError("the decode buffers are full")  # a caller's bug: `reserve` first
        if n > 1 and (b > 1 or self.mask is not None):
            raise ValueError("several positions at once take one unpadded row")
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]  # (B, L, 1, head dim)
        # Grouped-query attention without repeating keys: the query heads sharing a KV head, at every
        # new position, are that KV head's queries, (B, KV heads, group * L, head dim), so a query at
        # new position j (row g * L + j) may see the keys up to col + j.
        mask = None if self.mask is None else self.mask[..., : col + 1]
        if n > 1:
            seen = torch.arange(col + n, device=x.device)[None] <= col + torch.arange(n, device=x.device)[:, None]
            mask = seen.repeat(h // kvh, 1)  # (group * L, col + L)
        for i, layer in enumerate(lm.model.layers):
            a = layer.self_attn
            y = _rms(x, layer.input_layernorm)
            q = _linear(y, a.q_proj).view(b, n, h, -1)  # (B, L, heads, head dim)
            k = _linear(y, a.k_proj).view(b, n, kvh, -1)  # (B, L, KV heads, head dim)
            v = _linear(y, a.v_proj).view(b, n, kvh, -1)
            qk = torch.cat([q, k], 2)  # rotate queries and keys together
            half = qk.shape[-1] // 2
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
            self.keys[i][:, :, col : col + n] = qk[:, :, h:].transpose(1, 2)
            self.values[i][:, :, col : col + n] = v.transpose(1, 2)
            d = qk.shape[-1]
            queries = qk[:, :, :h].reshape(b, n, kvh, h // kvh, d).permute(0, 2, 3, 1, 4).reshape(b, kvh, -1, d)
            o = F.scaled_dot_product_attention(
                queries, self.keys[i][:, :, : col + n], self.values[i][:, :, : col + n], attn_mask=mask, scale=a.scaling
            )  # (B, KV heads, group * L, head dim)
            o = o.view(b, kvh, h // kvh, n, -1).permute(0, 3, 1, 2, 4).reshape(b, n, -1)  # (B, L, heads * head dim)
            x = x + _linear(o, a.o_proj)
            y = _rms(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            x = x + _linear(F.silu(_linear(y, mlp.gate_proj)) * _linear(y, mlp.up_proj), mlp.down_proj)
        self.length = col + n
        return _linear(_rms(x[:, -1:], lm.model.norm), lm.lm_head)[:, -1]
