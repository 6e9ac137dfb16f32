"""An in-memory cosine index over a few vectors: what a notebook or a gallery searches.

It lives in the inference layer, below ``retrieval/`` (which re-exports it), so that ``generate``,
its callers and the notebooks can use it without importing the folder index.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FromageError


class TensorIndex:
    """An in-memory cosine-similarity index over (N, q) vectors, with optional per-item metadata.

    Same duck-typed interface as ``fromage_mini.retrieval.index.RetrievalIndex``:
    ``search(queries, k, exclude) -> (scores (n, k), ids (n, k))``, ``metadata(i)``, ``len()``.
    """

    def __init__(self, vectors: torch.Tensor, metadata: list[dict] | None = None):
        self.vectors = F.normalize(torch.as_tensor(vectors).float(), dim=-1)  # (N, q)
        self._meta = metadata if metadata is not None else [{} for _ in range(len(self.vectors))]
        if len(self._meta) != len(self.vectors):
            raise FromageError(f"{len(self.vectors)} vectors but {len(self._meta)} metadata entries")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries, k: int = 10, exclude=None):
        """queries (n, q) or (q,) -> (scores (n, k), ids (n, k)), best first; ``exclude``: ids never returned."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise FromageError(f"search(): k must be at least 1 (how many images to return), got {k!r}")
        q = torch.as_tensor(queries).float().reshape(-1, self.vectors.shape[1])
        scores = F.normalize(q, dim=-1) @ self.vectors.T  # (n, N)
        if exclude is not None:
            ex = torch.tensor(sorted({int(i) for i in exclude}), dtype=torch.long)
            if len(ex):
                scores[:, ex] = float("-inf")
        k = min(k, len(self))
        top = scores.topk(k, dim=1)
        return top.values, top.indices

    def metadata(self, i: int) -> dict:
        return self._meta[int(i)]

