"""Configuration dataclasses.

``FromageConfig`` names the two frozen backbones and describes the trained adapters. It is
saved as JSON beside every checkpoint, so a checkpoint always knows which backbones it needs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class FromageConfig:
    """Everything needed to rebuild a FROMAGe model (backbones by name, adapter shapes, losses).

    Args:
        lm: hub name or local path of any Hugging Face causal LM (OPT, GPT-2, Llama family, ...).
        vision: hub name or local path of a vision tower with one pooled vector per image
            (``CLIPVisionModel``, a full ``CLIPModel``, ``SiglipVisionModel``, ...).
        n_visual_tokens: k, the number of LM input embeddings one image becomes.
        ret_dim: q, the size of the shared retrieval space.
        ret_layers: LM hidden-state layers whose [RET] states feed the text retrieval head
            (one linear head per layer, outputs summed; -1 = final layer after the final norm).
        image_dropout / text_dropout: dropout on the visual prefix / inside the text head.
        cap_loss_weight / ret_loss_weight: loss = w_cap·CE_cap + w_ret·(CE_ret + (t2i + i2t)/2).
        concat_prob: probability, per training step, of packing two captioning examples into one
            row (the paper's "concatenated captions" trick; captioning mode only).
        image_layout: ``"before_bos"`` is the original layout ``[img, </s>, caption]``;
            ``"after_bos"`` gives ``[</s>, img, caption]`` (found better for small LMs).
        ret_token: the retrieval token's text.
        ret_init_text: if set, [RET] starts from the mean embedding of this text's tokens
            (e.g. ``" summary"`` for an LM that learnt to restate content after that word);
            otherwise a random vector with the mean norm of the LM's embedding rows.
        max_logit_scale: clamp for exp(logit_scale) (None = no clamp, as in the original).
        max_len: caption length in tokens including BOS and [RET] (the original used 24).
        fast_ret_pass: compute the retrieval pass as a no-grad pass over the caption plus one
            differentiable step for [RET] (exact same losses and gradients, about a third less
            work per step: only [RET]'s own position depends on trained parameters).
        pack_sequences: run the LM on packed rows (several captions per row, block-diagonal causal
            mask, positions restarting per caption) whenever that saves rows; same losses, no work
            on padding. Needs an LM that accepts a 4-D boolean attention mask (OPT, GPT-2, Llama do).
        lm_dtype: dtype the frozen LM is loaded in: "auto" (bf16 on a bf16-capable GPU,
            else fp32), "float32", "bfloat16", "float16", or "int8"/"nf4" (bitsandbytes, GPU).
    """

    lm: str = "facebook/opt-125m"
    vision: str = "openai/clip-vit-base-patch32"
    n_visual_tokens: int = 1
    ret_dim: int = 256
    ret_layers: tuple[int, ...] = (-1,)
    image_dropout: float = 0.0
    text_dropout: float = 0.0
    cap_loss_weight: float = 1.0
    ret_loss_weight: float = 1.0
    concat_prob: float = 0.5
    image_layout: str = "before_bos"
    ret_token: str = "[RET]"
    ret_init_text: str | None = None
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float | None = 100.0
    max_len: int = 24
    fast_ret_pass: bool = True
    pack_sequences: bool = True
    lm_dtype: str = "auto"

    def __post_init__(self):
        self.ret_layers = tuple(int(x) for x in self.ret_layers)
        if self.image_layout not in ("before_bos", "after_bos"):
            raise ValueError(f"image_layout must be 'before_bos' or 'after_bos', got {self.image_layout!r}")
        if self.n_visual_tokens < 1:
            raise ValueError("n_visual_tokens must be >= 1")
        if self.max_len < 3:
            raise ValueError("max_len must leave room for BOS, one word and [RET]")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ret_layers"] = list(self.ret_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FromageConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FromageConfig fields: {unknown}")
        return cls(**d)

    def replace(self, **kw) -> "FromageConfig":
        return dataclasses.replace(self, **kw)


__all__ = ["FromageConfig"]
