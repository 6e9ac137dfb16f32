"""Why are ShapesWorld greedy captions poor at binding attributes? Three measurements.

    python benchmarks/diagnose_toy_captions.py [--model data_samples/toy_fromage]

1. The trained model's greedy captions on the validation split (count and per-object accuracy).
2. Oracle context: the frozen toy LM alone, given the *text* summary of the scene
   (``smallbluecircle topleft, ...:``, a form it saw in pretraining), greedily writes the caption.
   This bounds what the LM can do when the context holds the right information.
3. Linear probes on the frozen vision tower's pooled feature: can a linear map read each cell's
   (size, colour, shape) from the 128-d feature? A logistic probe per cell trained on the training
   split, scored on validation, against the majority-class baseline and chance. If the information
   is not linearly there, a linear visual prefix cannot hand it to the LM.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fromage_mini import Fromage, caption  # noqa: E402
from fromage_mini.data.cache import cached_split  # noqa: E402
from fromage_mini.paths import DATA_SAMPLES  # noqa: E402
from fromage_mini.toyworld import COLOURS, SHAPES, SIZES  # noqa: E402
from fromage_mini.toyworld.corpus import summary  # noqa: E402
from fromage_mini.toyworld.metrics import score_captions  # noqa: E402


def scenes(split):
    return json.loads((DATA_SAMPLES / f"shapesworld/scenes_{split}.json").read_text())


@torch.no_grad()
def oracle_captions(model, recs, batch=100):
    """The LM alone, prompted with the scene's summary text, writes the caption (greedy)."""
    tok, lm = model.tokenizer, model.lm
    outs = []
    for i in range(0, len(recs), batch):
        prompts = [summary(r["scene"]["objects"]) + ":" for r in recs[i:i + batch]]
        enc = [tok(p).input_ids for p in prompts]
        for ids in enc:  # one at a time: prompts differ in length (small model, fast)
            x = torch.tensor([ids])
            out = lm.generate(x, max_new_tokens=48, do_sample=False, eos_token_id=tok.convert_tokens_to_ids("."),
                              pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
            outs.append(text.split(".")[0].strip() + ".")
    return outs


def probe(train_x, train_y, val_x, val_y):
    """Logistic-regression probe on standardised features.

    Returns (accuracy, majority-class baseline, accuracy on the cells that hold an object).
    """
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000).fit((train_x - mu) / sd, train_y)
    pred = clf.predict((val_x - mu) / sd)
    occ = val_y > 0
    return (float((pred == val_y).mean()), float((val_y == np.bincount(train_y).argmax()).mean()),
            float((pred[occ] == val_y[occ]).mean()) if occ.any() else float("nan"))


def cell_labels(recs, attr, values):
    """Per cell: 0 = empty, else 1 + index of the attribute value of the object there."""
    lab = np.zeros((len(recs), 9), dtype=int)
    for i, r in enumerate(recs):
        for o in r["scene"]["objects"]:
            lab[i, o["cell"]] = 1 + values.index(o[attr])
    return lab


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="data_samples/toy_fromage")
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Fromage.from_pretrained(a.model).eval()
    res = {}
    val_cache = cached_split(model, "data_samples/shapesworld/val.tsv", "cache:features", "val")
    train_cache = cached_split(model, "data_samples/shapesworld/train.tsv", "cache:features", "train")
    n = min(a.n, len(val_cache))
    preds = caption(model, val_cache.features(range(n)))
    res["model"] = score_captions(preds, val_cache.keys[:n], val_cache.captions[:n])
    val_recs, train_recs = scenes("val")[:n], scenes("train")
    oracle = oracle_captions(model, val_recs)
    res["oracle_summary_context"] = score_captions(oracle, [r["key"] for r in val_recs],
                                                   [r["caption"] for r in val_recs])
    # linear probes on the pooled vision feature
    tx, vx = train_cache.all_features().numpy(), val_cache.features(range(n)).numpy()
    probes = {}
    for attr, values in (("colour", list(COLOURS)), ("shape", list(SHAPES)), ("size", list(SIZES))):
        ty, vy = cell_labels(train_recs, attr, values), cell_labels(val_recs, attr, values)
        r = np.array([probe(tx, ty[:, c], vx, vy[:, c]) for c in range(9)])  # (9 cells, 3)
        probes[attr] = {"accuracy": float(r[:, 0].mean()), "majority_baseline": float(r[:, 1].mean()),
                        "accuracy_on_occupied_cells": float(np.nanmean(r[:, 2])), "chance_on_occupied": 1 / len(values)}
    res["linear_probe_per_cell_accuracy"] = probes
    res["examples"] = [{"ref": r["caption"], "model": p, "oracle": o}
                       for r, p, o in list(zip(val_recs, preds, oracle))[:4]]
    print(json.dumps({k: v for k, v in res.items() if k != "examples"}, indent=1))
    for e in res["examples"]:
        print(f"\nref:    {e['ref']}\nmodel:  {e['model']}\noracle: {e['oracle']}")
    write_result("diagnose_toy_captions", res)


if __name__ == "__main__":
    main()
