"""The three FROMAGe losses, written to be read next to the paper.

    L = w_cap · CE_cap  +  w_ret · ( CE_ret  +  (L_t2i + L_i2t) / 2 )

* CE_cap  - next-token cross-entropy of the caption given the visual prefix (captioning mode).
* CE_ret  - next-token cross-entropy of ``</s> caption [RET]`` (retrieval mode); [RET] is a
            target here, which is what teaches the LM to *emit* [RET] after a description.
* L_t2i, L_i2t - InfoNCE over the batch between text vectors t_i (from the [RET] hidden state)
            and image vectors v_j:  L_t2i = -1/B Σ_i log softmax_j(s · cos(t_i, v_j))_i
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import gather as gather_ops

IGNORE = -100


@dataclass
class FromageOutput:
    """What one training forward (``Fromage.forward``) returns: losses (scalars with grad) and the batch's vectors.

    Nothing here has been copied to the host: the trainer reads values (``.item()``) and computes
    in-batch recall from ``logits_per_text`` only on the steps it logs.
    """

    loss: torch.Tensor
    cap_loss: torch.Tensor
    ret_lm_loss: torch.Tensor
    t2i_loss: torch.Tensor
    i2t_loss: torch.Tensor
    text_vectors: torch.Tensor  # (B, q), unnormalised
    image_vectors: torch.Tensor  # (B, q), unnormalised
    logits_per_text: torch.Tensor  # (B, B) s · cos(t_i, v_j), the InfoNCE logits


def caption_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, ret_id: int) -> torch.Tensor:
    """Captioning-mode labels for the text part: padding and [RET] masked, BOS and words kept."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    return labels.masked_fill(input_ids == ret_id, IGNORE)


def retrieval_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Retrieval-mode labels: only padding masked, so [RET] is a target."""
    return input_ids.masked_fill(attention_mask == 0, IGNORE)


def next_token_ce(h: torch.Tensor, labels: torch.Tensor, head) -> torch.Tensor:
    """Mean next-token CE from final LM states h (B, T, d_out): position t predicts labels[t+1].

    ``head`` maps states (N, d_out) to logits (N, V') (``Fromage.logits_at``); only positions
    with a label go through it, so no (B, T, V') tensor is ever built.
    """
    target = labels[:, 1:]
    keep = target != IGNORE
    return F.cross_entropy(head(h[:, :-1][keep]), target[keep])


def fromage_loss(cap_ce, ret_ce, t2i, i2t, w_cap: float = 1.0, w_ret: float = 1.0) -> torch.Tensor:
    """L = w_cap · CE_cap + w_ret · (CE_ret + (L_t2i + L_i2t) / 2)."""
    return w_cap * cap_ce + w_ret * (ret_ce + (t2i + i2t) / 2)


def info_nce(text: torch.Tensor, image: torch.Tensor, scale: torch.Tensor, gather: bool = False):
    """Symmetric InfoNCE.

    text, image: (B, q) unnormalised vectors; scale: exp(logit_scale), a scalar.
    Returns (loss_t2i, loss_i2t, logits_per_text (B, B)).

    Data parallel (``gather=True``, passed by the trainer when it runs W > 1 ranks): every
    rank all-gathers the normalised vectors (``gather.all_gather_with_grad``: slot r holds
    rank r's shard, only the local slot carries grad), so B = B_global, the logits are the global
    (B_global, B_global) matrix, the targets are ``arange(B_global)`` and both losses are the
    global-batch losses, identical on every rank. Gradient scaling: the gradient that reaches
    rank r's adapters through its vectors is only the part of dL/dθ that flows through shard r;
    the full gradient is the *sum* of these over ranks, and DDP *averages*. So the gradient into
    the local vectors is multiplied by W (``gather.scale_grad``) before gathering: DDP's
    mean of W·(part r) is then the full gradient. The loss value itself is not scaled, and
    ``scale`` is applied after the gather: its gradient is already the full one on every rank
    (scaling the loss by W instead would make logit_scale's gradient W times too large).
    """
    t = F.normalize(text.float(), dim=-1)
    v = F.normalize(image.float(), dim=-1)
    if gather and gather_ops.active():
        w = gather_ops.world()
        t = gather_ops.all_gather_with_grad(gather_ops.scale_grad(t, w))
        v = gather_ops.all_gather_with_grad(gather_ops.scale_grad(v, w))
    logits_per_text = t @ (v * scale).T  # (B, B): row i scores text i against every image
    target = torch.arange(t.shape[0], device=t.device)  # global order = rank order of the shards
    loss_t2i = F.cross_entropy(logits_per_text, target)
    loss_i2t = F.cross_entropy(logits_per_text.T, target)
    return loss_t2i, loss_i2t, logits_per_text
