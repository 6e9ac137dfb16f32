"""Scoring without generation: retrieval vectors and log-likelihoods of interleaved prompts.

These are the building blocks of the evaluations (``eval/``). A *prompt* is what
:func:`fromage_mini.infer.prompt.build_inputs` takes: a ``str`` or a list of ``str`` / PIL images /
tensors ((D,) features or (3, H, W) pixels) in any order.

Batches are right-padded: with a causal LM the real tokens never attend to the padding after
them, and every real position keeps its position id, so each row scores as if it were alone.
"""
from __future__ import annotations

import copy

import torch

from ..errors import FromageError
from ..model.backbones import kv_cache
from ..model.packing import right_pad
from .modes import inference
from .prompt import IMAGE, PromptInputs, as_items, build_inputs, fit_context, pad_batch, to_features


def _with_ret(model, inp: PromptInputs) -> PromptInputs:
    """Append [RET] unless the prompt already ends with it."""
    if int(inp.ids[-1]) == model.ret_id:
        return inp
    ret = torch.tensor([model.ret_id])
    emb = model.embed_tokens(ret[None].to(model.device))[0].to(inp.embeds.dtype)  # (1, d)
    return PromptInputs(torch.cat([inp.embeds, emb]), torch.cat([inp.ids, ret]))


def _as_prompt_list(prompts) -> list:
    if isinstance(prompts, str):
        return [prompts]
    return list(prompts)


@inference
def text_vectors(model, prompts, *, batch_size: int = 32, bos: str = "once") -> torch.Tensor:
    """Retrieval vectors of interleaved contexts: (N, q), unnormalised.

    Each prompt (a ``str`` or an interleaved list) gets [RET] appended if it does not already end
    with it; its vector is read from the hidden states at that final [RET] input position.
    ``bos``: see :func:`~fromage_mini.infer.prompt.build_inputs`.
    """
    prompts = _as_prompt_list(prompts)
    out = []
    for s in range(0, len(prompts), batch_size):
        inputs = [_with_ret(model, fit_context(model, build_inputs(model, p, bos=bos), room=1, what="text"))
                  for p in prompts[s: s + batch_size]]
        x, mask, lengths = pad_batch(inputs)  # (B, T, d), (B, T), (B,)
        out.append(model.encode_embeds(x, mask, (lengths - 1).to(x.device)).float())
    return torch.cat(out) if out else torch.zeros(0, model.config.ret_dim)


