"""Caption quality in ShapesWorld: is each object named with the right size, colour, shape AND place?"""
from __future__ import annotations

from .captions import caption_scores, parse_caption


def score_captions(preds: list[str], keys: list[str], refs: list[str]) -> dict:
    """Aggregate :func:`caption_scores` over a split whose references are canonical captions.

    Returns ``count_acc`` (fraction of captions naming the right number of objects), ``object_acc``
    (fraction of all ground-truth objects reproduced with every attribute and position right),
    ``exact`` (fraction of captions equal to the reference) and ``n``.
    """
    n_obj = hits = count_ok = exact = 0
    for pred, ref in zip(preds, refs):
        objects = parse_caption(ref)
        if not objects:  # a reference that is not in the canonical style cannot be scored
            continue
        s = caption_scores(pred, objects)
        count_ok += s["count_ok"]
        exact += s["exact"]
        hits += round(s["object_acc"] * len(objects))
        n_obj += len(objects)
    n = len(preds)
    return {"count_acc": count_ok / max(n, 1), "object_acc": hits / max(n_obj, 1), "exact": exact / max(n, 1), "n": n}
