"""The original FROMAGe training step, re-created for a same-hardware speed comparison.

What it reproduces (cost-wise) from kohjingyu/fromage ``main.py`` / ``models.py``:
  * the vision tower runs live, once per mode (twice per step), on pixels;
  * two separate LM passes (captioning, retrieval), each with full-vocabulary logits at every position;
  * the whole input-embedding matrix (tied with the output head) is trainable, the gradient of
    every row but [RET] is zeroed before the step, and AdamW keeps state for all of it;
  * after the step the [RET] row is renormalised to the mean row norm.

The trainable tied matrix is a private copy (``self.emb_weight``), used for the input embeddings and
as the output head, so the LM object can be shared with our model in the same benchmark run without
changing its ``requires_grad`` flags (an earlier version flipped the shared embedding to trainable,
which silently switched our model to its slow path).
It is a benchmark baseline, not a training path of the library.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class OriginalScheme(nn.Module):
    def __init__(self, lm, vision, k: int = 1, q: int = 256):
        super().__init__()
        self.lm, self.vision = lm, vision
        w = lm.get_input_embeddings().weight
        # what resize_token_embeddings did in transformers 4.21: the tied (V, d) matrix becomes trainable
        self.emb_weight = nn.Parameter(w.detach().clone())
        d, D = w.shape[1], vision.config.hidden_size
        self.k = k
        self.ret_id = w.shape[0] - 1
        dtype = w.dtype
        self.visual_embeddings = nn.Linear(D, d * k).to(w.device, dtype)
        self.text_fc = nn.Linear(d, q).to(w.device, dtype)
        self.visual_fc = nn.Linear(D, q).to(w.device, dtype)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device=w.device, dtype=dtype))

    def trainable(self):
        return [p for p in self.parameters() if p.requires_grad]

    def _lm(self, x, labels):
        """Frozen body, tied trainable head at every position, HF-style shifted CE: (loss, hidden_states)."""
        out = self.lm.base_model(inputs_embeds=x, output_hidden_states=True)
        logits = out.last_hidden_state @ self.emb_weight.T  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return loss, out.hidden_states

    def loss(self, pixel_values, ids, last=None):
        """Both modes' losses; rows are padded to the same width (as the original's tokenizer did)
        and ``last`` (B,) is where [RET] sits (default: the last column)."""
        B, L = ids.shape
        last = torch.full((B,), L - 1, device=ids.device) if last is None else last
        # captioning mode: CLIP, prefix, LM
        f = self.vision(pixel_values=pixel_values).pooler_output
        prefix = self.visual_embeddings(f).view(B, self.k, -1)
        x = torch.cat([prefix, F.embedding(ids, self.emb_weight)], 1)
        labels = torch.cat([ids.new_full((B, self.k), -100), ids.masked_fill(ids == self.ret_id, -100)], 1)
        labels = labels.masked_fill(torch.cat([labels.new_zeros(B, self.k), ids], 1) == 1, -100)  # padding
        cap, _ = self._lm(x, labels)
        # retrieval mode: CLIP again, LM again
        f2 = self.vision(pixel_values=pixel_values).pooler_output
        ret_ce, hs = self._lm(F.embedding(ids, self.emb_weight), ids.masked_fill(ids == 1, -100))
        t = F.normalize(self.text_fc(hs[-1][torch.arange(B, device=ids.device), last]), dim=-1)
        v = F.normalize(self.visual_fc(f2), dim=-1) * self.logit_scale.exp()
        logits = t @ v.T
        target = torch.arange(B, device=ids.device)
        nce = (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.T.float(), target)) / 2
        return cap + ret_ce + nce

    def after_backward(self):
        g = self.emb_weight.grad
        mask = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
        mask[self.ret_id] = False
        g[mask] = 0  # only [RET]'s row may change

    @torch.no_grad()
    def after_step(self):
        w = self.emb_weight
        w[-1] = w[-1] / w[-1].norm() * w[:-1].norm(dim=1).mean()
