"""One decoding step: the LM fed one token at a time through its KV cache, and how the next token is chosen.

Shapes: B rows, T positions so far, d LM embedding width, V' vocabulary rows (with [RET]).
"""
from __future__ import annotations

import math

import torch

from ..model.backbones import kv_cache

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

    ``embeds`` (B, T, d): the prompts, all T long (no padding). :meth:`feed` appends one token per row.
    """

    def __init__(self, model, embeds: torch.Tensor):
        self.model, self.dev = model, model.device
        self.B, self.T = embeds.shape[:2]
        self.out = model.lm_hidden(embeds, self._mask(), use_cache=True)
        self.logits = model.logits_at(self.out.last_hidden_state[:, -1:])  # (B, 1, V'): only the next token

    def _mask(self) -> torch.Tensor:
        return torch.ones(self.B, self.T, dtype=torch.long, device=self.dev)  # (B, T)

    def feed(self, tokens: torch.Tensor) -> None:
        """``tokens`` (B,): each row's next input token; one LM step with the cache."""
        self.T += 1
        x = self.model.embed_tokens(tokens[:, None])  # (B, 1, d)
        self.out = self.model.lm_hidden(x, self._mask(), cache=kv_cache(self.out), use_cache=True)
        self.logits = self.model.logits_at(self.out.last_hidden_state)  # (B, 1, V')

    def vector(self, pos: int) -> torch.Tensor:
        """Row 0's retrieval vector (q,) read at position ``pos`` of the last step's hidden states."""
        return self.model.vectors_at(self.out.hidden_states, torch.tensor([pos], device=self.dev))[0]
