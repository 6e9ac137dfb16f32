"""Exact top-k search by cosine over the index's memory-mapped fp16 rows, chunked so that peak extra
memory stays bounded however many rows the index holds.

Searching is exact (brute force, no approximation in the result). Few queries: a fp16 matrix-vector
product over the rows (PyTorch's CPU kernel accumulates in fp32) picks a small candidate set per chunk
with a safety margin, which is then rescored exactly in fp32. Many queries: each chunk is converted to
fp32 in a small cache-resident buffer and multiplied by all queries at once.

Shapes: N rows, d width, n queries, k results per query.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..infer.tensor_index import check_k, exclusions
from .store import _as_float32_rows, _normalise_rows

# Search tuning, measured with benchmarks/bench_index.py --strategies on a 2-core AVX2 CPU. Fewer, larger
# steps also cope better with a busy machine (every step is a parallel region that waits for all threads).
_FP16_CHUNK_ROWS = 1 << 20  # rows per fp16 mat-vec step (a 2 MB fp16 score buffer)
_CHUNK_ROWS = 1 << 18  # rows per step of the many-query path (score buffer: rows x 64 queries x 4 B)
# Rows converted to fp32 at once in the many-query path: with one thread, small cache-resident steps
# (4 MB) are fastest; with several, each step's thread synchronisation costs more than the cache
# misses of 16 MB steps (much more when other processes compete for the cores).
_SUB_ROWS: int | None = None  # None: 4096 rows with one torch thread, 16384 with more
_FP16_MAX_QUERIES = 4  # up to this many queries use the fp16 mat-vec + exact-rescore path
# fp16 scores differ from exact ones by err <= ~1e-3 (rounding of the query and of each output, each
# <= 2^-11 for unit vectors, with fp32 accumulation). Every row of a chunk's true top-k then has an
# fp16 score >= (k-th fp16 score) - 2 err, so rescoring the rows within this margin is exact.
_FP16_MARGIN = 1.0 / 256
_QUERY_GROUP = 64  # queries scanned together in the many-query path (bounds the score buffer)


def search(rows, n_rows: int, dim: int, queries, k: int = 10, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``n_rows`` unit rows of width ``dim`` by cosine (``RetrievalIndex.search``; what
    ``k`` and ``exclude`` mean: :class:`~fromage_mini.infer.tensor_index.ImageIndex`).

    ``rows()`` gives the (N, d) fp16 tensor; it is called only when there is something to search.
    ``queries`` (d,) or (n, d), any float dtype, are normalised here. Returns (scores (n, k) float32,
    ids (n, k) int64), best first; slots that exclusions leave empty hold -inf and -1.
    """
    q = _normalise_rows(_as_float32_rows(queries, dim))  # (n, d) float32
    n, N = q.shape[0], n_rows
    k = check_k(k, N)
    excl = exclusions(exclude, n)  # n sorted int64 arrays
    scores = np.full((n, k), -np.inf, np.float32)
    ids = np.full((n, k), -1, np.int64)
    if k == 0 or n == 0:
        return scores, ids
    V = rows()  # (N, d) fp16
    if n <= _FP16_MAX_QUERIES and _fp16_matvec_is_accurate(dim):
        for j in range(n):
            scores[j], ids[j] = _search_fp16(V, torch.from_numpy(q[j]), k, excl[j])
    else:
        for g in range(0, n, _QUERY_GROUP):
            scores[g:g + _QUERY_GROUP], ids[g:g + _QUERY_GROUP] = _search_fp32(
                V, torch.from_numpy(q[g:g + _QUERY_GROUP]), k, excl[g:g + _QUERY_GROUP])
    return scores, ids


