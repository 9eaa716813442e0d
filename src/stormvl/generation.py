"""Greedy decoding of several prompts at once, token by token, with a callback per token.

transformers' `generate` decodes a batch but reports tokens only when every row is done (its
streamers take one row), and cannot stop a single row whose client has gone. A server batching
questions needs both, so this loop is written out here; it is the one decoding path of `answer`,
`answer_batch`, chat sessions and the server, so all of them give the same tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a reply: the generation config's (an int or a list) and the tokenizer's."""
    ids = set()
    for v in (getattr(model.language_model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif v is not None:
            ids.update(int(x) for x in v)
    return ids


@torch.inference_mode()
def greedy_decode(
    lm,
    embeds: list[torch.Tensor],
    max_new_tokens: int | list[int],
    stop_ids: set[int],
    on_token: Callable[[int, list[int]], None] | None = None,
    cancelled: Callable[[int], bool] | None = None,
) -> list[list[int]]:
    """`embeds`: one (L_i, D) prompt per row. Rows are left-padded into one batch, with positions
    counted from each row's first real token, so a row decodes the same tokens alone or batched.
    `on_token(row, tokens_so_far)` runs after each new token of a row; `cancelled(row)` true ends
    that row early. Returns each row's new token ids, without the stop token."""
    n = len(embeds)
    limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
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
    # transformers 5.x names the KV cache `cache`; earlier releases `past_key_values`.
    params = inspect.signature(lm.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the prompt's last logits only
    out = lm(inputs_embeds=x, attention_mask=mask if padded else None, position_ids=pos, use_cache=True, **last_only)
    cache, logits = out[cache_arg], out.logits[:, -1]
    next_pos = pos[:, -1:] + 1  # (B, 1)
    tokens: list[list[int]] = [[] for _ in range(n)]
    done = [limit <= 0 for limit in limits]
    embed = lm.get_input_embeddings()
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
        if all(done):
            break
        # Finished rows keep riding along (their tokens are ignored): dropping them from the KV
        # cache would cost more than the few extra rows on the batch's last steps.
        mask = torch.cat([mask, mask.new_ones(n, 1)], 1) if padded else None
        out = lm(
            inputs_embeds=embed(nxt[:, None]), attention_mask=mask, position_ids=next_pos, use_cache=True,
            **{cache_arg: cache},
        )  # fmt: skip
        cache, logits = out[cache_arg], out.logits[:, -1]
        next_pos = next_pos + 1
    return tokens


class TextStream:
    """Turns a growing list of token ids into text pieces whose concatenation is the final
    decoded reply: a piece is held back while it ends in an incomplete character or in whitespace
    the final text would strip."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.sent = ""

    def push(self, tokens: list[int]) -> str:
        text = self.decode(tokens).strip()
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
