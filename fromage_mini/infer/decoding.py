"""Decoding: the LM fed one token at a time through its KV cache (:class:`Decoder`), how the next token
is chosen, and the package's one greedy loop over a batch of rows (:func:`greedy`: greedy captions,
the binding probes' perfect-token captions).

Shapes: B rows, T positions so far, d LM embedding width, V' vocabulary rows (with [RET]).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..model.backbones import cache_kwarg, kv_cache

RET_SCALE_RULES = ("odds", "original")


def next_token_logits(logits: torch.Tensor, ret_id: int, *, temperature: float = 0.0,
                      ret_scale_factor: float = 1.0, forbid_ret: bool = False,
                      ret_scale_rule: str = "odds") -> torch.Tensor:
    """Raw logits (..., V'): one row (V',) or a batch (B, V') -> the logits a token is drawn from.

    ``ret_scale_rule="odds"`` (ours): divide by ``temperature`` (if > 0), then add
    ``log(ret_scale_factor)`` to the [RET] logit: the odds of [RET] against every other token are
    multiplied by exactly ``ret_scale_factor``, whatever the sign of its logit (factor 0 forbids
    [RET]). ``"original"``: the released code's rule, reproduced for comparing with its outputs:
    the raw [RET] logit is multiplied by the factor, before the temperature (so a factor > 1
    *lowers* a negative logit). ``forbid_ret``: [RET] gets -inf.
    """
    if ret_scale_factor < 0:
        raise ValueError("ret_scale_factor must be >= 0")
    if ret_scale_rule not in RET_SCALE_RULES:
        raise ValueError(f"ret_scale_rule must be one of {', '.join(RET_SCALE_RULES)}, not {ret_scale_rule!r}")
    out = logits.float().clone()
    if ret_scale_rule == "original" and ret_scale_factor != 1:
        out[..., ret_id] *= ret_scale_factor  # z_RET <- factor * z_RET (raw logit)
    if temperature > 0:
        out = out / temperature
    if forbid_ret or ret_scale_factor == 0:
        out[..., ret_id] = float("-inf")
    elif ret_scale_rule == "odds" and ret_scale_factor != 1:
        out[..., ret_id] += math.log(ret_scale_factor)  # z_RET <- z_RET + log(factor)
    return out


def pick_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> int:
    """One row's logits (V',) -> a token id: greedy argmax when ``temperature == 0``, else nucleus
    (top-p) sampling from softmax(logits).

    ``logits`` are already divided by the temperature (see :func:`next_token_logits`). Top-p
    keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one).
    """
    if temperature == 0:
        return int(logits.argmax())
    probs = logits.float().softmax(-1)
    if top_p < 1.0:
        p, order = probs.sort(descending=True)
        keep = (p.cumsum(-1) - p) < top_p  # mass before this token is still short of top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(-1, order[keep], p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def stop_at(text: str, stops, started: bool) -> int | None:
    """Index of the first stop string that follows some content (a leading one is skipped, as in the original)."""
    best = None
    for s in stops or ():
        start = 0
        while s and (i := text.find(s, start)) != -1:
            if started or text[:i].strip():
                best = i if best is None else min(best, i)
                break
            start = i + 1
    return best


class Decoder:
    """The LM's state while decoding B rows together: its KV cache, the last step's hidden states and
    the logits of each row's next token.

    ``model``: a Fromage model, or a :class:`PlainLM` (the calls used: ``lm_hidden``, ``logits_at``,
    ``embed_tokens``, ``device``, and ``vectors_at`` for :meth:`vector`). ``embeds`` (B, T, d): the
    prompts, all T long; ``mask`` (B, T): their attention mask (default all ones; a 0 hides a position
    from attention, as an unused slot). :meth:`feed` appends one token per row.
    """

    def __init__(self, model, embeds: torch.Tensor, mask: torch.Tensor | None = None):
        self.model, self.dev = model, model.device
        B, T = embeds.shape[:2]
        self.mask = torch.ones(B, T, dtype=torch.long, device=self.dev) if mask is None else mask.to(self.dev)
        self.out = model.lm_hidden(embeds, self.mask, use_cache=True)
        self.logits = model.logits_at(self.out.last_hidden_state[:, -1:])  # (B, 1, V'): only the next token

    def feed(self, tokens: torch.Tensor) -> None:
        """``tokens`` (B,): each row's next input token; one LM step with the cache."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], 1)  # (B, T + 1)
        x = self.model.embed_tokens(tokens[:, None])  # (B, 1, d)
        self.out = self.model.lm_hidden(x, self.mask, cache=kv_cache(self.out), use_cache=True)
        self.logits = self.model.logits_at(self.out.last_hidden_state)  # (B, 1, V')

    def vector(self, pos: int) -> torch.Tensor:
        """Row 0's retrieval vector (q,) read at position ``pos`` of the last step's hidden states."""
        return self.model.vectors_at(self.out.hidden_states, torch.tensor([pos], device=self.dev))[0]


def greedy(lm: Decoder, max_new_tokens: int, take: Callable[[int, int], bool], forbid: int | None = None) -> None:
    """Decode the B rows of ``lm`` greedily together, one KV-cache step at a time.

    Each step, every unfinished row's most likely next token (never ``forbid``, e.g. [RET]) goes to
    ``take(row, token)``, which keeps what it needs and returns whether that row is finished; a finished
    row gets no more tokens (it is still fed, so the rows stay one batch). Stops when every row is
    finished or after ``max_new_tokens`` steps.
    """
    done = [False] * lm.mask.shape[0]
    for step in range(max_new_tokens):
        logits = lm.logits[:, -1]  # (B, V')
        if forbid is not None:
            logits = next_token_logits(logits, forbid, forbid_ret=True)
        nxt = logits.argmax(-1)  # (B,)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                done[i] = take(i, t)
        if all(done) or step + 1 == max_new_tokens:
            break
        lm.feed(nxt)


class PlainLM:
    """A Hugging Face causal LM on its own (no [RET], no images) with the calls :class:`Decoder` makes
    of a Fromage model, so that prefixes of plain input embeddings decode through the same loop.

    ``embed``: ids -> input embeddings of the generated tokens (default: the LM's input embedding).
    """

    def __init__(self, lm, embed: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.lm, self.device = lm, lm.device
        self.embed_tokens = embed or lm.get_input_embeddings()
        self._cache_kw = cache_kwarg(lm.base_model)  # `cache` or `past_key_values`

    def lm_hidden(self, inputs_embeds, attention_mask, *, cache=None, use_cache=False):
        """The LM body on embeddings (B, T, d) with mask (B, T): its output (``last_hidden_state``, the cache)."""
        return self.lm.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=use_cache,
                                  **{self._cache_kw: cache})

    def logits_at(self, h: torch.Tensor) -> torch.Tensor:
        """Output logits (..., V) of final states h (..., d), in fp32."""
        return self.lm.get_output_embeddings()(h).float()