@inference
def image_vectors(model, images_or_features, *, batch_size: int = 64) -> torch.Tensor:
    """Image retrieval vectors (N, q), unnormalised, from PIL images / features / (3, H, W) pixels."""
    items = as_items(model, images_or_features)
    out = [model.encode_images(to_features(model, items[s: s + batch_size])).float()
           for s in range(0, len(items), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.config.ret_dim)


def _window_logits(model, x, mask, start: int, n: int) -> torch.Tensor:
    """Logits (B, n, V') at positions start..start+n-1 only (the output head runs on those alone)."""
    h = model.lm_hidden(x, mask).last_hidden_state[:, start: start + n]  # (B, n, d_out)
    return model.logits_at(h).float()


@inference
def candidate_scores(model, context: PromptInputs, candidates: list[list[int]], *, shift: bool = True,
                     normalize: bool = False, batch_size: int = 32, share_context: bool = True) -> torch.Tensor:
    """Log-probability of each candidate id sequence after a built context: (n,).

    Row i is ``[context, candidate_i]``. With ``shift=True`` (correct) the logit at position t
    scores the token at t + 1. ``shift=False`` scores the token at t with the logit at t (the
    original VisDial eval's off-by-one, kept only for ``faithful_to_original``).
    ``normalize``: mean over the candidate's tokens instead of the sum.
    ``share_context``: run the context once and reuse its KV cache for every candidate (same scores,
    far less work when, as in VisDial, 100 short answers follow a long dialogue); the ``shift=False``
    protocol always re-runs the context.
    """
    if any(len(c) == 0 for c in candidates):
        raise FromageError("a candidate answer has no tokens")
    context = fit_context(model, context, room=max(len(c) for c in candidates), what="context")
    if share_context and shift:
        return _shared_context_scores(model, context, candidates, normalize, batch_size)
    C = len(context.ids)
    out = []
    for s in range(0, len(candidates), batch_size):
        chunk = candidates[s: s + batch_size]
        rows = []
        for c in chunk:
            ids = torch.tensor(c)
            emb = model.embed_tokens(ids[None].to(model.device))[0].to(context.embeds.dtype)
            rows.append(PromptInputs(torch.cat([context.embeds, emb]), torch.cat([context.ids, ids])))
        x, mask, _ = pad_batch(rows)
        n = max(len(c) for c in chunk)
        start = C - 1 if shift else C  # the position whose logits score the candidate's first token
        logp = _window_logits(model, x, mask, start, n).log_softmax(-1)  # (B, n, V'); rows are C + len(c) long
        out.append(_gather_scores(logp, chunk, normalize))
    return torch.cat(out).cpu()


def _gather_scores(logp, chunk, normalize):
    """Sum (or mean) of each candidate's token log-probs from logp (B, n, V')."""
    targets, valid = right_pad([torch.tensor(c) for c in chunk])  # (B, n)
    targets, valid = targets.to(logp.device), valid.bool().to(logp.device)
    lp = logp.gather(-1, targets[..., None])[..., 0].masked_fill(~valid, 0.0)  # (B, n)
    return lp.sum(1) / valid.sum(1) if normalize else lp.sum(1)


def _shared_context_scores(model, context: PromptInputs, candidates, normalize, batch_size):
    """:func:`candidate_scores` with the context's KV cache computed once and copied per chunk."""
    dev = model.device
    C = len(context.ids)
    x = context.embeds[None].to(dev)  # (1, C, d)
    ctx = model.lm_hidden(x, torch.ones(1, C, dtype=torch.long, device=dev), use_cache=True)
    first = model.logits_at(ctx.last_hidden_state[:, -1:]).float().log_softmax(-1)  # (1, 1, V'): 1st token
    out = []
    for s in range(0, len(candidates), batch_size):
        chunk = candidates[s: s + batch_size]
        ids, cand_mask = (t.to(dev) for t in right_pad([torch.tensor(c) for c in chunk]))  # (B, n)
        B, n = ids.shape
        cache = copy.deepcopy(kv_cache(ctx))
        cache.batch_repeat_interleave(B)
        mask = torch.cat([torch.ones(B, C, dtype=torch.long, device=dev), cand_mask], 1)  # (B, C + n)
        pos = (C + torch.arange(n, device=dev)).expand(B, n)
        h = model.lm_hidden(model.embed_tokens(ids).to(x.dtype), mask, position_ids=pos, cache=cache,
                            use_cache=True).last_hidden_state  # (B, n, d_out)
        rest = model.logits_at(h[:, :-1]).float().log_softmax(-1)  # (B, n-1, V'): tokens 2..n
        out.append(_gather_scores(torch.cat([first.expand(B, 1, -1), rest], 1), chunk, normalize))
    return torch.cat(out).cpu()


@inference
def log_likelihood(model, context, candidates: list[str], normalize: bool = True, *,
                   batch_size: int = 32) -> torch.Tensor:
    """log p(candidate | context) for each candidate string: (n,) tensor.

    ``context`` is an interleaved prompt (one BOS, built as for :func:`generate`); each candidate
    is tokenized without special tokens exactly as written (give it a leading space if the LM
    expects one) and appended. The sum of its tokens' next-token log-probabilities is returned,
    or their mean when ``normalize`` (the default).
    """
    ctx = build_inputs(model, context)
    ids = [model.tokenizer(c, add_special_tokens=False).input_ids for c in candidates]
    return candidate_scores(model, ctx, ids, shift=True, normalize=normalize, batch_size=batch_size)


__all__ = ["IMAGE", "candidate_scores", "image_vectors", "log_likelihood", "text_vectors"]
