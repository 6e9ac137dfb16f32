"""Metrics: ranks are pessimistic (ties and NaN never count as hits), recall, NDCG, token F1."""
import math

import pytest
import torch

from fromage_mini import metrics as M


def test_target_ranks_and_rank_metrics():
    scores = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.2, 0.9]])
    assert M.target_ranks(scores, torch.tensor([2, 0])).tolist() == [2, 2]  # a tie counts against it
    m = M.rank_metrics(torch.tensor([1, 3, 12]), ks=(1, 5, 10))
    assert m["R@1"] == pytest.approx(1 / 3) and m["R@5"] == pytest.approx(2 / 3) and m["R@10"] == pytest.approx(2 / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert m["mean_rank"] == pytest.approx(16 / 3)


def test_ndcg_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    rel = torch.tensor([[0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # row 0: K=2; the two best-scored options (0, 2) have relevance 0, 0.5 -> 0.5/log2(3);
    #        the ideal order has 1, 0.5 -> 1 + 0.5/log2(3). Row 1 is ideal (1.0). Row 2 has no relevant option.
    row0 = (0.5 / math.log2(3)) / (1 + 0.5 / math.log2(3))
    assert M.ndcg(scores, rel) == pytest.approx((row0 + 1.0) / 2)


# ---------------------------------------------------------------------------------------------
# readers

def test_ties_never_count_as_hits():
    # all-equal scores (e.g. ret_dim=0 gives zero vectors): every item ranks last, R@1 = 0, not 1
    flat = torch.zeros(5, 5)
    assert M.target_ranks(flat, torch.arange(5)).tolist() == [5] * 5
    assert M.recall_at_k(flat, (1, 5)) == {"R@1": 0.0, "R@5": 1.0}


def test_nan_score_ranks_last():
    s = torch.tensor([[float("nan"), 0.1, 0.2], [0.0, 0.5, float("nan")]])
    assert M.target_ranks(s, torch.tensor([0, 1])).tolist() == [3, 2]  # a NaN rival counts ahead too


def test_recall_only_for_k_within_the_candidates():
    s = torch.eye(3) + 0.01 * torch.arange(9.0).view(3, 3)
    assert M.recall_at_k(s, (1, 5)) == {"R@1": 1.0}


def test_token_f1():
    assert M.token_f1("a red circle.", "A red circle") == 1.0
    assert M.token_f1("a red circle", "a blue square") == pytest.approx(1 / 3)
    assert M.token_f1("", "a") == 0.0
