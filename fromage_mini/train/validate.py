"""Evaluation during training: recall@k over the whole validation split, caption quality, and the
cheap in-batch recall the log shows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.cache import FeatureCache
from ..infer.modes import eval_mode
from ..metrics import recall_at_k, token_f1


@torch.no_grad()
def retrieval_vectors(model, cache: FeatureCache, batch_size: int = 256, progress: bool = False):
    """Text vectors (``encode_text``: from [RET]) and image vectors (``encode_images``) for every row
    of a cache: (N, q), (N, q)."""
    from tqdm.auto import tqdm

    ts, vs = [], []
    for i in tqdm(range(0, len(cache), batch_size), desc="validating", unit="batch", leave=False,
                  disable=not progress):
        b = {k: v.to(model.device) for k, v in model.tokenize(cache.captions[i: i + batch_size]).items()}
        ts.append(model.encode_text(b["input_ids"], b["attention_mask"]).float().cpu())
        f = cache.features(range(i, min(i + batch_size, len(cache)))).to(model.device)
        vs.append(model.encode_images(f).float().cpu())
    return torch.cat(ts), torch.cat(vs)


@torch.no_grad()
def validate(model, cache: FeatureCache, cfg, progress: bool = False) -> dict:
    """Recall@1/5/10 in both directions over the whole split, plus caption quality (``cfg``: a TrainConfig).

    R@k with k >= the number of rows is left out (:func:`~.guards.meaningful_ks`: it is 1 whatever the
    model does). ``progress``: bars over the retrieval batches and the captions."""
    from .guards import meaningful_ks

    with eval_mode(model):
        t, v = retrieval_vectors(model, cache, cfg.val_batch_size, progress)
        ok = torch.isfinite(v).all(dim=1) & torch.isfinite(t).all(dim=1)  # rows from a damaged cache
        t, v = t[ok], v[ok]
        scores = F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).T  # (N, N) cosine
        ks = meaningful_ks(len(t))
        res = {"t2i": recall_at_k(scores, ks), "i2t": recall_at_k(scores.T, ks)}
        if cfg.caption_eval:
            res["captions"] = caption_quality(model, cache, cfg, progress)
    return res


def caption_quality(model, cache: FeatureCache, cfg, progress: bool = False) -> dict:
    """Greedy captions for the first ``caption_eval`` images, scored against the references."""
    from tqdm.auto import tqdm

    from ..infer.caption import caption

    n = min(cfg.caption_eval, len(cache))
    feats = cache.features(range(n)).to(model.device)
    preds = []
    for i in tqdm(range(0, n, cfg.val_batch_size), desc="captioning", unit="batch", leave=False,
                  disable=not progress):
        preds += caption(model, feats[i: i + cfg.val_batch_size])
    refs = cache.captions[:n]
    if cfg.caption_metric == "shapesworld":
        from ..toyworld.metrics import score_captions

        out = score_captions(preds, cache.keys[:n], refs)
    else:
        out = {"token_f1": sum(token_f1(p, r) for p, r in zip(preds, refs)) / max(n, 1)}
    out["examples"] = [{"ref": r, "pred": p} for r, p in list(zip(refs, preds))[:5]]
    return out


@torch.no_grad()
def in_batch_recall(logits_per_text: torch.Tensor) -> dict[str, float]:
    """R@1 both ways among the batch's own pairs, from a forward's InfoNCE logits (B, B) (one host sync)."""
    return {"t2i_R@1": recall_at_k(logits_per_text, (1,))["R@1"],
            "i2t_R@1": recall_at_k(logits_per_text.T, (1,))["R@1"]}
