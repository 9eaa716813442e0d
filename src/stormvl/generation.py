"""Greedy decoding of several prompts at once, token by token, with a callback per token.

transformers' `generate` decodes a batch but reports tokens only when every row is done (its
streamers take one row), and cannot stop a single row whose client has gone. A server batching
questions needs both, so this loop is written out here; it is the one decoding path of `answer`,
`answer_batch`, chat sessions and the server, so all of them give the same tokens.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .fast_decode import FastSteps, supported


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a reply: the generation config's (an int or a list) and the tokenizer's."""
    ids = set()
    for v in (getattr(model.language_model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif v is not None:
            ids.update(int(x) for x in v)
    return ids


@dataclass
class PrefixCache:
    """The LLM's KV cache for one conversation so far, and the token ids it covers: the next turn's
    prompt starts with them, so only its new tokens need a forward pass."""

    ids: list[int] = field(default_factory=list)
    cache: object = None
    steps: FastSteps | None = None  # the lean steps' buffers behind `cache`, where the model allows them

    def keep(self, n: int) -> None:
        """Drop everything after the first n cached positions."""
        if self.steps is not None:
            self.steps.keep(n)  # the cache views its buffers
        elif n < (have := self.cache.get_seq_length()):
            # A negative count removes that many tokens from the end in every transformers release
            # (4.x reads a positive value as the length to keep, 5.x refuses one).
            self.cache.crop(n - have)
        self.ids = self.ids[:n]


@contextlib.contextmanager
def one_thread():
    """Decode steps (one token per row) run with one intra-op thread in the calling thread. A step's
    ops are too small to gain from a second thread: measured alike on an idle 2-core machine (tiny
    model 2.2-2.6 ms a step either way, SmolLM2-135M 92-99 ms). But a parallel region waits for
    every thread it started, and when the other cores are busy (a server's event loop, decoders
    and clients; another job) one descheduled thread stalls it: with two threads the steps took
    7.4-8.5 ms and 762-770 ms, with one 2.8-4.7 ms and 137-145 ms. Prefill and the vision side keep
    every thread (in the server a small prefill runs on one: `Scheduler._small`). (OpenMP keeps a
    thread count per thread: threads already running keep theirs.)"""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.inference_mode()
def greedy_decode(
    lm,
    embeds: list[torch.Tensor],
    max_new_tokens: int | list[int],
    stop_ids: set[int],
    on_token: Callable[[int, list[int]], None] | None = None,
    cancelled: Callable[[int], bool] | None = None,
    prefix: PrefixCache | None = None,
    prompt_ids: list[int] | None = None,
    on_finish: Callable[[int, list[int]], None] | None = None,
) -> list[list[int]]:
    """`embeds`: one (L_i, D) prompt per row. Rows are left-padded into one batch, with positions
    counted from each row's first real token, so a row decodes the same tokens alone or batched.
    `on_token(row, tokens_so_far)` runs after each new token of a row; `cancelled(row)` true ends
    that row early; `on_finish(row, tokens)` runs once per row, as soon as it stops, while longer
    rows go on. Returns each row's new token ids, without the stop token.

    `prefix` (one row only, with its `prompt_ids`): the KV cache of the conversation so far. The
    prompt's positions it already covers are not computed again, and it is left covering the
    prompt and the reply, ready for the next turn."""
    # A PEFT-wrapped LLM passes these through to its base model, whose signature tells.
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    cache_arg, last_only = _forward_args(type(base))
    if prefix is not None:
        if len(embeds) != 1 or prompt_ids is None:
            raise ValueError("a prefix cache serves one row, with its prompt ids")
        tokens = _decode_with_prefix(lm, base, embeds[0], prompt_ids, prefix, limits_of(max_new_tokens, 1)[0],
                                     stop_ids, on_token, cancelled, cache_arg, last_only)  # fmt: skip
        if on_finish is not None:
            on_finish(0, tokens)
        return [tokens]
    n = len(embeds)
    limits = limits_of(max_new_tokens, n)
    width = max(e.shape[0] for e in embeds)
    x = embeds[0].new_zeros(n, width, embeds[0].shape[-1])  # (B, L, D)
    mask = torch.zeros(n, width, dtype=torch.long, device=x.device)  # (B, L)
    for i, e in enumerate(embeds):
        x[i, width - e.shape[0] :] = e
        mask[i, width - e.shape[0] :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # (B, L)
    # Without padding the mask says nothing, and building it costs each step more than a tiny
    # model's layers: leave it out then (the same positions and attention either way).
    padded = bool((mask == 0).any())
    out = lm(inputs_embeds=x, attention_mask=mask if padded else None, position_ids=pos, use_cache=True, **last_only)
    cache, logits = out[cache_arg], out.logits[:, -1]
    next_pos = pos[:, -1:] + 1  # (B, 1)
    tokens: list[list[int]] = [[] for _ in range(n)]
    done = [limit <= 0 for limit in limits]
    if on_finish is not None:
        for i in range(n):
            if done[i]:
                on_finish(i, tokens[i])
    embed = lm.get_input_embeddings()
    fast = FastSteps.start(base, cache, mask if padded else None, width + max(limits, default=0))
    with one_thread():  # the token loop: see one_thread
        while not all(done):
            nxt = logits.argmax(-1)  # (B,)
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if cancelled is not None and cancelled(i):
                    done[i] = True
                elif t in stop_ids:
                    done[i] = True
                else:
                    tokens[i].append(t)
                    done[i] = len(tokens[i]) >= limits[i]
                    if on_token is not None:
                        on_token(i, tokens[i])
                if done[i] and on_finish is not None:
                    on_finish(i, tokens[i])
            if all(done):
                break
            # Finished rows keep riding along (their tokens are ignored): dropping them from the KV
            # cache would cost more than the few extra rows on the batch's last steps.
            if fast is not None:
                logits = fast.step(nxt, next_pos)
            else:
                mask = torch.cat([mask, mask.new_ones(n, 1)], 1) if padded else None
                out = lm(
                    inputs_embeds=embed(nxt[:, None]), attention_mask=mask, position_ids=next_pos, use_cache=True,
                    **{cache_arg: cache},
                )  # fmt: skip
                cache, logits = out[cache_arg], out.logits[:, -1]
            next_pos = next_pos + 1
    return tokens


@functools.cache
def _forward_args(cls) -> tuple[str, dict]:
    """How this LLM class names its KV cache (transformers 5.x: `cache`; earlier releases:
    `past_key_values`), and how to ask for the prompt's last logits only, where it can."""
    params = inspect.signature(cls.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    return cache_arg, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def limits_of(max_new_tokens, n: int) -> list[int]:
    return [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)


def _decode_with_prefix(lm, base, emb, ids, prefix, limit, stop_ids, on_token, cancelled, cache_arg, last_only):
    """One row, reusing and then extending `prefix` (see `greedy_decode`)."""
    try:
        return _extend_prefix(lm, base, emb, ids, prefix, limit, stop_ids, on_token, cancelled, cache_arg, last_only)
    except BaseException:
        if prefix.steps is None:
            # transformers' forward extends its cache layer by layer: one stopped midway (an error,
            # Ctrl-C) leaves the layers at different lengths, so the next turn starts afresh. The
            # lean steps keep theirs whole (a position counts once every layer has it).
            prefix.cache, prefix.ids = None, []
        raise


def _extend_prefix(lm, base, emb, ids, prefix, limit, stop_ids, on_token, cancelled, cache_arg, last_only):
    common = 0
    if prefix.cache is not None:
        for a, b in zip(prefix.ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # the last prompt position gives the first logits
        prefix.keep(common)
    else:
        prefix.ids = []
    pos = torch.arange(common, len(ids), device=emb.device)[None]  # (1, L - common)
    if prefix.steps is not None and not supported(base):
        prefix.steps = None  # hooks came since the last turn: the cache itself is up to date
    if prefix.steps is not None:  # a new turn of a chat the lean steps ran: its new tokens too
        prefix.steps.reserve(len(ids) + limit)
        with one_thread():  # a turn's few new tokens are step-sized work (in the server: 3-4 ms, not 5-7)
            logits = prefix.steps.forward(emb[None, common:], pos)
    else:
        kw = {cache_arg: prefix.cache} if prefix.cache is not None else {}
        out = lm(inputs_embeds=emb[None, common:], position_ids=pos, use_cache=True, **last_only, **kw)
        prefix.cache, logits = out[cache_arg], out.logits[:, -1]
        prefix.steps = FastSteps.start(base, prefix.cache, None, len(ids) + limit)
    prefix.ids = list(ids)
    embed = lm.get_input_embeddings()
    fast = prefix.steps
    tokens: list[int] = []
    try:
        with one_thread():  # the token loop: see one_thread
            while len(tokens) < limit and not (cancelled is not None and cancelled(0)):
                t = int(logits.argmax(-1))
                if t in stop_ids:
                    break
                tokens.append(t)
                if on_token is not None:
                    on_token(0, tokens)
                if len(tokens) >= limit:
                    break
                pos = torch.tensor([[len(prefix.ids)]], device=emb.device)
                ids_t = torch.tensor([t], device=emb.device)
                if fast is not None:
                    logits = fast.step(ids_t, pos)
                else:
                    out = lm(inputs_embeds=embed(ids_t[None]), position_ids=pos, use_cache=True,
                             **{cache_arg: prefix.cache})  # fmt: skip
                    prefix.cache, logits = out[cache_arg], out.logits[:, -1]
                prefix.ids.append(t)
    finally:
        if fast is not None:
            fast.sync()  # the cache covers the ids the steps have seen, for the next turn
    return tokens


class TextStream:
    """Turns a growing list of token ids into text pieces whose concatenation is the final
    decoded reply: the last word, an incomplete character and whitespace the final text would
    strip are held back until more tokens (or `finish`) settle them."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.sent = ""

    def push(self, tokens: list[int]) -> str:
        text = self.decode(tokens).strip()
        # The last word waits for the next token: a decoder's clean-up may still join it to what
        # follows ("it '" + "s" -> "it's"), which would change text already sent.
        cut = max(text.rfind(" "), text.rfind("\n"))
        text = text[:cut] if cut > 0 else ""
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    def finish(self, tokens: list[int]) -> str:
        """The rest of the final text (held-back characters included)."""
        text = self.decode(tokens)
        piece = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text
        return piece
