"""Retrieval and caption metrics, in one place (training, evaluation and the toy CLIP use them).

A rank is 1-based and pessimistic: every other candidate scoring *at least* as high as the right
one is counted ahead of it, so ties never count as hits (all-equal scores give the worst rank,
not R@1 = 1) and a NaN score for the right answer ranks last.
"""
from __future__ import annotations

from collections import Counter

import torch


@torch.no_grad()
def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores (N, M), target (N,) column of the right answer -> (N,) 1-based ranks (ties count against)."""
    right = scores.gather(1, target.long()[:, None])  # (N, 1)
    return (~(scores < right)).sum(1)  # itself + every candidate not strictly below it


def rank_metrics(ranks: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """1-based ranks -> R@k (fraction with rank <= k), MRR and mean rank."""
    r = ranks.float()
    out = {f"R@{k}": (r <= k).float().mean().item() for k in ks}
    out["MRR"] = r.reciprocal().mean().item()
    out["mean_rank"] = r.mean().item()
    return out


@torch.no_grad()
def recall_at_k(scores: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """scores (N, M) with the right answer for row i at column i -> {"R@k": fraction}, k <= M only."""
    ranks = target_ranks(scores, torch.arange(scores.shape[0], device=scores.device))
    return {f"R@{k}": (ranks <= k).float().mean().item() for k in ks if k <= scores.shape[1]}


def ndcg(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    """VisDial NDCG (the challenge starter code's definition), averaged over rows.

    For each row with K options of non-zero relevance: DCG of the K best-scored options,
    Σ_j rel_j / log2(j + 2), divided by the DCG of the K most relevant ones. Rows with no relevant
    option are skipped. scores, relevance: (N, M).
    """
    vals = []
    for s, rel in zip(scores.float(), relevance.float()):
        K = int((rel != 0).sum())
        if K == 0:
            continue
        disc = torch.log2(torch.arange(K).float() + 2)
        dcg = (rel[s.argsort(descending=True, stable=True)[:K]] / disc).sum()
        best = (rel.sort(descending=True).values[:K] / disc).sum()
        vals.append((dcg / best).item())
    return sum(vals) / len(vals) if vals else float("nan")


def token_f1(pred: str, ref: str) -> float:
    """Unigram F1 between two strings (a simple, dataset-agnostic caption score)."""
    p, r = Counter(pred.lower().strip(" .").split()), Counter(ref.lower().strip(" .").split())
    common = sum((p & r).values())
    if not common:
        return 0.0
    prec, rec = common / sum(p.values()), common / sum(r.values())
    return 2 * prec * rec / (prec + rec)
