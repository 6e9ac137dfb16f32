"""Greedy captions for a batch of images: every row decodes together through one KV cache.

Shapes: N images, B rows of a batch, k visual tokens, d LM embedding width, V' vocabulary rows.
"""
from __future__ import annotations

import torch

from .decoding import Decoder, greedy, stop_at
from .modes import inference
from .prompt import to_features


@inference
def caption(model, images_or_features, max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy captions for a batch of images (PIL / features / (3, H, W) pixels, or one tensor).

    Each row is ``[img, </s>]`` (``after_bos``: ``[</s>, img]``), all the same length, so rows
    decode together with one KV cache and no padding (:func:`~.decoding.greedy`). [RET] is forbidden;
    a row stops at EOS or at the first '.' (kept) or newline (dropped).
    """
    feats = to_features(model, images_or_features)  # (N, *F)
    captions: list[str] = []
    for s in range(0, feats.shape[0], batch_size):
        captions += _caption_batch(model, feats[s: s + batch_size], max_new_tokens)
    return captions


def _caption_batch(model, feats: torch.Tensor, max_new_tokens: int) -> list[str]:
    B, dev, tok = feats.shape[0], model.device, model.tokenizer
    # a caption of just BOS, laid out as in training: [img, </s>] or [</s>, img]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    ids = torch.tensor([bos] * B, dtype=torch.long, device=dev).view(B, len(bos))
    x, _, _ = model.caption_inputs(model.visual_embeds(feats), model.embed_tokens(ids), ids, torch.ones_like(ids))
    lm = Decoder(model, x.to(model.lm.get_input_embeddings().weight.dtype))  # (B, k + 1, d)
    rows: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B

    def take(i: int, t: int) -> bool:  # row i's next token -> whether its caption is finished
        if t == tok.eos_token_id:
            return True
        rows[i].append(t)
        texts[i], done = _caption_so_far(tok.decode(rows[i], skip_special_tokens=True))
        return done

    greedy(lm, max_new_tokens, take, forbid=model.ret_id)
    return [t.strip() for t in texts]


def _caption_so_far(text: str) -> tuple[str, bool]:
    """A row's decoded text -> (its caption so far, whether it is finished): cut after the first '.'
    (kept) or before the first newline (dropped), whichever comes first."""
    dot, nl = text.find("."), stop_at(text, ("\n",), started=False)
    if dot != -1 and (nl is None or dot < nl):
        return text[: dot + 1], True
    if nl is not None:
        return text[:nl], True
    return text, False
