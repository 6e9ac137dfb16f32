"""Where the toy grid model's binding stops, measured: the vision side, the projector, the frozen LM.

    python benchmarks/grid_limits.py [--model data_samples/toy_fromage_grid] [--n 200] [--filler-steps 150]

1. Probes (``fromage_mini.eval.binding.linear_probe``): a logistic probe per attribute reads each
   occupied cell's colour, shape and size from (a) the cached grid cell tokens (what the frozen tower
   gives the projector) and (b) the projected cell tokens (what the LM receives: projector output +
   the learned cell vector). Trained on the 2,000 training images, scored on the 500 validation images.
2. The frozen LM given perfect tokens (``binding.PerfectTokens``): the scene's pretraining summary in
   the contiguous layout the LM was pretrained on, and in the grid's fixed layout (three slots per cell)
   with empty cells as zero vectors, as "," tokens, as filler vectors learned on the caption loss, or
   removed from attention. The removed-from-attention layout differs from the contiguous one only by
   the "," after the last object, measured alone too. Greedy captions are scored as in training.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fromage_mini import Fromage  # noqa: E402
from fromage_mini.data.cache import cached_split  # noqa: E402
from fromage_mini.eval.binding import SLOTS, PerfectTokens, cell_labels, linear_probe  # noqa: E402
from fromage_mini.paths import DATA_SAMPLES  # noqa: E402
from fromage_mini.toyworld.captions import canonical_caption  # noqa: E402
from fromage_mini.toyworld.metrics import score_captions  # noqa: E402


def split_scenes(split: str, cache) -> list[dict]:
    """The scenes behind a split's feature cache, in cache order (cache keys are TSV row numbers)."""
    recs = json.loads((DATA_SAMPLES / f"shapesworld/scenes_{split}.json").read_text())
    scenes = [recs[int(k)]["scene"] for k in cache.keys]
    assert [canonical_caption(s) for s in scenes] == list(cache.captions), f"{split}: rows and scenes disagree"
    return scenes


def probes(model, caches, scenes) -> dict:
    f = {s: caches[s].features(range(len(caches[s]))) for s in caches}  # (N, 1 + 9, D)
    with torch.no_grad():
        proj = {s: model.visual_embeds(f[s]).float() for s in f}  # (N, 9, d)
    y = {s: cell_labels(scenes[s]) for s in scenes}
    rows = {}
    for name, x in [("cell tokens (tower)", {s: f[s][:, 1:] for s in f}), ("projected tokens (LM input)", proj)]:
        flat = {s: x[s].reshape(-1, x[s].shape[-1]) for s in x}
        rows[name] = {a: round(linear_probe(flat["train"], y["train"][a].flatten(), flat["val"],
                                            y["val"][a].flatten()), 3) for a in y["train"]}
        print(f"  probe {name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()), flush=True)
    return rows


def perfect_tokens(model, scenes, n, filler_steps) -> dict:
    pt = PerfectTokens(model.lm, model.tokenizer)
    val = scenes["val"][:n]
    refs = [canonical_caption(s) for s in val]
    zeros = torch.zeros(SLOTS, pt.E.shape[1])
    comma = pt.E[pt.ids(",") * SLOTS]
    t0 = time.time()
    learned = pt.learn_filler(scenes["train"], filler_steps)
    print(f"  learned the filler in {time.time() - t0:.0f} s", flush=True)
    variants = {
        "contiguous summary (pretraining layout)": lambda s: pt.contiguous(s),
        "contiguous, with the fixed layout's ',' after the last object": lambda s: pt.contiguous(s, True),
        "fixed 9x3 slots, empty = zero vectors": lambda s: pt.fixed(s, lambda c: zeros),
        "fixed 9x3 slots, empty = ',' tokens": lambda s: pt.fixed(s, lambda c: comma),
        f"fixed 9x3 slots, empty = learned filler ({filler_steps} steps)": lambda s: pt.fixed(s, lambda c: learned),
        "fixed 9x3 slots, empty slots masked out": lambda s: pt.fixed(s, lambda c: zeros, mask_empty=True),
    }
    rows = {}
    for name, build in variants.items():
        preds = pt.captions([build(s) for s in val])
        sc = score_captions(preds, list(range(len(val))), refs)
        rows[name] = {"object_acc": round(sc["object_acc"], 3), "count_acc": round(sc["count_acc"], 3),
                      "exact": round(sc["exact"], 3), "example": preds[0]}
        print(f"  {name:62s} objects {sc['object_acc']:.3f}  count {sc['count_acc']:.3f}  exact {sc['exact']:.3f}",
              flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data_samples/toy_fromage_grid")
    ap.add_argument("--n", type=int, default=200, help="validation scenes for the perfect-token captions")
    ap.add_argument("--filler-steps", type=int, default=150)
    ap.add_argument("--name", default="grid_limits")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Fromage.from_pretrained(a.model).eval()
    if model.config.visual_prefix != "grid":
        raise SystemExit(f"{a.model} is not a grid-prefix model")
    caches = {s: cached_split(model, f"data_samples/shapesworld/{s}.tsv", "cache:features", s, log=lambda *x: None)
              for s in ("train", "val")}
    scenes = {s: split_scenes(s, caches[s]) for s in caches}
    print("1. probes on occupied cells (chance: colour 0.125, shape 0.167, size 0.5)")
    probe_rows = probes(model, caches, scenes)
    print(f"2. the frozen LM given perfect tokens ({a.n} validation scenes)")
    lm_rows = perfect_tokens(model, scenes, a.n, a.filler_steps)
    write_result(a.name, {"args": vars(a), "probes": probe_rows, "perfect_tokens": lm_rows})


if __name__ == "__main__":
    main()
