"""The image index interface (:class:`ImageIndex`: what ``generate`` and the gallery search) and its
small in-memory implementation, :class:`TensorIndex`, a cosine index over a few vectors.

It lives in the inference layer, below ``retrieval/`` (which re-exports it and whose folder index,
``RetrievalIndex``, follows the same contract through :func:`check_k` and :func:`exclusions`), so that
``generate``, its callers and the notebooks can use it without importing the folder index.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FromageError


@runtime_checkable
class ImageIndex(Protocol):
    """An index of image vectors searched by cosine: ``RetrievalIndex`` (a folder, fp16 rows) and
    :class:`TensorIndex` (in memory, fp32 rows). The one definition of what their methods mean:

    ``search(queries, k=10, exclude=None) -> (scores (n, k), ids (n, k))``: ``queries`` (q,) or (n, q),
    normalised by the index; the k best rows per query, best first. ``k`` (:func:`check_k`) is at
    least 1 and capped at ``len(index)``; an empty index gives no columns whatever ``k`` is.
    ``exclude`` (:func:`exclusions`): row ids never returned, one list for every query or one list per
    query; ids outside the index are ignored. When exclusions leave fewer than k rows, the empty slots
    hold score -inf and id -1 (an excluded row never fills a slot).
    ``RetrievalIndex`` returns numpy arrays, ``TensorIndex`` torch tensors (float32 scores, int64 ids).

    ``metadata(i) -> dict``: row i's metadata; ``len(index)``: its rows.
    """

    def search(self, queries, k: int = 10, exclude=None): ...

    def metadata(self, i: int) -> dict: ...

    def __len__(self) -> int: ...


def check_k(k, n_rows: int) -> int:
    """``search``'s ``k`` -> how many columns it returns: ``min(k, n_rows)``; k < 1 (or a bool) is refused
    when there are rows to return."""
    if n_rows and (isinstance(k, bool) or int(k) < 1):
        raise FromageError(f"search(): k must be at least 1 (results per query), got {k}")
    return min(int(k), n_rows)


def exclusions(exclude, n: int) -> list[np.ndarray]:
    """``search``'s ``exclude`` -> n sorted, unique int64 id arrays, one per query.

    ``exclude``: None, one list of ids (ints, a range, a 1-D array or tensor) for every query, or n lists
    (a list of lists, a 2-D array or tensor), one per query.
    """
    if exclude is None:
        return [np.empty(0, np.int64)] * n
    if isinstance(exclude, torch.Tensor):
        exclude = exclude.cpu().numpy()
    items = list(exclude)
    per_query = bool(items) and all(isinstance(x, (list, tuple, np.ndarray, torch.Tensor)) for x in items)
    if not per_query:
        return [np.unique(np.asarray(items, dtype=np.int64).reshape(-1))] * n
    if len(items) != n:
        raise FromageError(f"exclude has {len(items)} per-query lists for {n} queries")
    return [np.unique(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.int64).reshape(-1))
            for x in items]


class TensorIndex:
    """An in-memory cosine-similarity index over (N, q) vectors, with optional per-item metadata: an
    :class:`ImageIndex` (search results as torch tensors)."""

    def __init__(self, vectors: torch.Tensor, metadata: list[dict] | None = None):
        self.vectors = F.normalize(torch.as_tensor(vectors).float(), dim=-1)  # (N, q)
        self._meta = metadata if metadata is not None else [{} for _ in range(len(self.vectors))]
        if len(self._meta) != len(self.vectors):
            raise FromageError(f"{len(self.vectors)} vectors but {len(self._meta)} metadata entries")

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries, k: int = 10, exclude=None):
        """queries (n, q) or (q,) -> (scores (n, k), ids (n, k)), best first, as :class:`ImageIndex` says."""
        N = len(self)
        k = check_k(k, N)
        q = torch.as_tensor(queries).float().reshape(-1, self.vectors.shape[1])
        scores = F.normalize(q, dim=-1) @ self.vectors.T  # (n, N)
        for j, ex in enumerate(exclusions(exclude, q.shape[0])):
            ex = ex[(ex >= 0) & (ex < N)]
            if len(ex):
                scores[j, torch.from_numpy(ex)] = float("-inf")
        top = scores.topk(k, dim=1)
        return top.values, top.indices.masked_fill(top.values == float("-inf"), -1)

    def metadata(self, i: int) -> dict:
        return self._meta[int(i)]
