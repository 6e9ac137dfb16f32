"""The original FROMAGe training step, re-created for a same-hardware speed comparison.

What it reproduces (cost-wise) from kohjingyu/fromage ``main.py`` / ``models.py``:
  * the vision tower runs live, once per mode (twice per step), on pixels;
  * two separate LM passes (captioning, retrieval);
  * the whole input-embedding matrix (tied with the output head) is trainable, the gradient of
    every row but [RET] is zeroed before the step, and AdamW keeps state for all of it;
  * after the step the [RET] row is renormalised to the mean row norm.
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
        self.lm.requires_grad_(False)
        self.vision.requires_grad_(False)
        self.emb = lm.get_input_embeddings()
        self.emb.weight.requires_grad_(True)  # what resize_token_embeddings did in transformers 4.21
        d, D = self.emb.embedding_dim, vision.config.hidden_size
        self.k = k
        self.ret_id = self.emb.num_embeddings - 1
        dtype = self.emb.weight.dtype
        self.visual_embeddings = nn.Linear(D, d * k).to(self.emb.weight.device, dtype)
        self.text_fc = nn.Linear(d, q).to(self.emb.weight.device, dtype)
        self.visual_fc = nn.Linear(D, q).to(self.emb.weight.device, dtype)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device=self.emb.weight.device, dtype=dtype))

    def trainable(self):
        return [p for p in self.parameters() if p.requires_grad]

    def loss(self, pixel_values, ids):
        B, L = ids.shape
        # captioning mode: CLIP, prefix, LM
        f = self.vision(pixel_values=pixel_values).pooler_output
        prefix = self.visual_embeddings(f).view(B, self.k, -1)
        x = torch.cat([prefix, self.emb(ids)], 1)
        labels = torch.cat([ids.new_full((B, self.k), -100), ids.masked_fill(ids == self.ret_id, -100)], 1)
        cap = self.lm(inputs_embeds=x, labels=labels).loss
        # retrieval mode: CLIP again, LM again
        f2 = self.vision(pixel_values=pixel_values).pooler_output
        out = self.lm(inputs_embeds=self.emb(ids), labels=ids, output_hidden_states=True)
        t = F.normalize(self.text_fc(out.hidden_states[-1][:, -1]), dim=-1)
        v = F.normalize(self.visual_fc(f2), dim=-1) * self.logit_scale.exp()
        logits = t @ v.T
        target = torch.arange(B, device=ids.device)
        nce = (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.T.float(), target)) / 2
        return cap + out.loss + nce

    def after_backward(self):
        g = self.emb.weight.grad
        mask = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
        mask[self.ret_id] = False
        g[mask] = 0  # only [RET]'s row may change

    @torch.no_grad()
    def after_step(self):
        w = self.emb.weight
        w[-1] = w[-1] / w[-1].norm() * w[:-1].norm(dim=1).mean()