def _search_fp16(V: torch.Tensor, q: torch.Tensor, k: int, excl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One query (d,) float32: fp16 mat-vec per chunk, then exact fp32 rescoring of candidates."""
    N = V.shape[0]
    q16 = q.half()
    approx = torch.empty(min(_FP16_CHUNK_ROWS, N), dtype=torch.float16)  # fp16 scores of one chunk
    best_s, best_i = torch.full((k,), -torch.inf), torch.full((k,), -1, dtype=torch.int64)
    for s in range(0, N, _FP16_CHUNK_ROWS):
        e = min(s + _FP16_CHUNK_ROWS, N)
        a = approx[:e - s]
        torch.mv(V[s:e], q16, out=a)  # (m,) fp16, accumulated in fp32
        local = torch.from_numpy(_local(excl, s, e))
        a[local] = -torch.inf
        kth = float(a.topk(min(k, e - s)).values[-1])
        # the chunk's true top-k lies within _FP16_MARGIN of kth (see there); rescore those rows exactly
        cand = torch.nonzero(a > -torch.inf if kth == -np.inf else a >= kth - _FP16_MARGIN).view(-1)
        exact = torch.cat([V[s + c].float() @ q for c in cand.split(4096)]) if len(cand) else q[:0]
        best_s, best_i = _merge(best_s, best_i, exact, cand + s, k)
    return best_s.numpy(), best_i.numpy()


def _search_fp32(V: torch.Tensor, q: torch.Tensor, k: int, excl: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Queries (n, d) float32: chunks converted to fp32 in a small buffer, one matmul per chunk."""
    (N, dim), n = V.shape, q.shape[0]
    sub = _SUB_ROWS or (4096 if torch.get_num_threads() == 1 else 16384)
    qt = q.T.contiguous()  # (d, n)
    buf = torch.empty(min(sub, N), dim)  # fp32 copy of a few rows
    sc = torch.empty(min(_CHUNK_ROWS, N), n)  # (rows, n) exact scores of one chunk
    best_s, best_i = torch.full((n, k), -torch.inf), torch.full((n, k), -1, dtype=torch.int64)
    for s in range(0, N, _CHUNK_ROWS):
        e = min(s + _CHUNK_ROWS, N)
        for r in range(s, e, sub):
            t = min(r + sub, e)
            b = buf[:t - r]
            b.copy_(V[r:t])
            torch.mm(b, qt, out=sc[r - s:t - s])
        c = sc[:e - s]
        for j, ex in enumerate(excl):
            c[torch.from_numpy(_local(ex, s, e)), j] = -torch.inf
        top_s, top_i = c.topk(min(k, e - s), dim=0)  # (k', n)
        best_s, best_i = _merge(best_s, best_i, top_s.T, top_i.T + s, k)
    return best_s.numpy(), best_i.numpy()


@functools.cache
def _fp16_matvec_is_accurate(dim: int) -> bool:
    """Check once per process that torch's fp16 mat-vec has the error the fp16 path assumes.

    PyTorch's CPU kernel accumulates in fp32, so the error is ~1e-3 at most; a build that
    accumulated in fp16 would err more, and then every search takes the (exact) fp32 path.
    """
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    rows = torch.randn(4096, dim, generator=g) * torch.linspace(0, 1, 4096)[:, None] + 4 * q  # cosines ~0.2..1
    v = torch.nn.functional.normalize(rows, dim=1).half()
    err = (torch.mv(v, q.half()).float() - v.float() @ q).abs().max()
    return float(err) <= _FP16_MARGIN / 2


def _merge(best_s, best_i, new_s, new_i, k):
    """Keep the k best of the running (..., k) results and new candidates (..., m)."""
    s, i = torch.cat([best_s, new_s], -1), torch.cat([best_i, new_i], -1)
    top_s, j = s.topk(k, dim=-1)
    top_i = i.gather(-1, j)
    top_i[top_s == -torch.inf] = -1  # excluded rows are never returned, even to fill a slot
    return top_s, top_i


def _local(ids: np.ndarray, s: int, e: int) -> np.ndarray:
    """The sorted ids in [s, e), shifted to chunk-local positions."""
    return ids[np.searchsorted(ids, s):np.searchsorted(ids, e)] - s

