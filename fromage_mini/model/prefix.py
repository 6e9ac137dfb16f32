"""The visual prefix: an image feature -> the LM input embeddings that stand for the image (B, n_prefix, d).

FROMAGe's prefix is one linear map of the pooled feature f (the paper's eq. 1 input side):

    pooled   f (B, D) -> Linear(D -> k·d) -> (B, k·d) -> k tokens (B, k, d)

The grid prefix (after LLaVA) gives each of the g² = k cells of the tower's patch grid its own token:

    grid     cells (B, g², D) -> LayerNorm (no parameters) -> projector -> + cell_embedding -> (B, g², d)
             projector: Linear(D -> d) ("linear") or Linear(D -> d), GELU, Linear(d -> d) ("mlp", LLaVA-1.5)

and with ``cell_names`` each cell token follows the frozen embeddings of its name (" top left:" x_1
" top:" x_2 ...), so one image takes n_prefix = k + (name tokens) LM positions.

The trained tensors of the projector are this module's own, named as checkpoints name them: ``weight``
and ``bias`` for a linear projector (so ``visual_prefix.weight`` in a Fromage, as in the released
FROMAGe import), ``0.*`` and ``2.*`` for the MLP (numbered as ``nn.Sequential`` numbers them). The
per-cell vector ``cell_embedding`` and the LM's input embedding (for the names) belong to the Fromage
model and are passed in: the first keeps its checkpoint key ``cell_embedding``, the second is frozen
and must not be stored twice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FromageError


def prefix_layout(tokenizer, cell_names, k: int) -> torch.Tensor:
    """(n_prefix,) ids of the prefix: -1 where a cell token goes, the name tokens between (``cell_names``)."""
    if not cell_names:
        return torch.full((k,), -1, dtype=torch.long)
    if tokenizer is None:
        raise FromageError("cell_names needs the LM's tokenizer")
    layout = []
    for name in cell_names:  # " top left:" <cell> " top:" <cell> ...
        layout += tokenizer(f" {name}:", add_special_tokens=False).input_ids + [-1]
    return torch.tensor(layout, dtype=torch.long)


class VisualPrefix(nn.Module):
    """Image features -> visual prefix (B, n_prefix, d): the modality projector of the model.

    ``kind``: "pooled" (FROMAGe) or "grid"; ``projector``: "linear" or "mlp" (grid only);
    ``cell_names``: one name per grid cell, or None; their tokens come from ``tokenizer`` (not kept).
    ``cell_patches``: feature vectors per cell (1 averaged; s² with ``cell_pool="concat"``), joined into
    one input of width ``cell_patches``·D.
    """

    def __init__(self, D: int, d: int, k: int, kind: str = "pooled", projector: str = "linear",
                 dropout: float = 0.0, cell_names=None, tokenizer=None, cell_patches: int = 1):
        super().__init__()
        self.kind, self.k, self.d = kind, k, d
        self.cell_patches = cell_patches if kind == "grid" else 1
        D = D * self.cell_patches
        if kind == "grid" and projector == "mlp":  # LLaVA-1.5's projector, keys 0.* and 2.*
            self.register_parameter("weight", None)
            for i, layer in enumerate((nn.Linear(D, d), nn.GELU(), nn.Linear(d, d))):
                self.add_module(str(i), layer)
        else:  # FROMAGe: one pooled vector -> k tokens; grid: one cell token -> one LM token
            linear = nn.Linear(D, d * k if kind == "pooled" else d)
            self.weight, self.bias = linear.weight, linear.bias
        self.dropout = nn.Dropout(dropout)
        self.has_names = cell_names is not None
        self.register_buffer("layout", prefix_layout(tokenizer, cell_names, k), persistent=False)

    @property
    def n_prefix(self) -> int:
        """How many LM positions one image takes: k (or g²) visual tokens, plus the cell names if any."""
        return int(self.layout.numel())

    def feature_shape(self, D: int) -> tuple[int, ...]:
        """One image's feature F that :meth:`forward` reads, for a tower of width D: (D,) pooled, or
        (1 + g²·cell_patches, D): the pooled vector, then the cells' tokens. The package's one notion of
        it (``Fromage.feature_shape``, which prompts, the feature cache and evaluation go through)."""
        return (D,) if self.kind == "pooled" else (1 + self.k * self.cell_patches, D)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The trained map: (..., D) -> (..., k·d) pooled, or (..., d) per grid cell."""
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        mlp = self._modules  # "0": Linear, "1": GELU, "2": Linear
        return mlp["2"](mlp["1"](mlp["0"](x)))

    def forward(self, features: torch.Tensor, cell_embedding: torch.Tensor | None = None,
                embed=None) -> torch.Tensor:
        """Features (B, D) pooled or (B, 1 + g²·cell_patches, D) pooled + grid cells -> (B, n_prefix, d).

        ``cell_embedding``: (g², d), added to the grid's cell tokens; ``embed``: the frozen LM's input
        embedding (a module or callable: ids -> embeddings), needed only with cell names.
        """
        B = features.shape[0]
        dtype = next(self.parameters()).dtype
        if self.kind == "grid":
            cells = features[:, 1:].to(dtype)  # (B, g²·cell_patches, D); towers' tokens are not on one scale
            cells = F.layer_norm(cells, cells.shape[-1:]).reshape(B, self.k, -1)  # (B, g², cell_patches·D)
            x = self.project(cells) + cell_embedding  # (B, g², d)
        else:
            x = self.project(features.to(dtype))  # (B, k·d)
        x = self.dropout(x).view(B, self.k, self.d)  # (B, k, d)
        if not self.has_names:
            return x
        # " top left:" x_1 " top:" x_2 ...: the names are frozen word embeddings, the cells the tokens above
        names = embed(self.layout.clamp(min=0)).to(x.dtype)  # (n_prefix, d)
        out = names.unsqueeze(0).expand(B, -1, -1).clone()  # (B, n_prefix, d)
        out[:, self.layout < 0] = x
        return out
