"""Configuration dataclasses, checked when they are made.

``FromageConfig`` names the two frozen backbones and describes the trained adapters. It is
saved as JSON beside every checkpoint, so a checkpoint always knows which backbones it needs.
``TrainConfig`` says how the adapters are trained. A bad value (``--set batch_size=0``,
``lr=-1``, ``max_steps=abc``, ``precision=fp8``) fails at once, in one line naming the setting
and what it accepts: :class:`ConfigError` is a :class:`~fromage_mini.errors.FromageError` (the CLI
prints it without a traceback) and a ``ValueError``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import FromageError


class ConfigError(FromageError, ValueError):
    """A setting outside what it accepts."""


# rule: (kind, check, what it accepts); kind "int" / "float" / "str"; None passes when allowed
def _int(lo=None):
    return ("int", lambda v: lo is None or v >= lo, "an integer" + (f" >= {lo}" if lo is not None else ""))


def _float(lo=None, hi=None, lo_open=False, hi_open=False):
    def ok(v):
        return ((lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
                and math.isfinite(v))
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    return ("float", ok, "a number" + (" " + " and ".join(x for x in (lo_s, hi_s) if x) if lo_s or hi_s else ""))


def _choice(*names):
    return ("str", lambda v: v in names, "one of " + ", ".join(names))


_IS = {  # a bool is not a number here, though Python counts it as an int
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
}
_BOOL = ("bool", lambda v: True, "true or false")


def _validate(cfg, rules: dict, optional: frozenset = frozenset()) -> None:
    """Check every field named in ``rules``; raise :class:`ConfigError` on the first bad one."""
    for name, (kind, ok, accepts) in rules.items():
        v = getattr(cfg, name)
        if v is None and name in optional:
            continue
        if not _IS[kind](v) or not ok(v):
            extra = " or none" if name in optional else ""
            raise ConfigError(f"{name}={v!r}: must be {accepts}{extra}")


@dataclass
class FromageConfig:
    """Everything needed to rebuild a FROMAGe model (backbones by name, adapter shapes, losses).

    Args:
        lm: hub name or local path of any Hugging Face causal LM (OPT, GPT-2, Llama family, ...).
        vision: hub name or local path of a vision tower with one pooled vector per image
            (``CLIPVisionModel``, a full ``CLIPModel``, ``SiglipVisionModel``, ...).
        n_visual_tokens: k, the number of LM input embeddings one image becomes (the pooled
            prefix; the grid prefix always gives ``grid_size²``).
        visual_prefix: where the k visual tokens come from. ``"pooled"`` (FROMAGe): one pooled
            feature f through Linear(D -> k·d). ``"grid"`` (LLaVA's step): the tower's patch tokens
            (CLS excluded) average-pooled to a ``grid_size`` × ``grid_size`` grid, one LM token per
            cell, each through the ``projector``. The image retrieval head reads the pooled f in both.
        grid_size: g, cells per side of the grid prefix.
        grid_layer: the tower layer whose patch tokens are pooled (-1: the last layer's output).
        cell_pool: how a cell's patch tokens become its one input vector: ``"mean"`` (averaged) or
            ``"concat"`` (the s × s patch tokens of the cell side by side, s = patches per side / g, so the
            projector sees the shape inside the cell, not only its average).
        cell_names: for the grid prefix, one short text per cell in reading order (e.g. "top left", ...,
            "bottom right"), or None. When set, each cell's token follows its name and a colon
            (`` top left: <cell> top: <cell> ...``), so a frozen LM reads *where* a cell is as words
            instead of learning it from a position in the prefix. The names are frozen LM tokens;
            they lengthen the prefix (:attr:`Fromage.n_prefix`) but add no trained parameter.
        projector: for the grid prefix, ``"linear"`` (D -> d per cell) or ``"mlp"`` (D -> d -> d with
            a GELU between, as LLaVA-1.5); the pooled prefix is always FROMAGe's linear map.
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
        lm_dtype: dtype the frozen LM is loaded in: "auto" (``backbones.pick_dtype``: bf16 on a
            bf16-capable CUDA GPU, fp16 on an older CUDA GPU, fp32 on Apple MPS and on CPUs),
            "float32", "bfloat16", "float16", or "int8"/"nf4" (bitsandbytes, GPU).
    """

    lm: str = "facebook/opt-125m"
    vision: str = "openai/clip-vit-base-patch32"
    n_visual_tokens: int = 1
    visual_prefix: str = "pooled"
    grid_size: int = 3
    grid_layer: int = -1
    cell_pool: str = "mean"
    cell_names: tuple[str, ...] | None = None
    projector: str = "linear"
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
        if not isinstance(self.ret_layers, (tuple, list)) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in self.ret_layers) or not self.ret_layers:
            raise ConfigError(f"ret_layers={self.ret_layers!r}: must be a non-empty tuple of layer numbers")
        self.ret_layers = tuple(self.ret_layers)
        if self.cell_names is not None:
            names = self.cell_names
            if (isinstance(names, str) or not isinstance(names, (tuple, list))
                    or not all(isinstance(n, str) and n.strip() for n in names)):
                raise ConfigError(f"cell_names={names!r}: must be a tuple of non-empty texts, one per grid cell")
            self.cell_names = tuple(names)
            if self.visual_prefix != "grid" or len(names) != self.grid_size ** 2:
                raise ConfigError(f"cell_names: {len(names)} names need visual_prefix='grid' with grid_size² = "
                                  f"{len(names)} cells (got {self.visual_prefix}, grid_size={self.grid_size})")
        _validate(self, _MODEL_RULES, frozenset({"ret_init_text", "max_logit_scale"}))
        if self.visual_prefix == "grid":
            self.n_visual_tokens = self.grid_size ** 2  # one LM token per cell

    @property
    def feature_kind(self) -> str:
        """What one image's cached feature is: "pooled" (D,), "pooled+grid<g>@<layer>" (1 + g², D), or with
        ``cell_pool="concat"`` "pooled+grid<g>@<layer>+concat" (1 + g²·s², D)."""
        if self.visual_prefix == "pooled":
            return "pooled"
        return f"pooled+grid{self.grid_size}@{self.grid_layer}" + ("+concat" if self.cell_pool == "concat" else "")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ret_layers"] = list(self.ret_layers)
        if self.cell_names is not None:
            d["cell_names"] = list(self.cell_names)
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


@dataclass
class TrainConfig:
    """How to train the adapters (defaults follow the original where it made sense)."""

    train_data: str = ""  # TSV, folder of webdataset shards, imagefolder/parquet, or hf:NAME
    val_data: str = ""
    cache_dir: str = "cache:features"  # frozen-feature cache root (per vision fingerprint); see fromage_mini.paths
    batch_size: int = 180
    grad_accum: int = 1  # adds no contrastive negatives (a warning says so)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay: str = "none"  # after warm-up: "none" (constant, as the original) or "cosine" to 0 at max_steps
    max_steps: int = 20_000
    max_seconds: float | None = None  # stop early when training time (excl. caching) exceeds this
    grad_clip: float = 1.0
    val_every: int = 2000
    val_batch_size: int = 256
    caption_eval: int = 100  # greedy captions on this many validation images per validation
    caption_metric: str = "token_f1"  # or "shapesworld" (object count and attribute binding)
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on GPUs that support it, fp32 on CPU
    center_heads: bool = False  # start the retrieval heads' outputs centred on the training data
    ret_renorm: bool = False  # after every step rescale [RET]'s input row to the vocabulary's mean norm (original)
    image_root: str | None = None  # folder a TSV's image paths are relative to (default: the TSV's folder)
    allow_outside_root: bool = False  # read image paths leading outside that folder (.., absolute, symlinks)
    gallery: bool = True  # at the end, draw gallery.png: captions and retrievals of the best checkpoint

    def __post_init__(self):
        if self.lr_decay is None:  # `--set lr_decay=none` arrives as None
            self.lr_decay = "none"
        self.betas = tuple(self.betas)
        _validate(self, _TRAIN_RULES, frozenset({"max_seconds", "grad_clip", "image_root"}))

    def to_dict(self):
        return dataclasses.asdict(self)


# lm_dtype names -> torch dtype attribute (backbones.pick_dtype reads this table); plus "auto" and the
# bitsandbytes quantisations
LM_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
             "float16": "float16", "fp16": "float16"}
QUANTIZED_DTYPES = ("int8", "nf4")

_MODEL_RULES = {
    "lm": ("str", bool, "a hub name or a path"), "vision": ("str", bool, "a hub name or a path"),
    "n_visual_tokens": _int(1), "ret_dim": _int(1),
    "visual_prefix": _choice("pooled", "grid"), "grid_size": _int(1), "grid_layer": _int(),
    "cell_pool": _choice("mean", "concat"),
    "projector": _choice("linear", "mlp"), "fast_ret_pass": _BOOL, "pack_sequences": _BOOL,
    "image_dropout": _float(0, 1, hi_open=True), "text_dropout": _float(0, 1, hi_open=True),
    "cap_loss_weight": _float(0), "ret_loss_weight": _float(0), "concat_prob": _float(0, 1),
    "image_layout": _choice("before_bos", "after_bos"), "ret_token": ("str", bool, "a non-empty token"),
    "ret_init_text": ("str", bool, "a non-empty text"), "init_logit_scale": _float(),
    "max_logit_scale": _float(0, lo_open=True),
    "max_len": ("int", lambda v: v >= 3, "an integer >= 3 (room for BOS, one word and [RET])"),
    "lm_dtype": _choice("auto", *LM_DTYPES, *QUANTIZED_DTYPES),
}
_TRAIN_RULES = {
    "batch_size": _int(1), "grad_accum": _int(1),
    "lr": _float(0, lo_open=True), "eps": _float(0, lo_open=True),
    "weight_decay": _float(0), "warmup_steps": _int(0), "lr_decay": _choice("none", "cosine"),
    "max_steps": _int(1), "max_seconds": _float(0, lo_open=True), "grad_clip": _float(0),
    "val_every": _int(1), "val_batch_size": _int(1),
    "caption_eval": _int(0), "caption_metric": _choice("token_f1", "shapesworld"), "log_every": _int(1),
    "ckpt_every": _int(1), "seed": _int(), "device": ("str", bool, "auto, cpu, cuda, cuda:N or mps"),
    "precision": _choice("auto", "bf16", "fp32"), "center_heads": _BOOL, "ret_renorm": _BOOL,
    "image_root": ("str", bool, "a folder"), "allow_outside_root": _BOOL,
    "gallery": _BOOL,
}


__all__ = ["ConfigError", "FromageConfig", "TrainConfig"]
