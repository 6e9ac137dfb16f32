"""Generation speed: decoding with the KV cache versus re-running the whole sequence per token.

    python benchmarks/bench_generate.py --lm opt-125m --tokens 32,128

The original FROMAGe re-ran the LM on the full sequence for every new token. Both loops here decode
greedily from the same interleaved prompt (one image prefix + a short text) on the same random-weight
model and are checked to produce the same tokens; EOS is ignored so both emit exactly N tokens.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_backbones, spread, write_result  # noqa: E402

from fromage_mini import Fromage, FromageConfig  # noqa: E402
from fromage_mini.model.backbones import kv_cache  # noqa: E402


@torch.no_grad()
def decode_cached(model, x, n):
    mask = torch.ones(1, x.shape[1], dtype=torch.long)
    logits, out = model.lm_forward(x, mask, use_cache=True)
    past, ids = kv_cache(out), []
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1)
        ids.append(int(nxt))
        mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
        logits, out = model.lm_forward(model.embed_tokens(nxt[:, None]), mask, cache=past, use_cache=True)
        past = kv_cache(out)
    return ids


@torch.no_grad()
def decode_recompute(model, x, n):
    ids = []
    for _ in range(n):
        logits, _ = model.lm_forward(x, torch.ones(1, x.shape[1], dtype=torch.long))
        nxt = logits[:, -1].argmax(-1)
        ids.append(int(nxt))
        x = torch.cat([x, model.embed_tokens(nxt[:, None]).to(x.dtype)], 1)
    return ids


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lm", default="opt-125m")
    ap.add_argument("--vision", default="vit-b/32")
    ap.add_argument("--tokens", default="32,128")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    lm, vis = build_backbones(a.lm, a.vision, "cpu")
    model = Fromage(FromageConfig(lm="random", vision="random", n_visual_tokens=1), lm=lm, vision=vis).eval()
    prompt_ids = torch.randint(3, 1000, (1, 12))
    x = torch.cat([model.visual_embeds(torch.randn(1, model.vis_dim)), model.embed_tokens(prompt_ids)], 1).detach()
    res = {"lm": a.lm, "prompt_tokens": x.shape[1], "rows": []}
    for n in [int(t) for t in a.tokens.split(",")]:
        tc, tr = [], []
        for _ in range(a.reps):  # interleaved repetitions
            t = time.perf_counter()
            ids_c = decode_cached(model, x, n)
            tc.append(time.perf_counter() - t)
            t = time.perf_counter()
            ids_r = decode_recompute(model, x, n)
            tr.append(time.perf_counter() - t)
        same = ids_c == ids_r
        row = {"new_tokens": n, "cached_tok_s": spread([n / s for s in tc]),
               "recompute_tok_s": spread([n / s for s in tr]),
               "speedup": spread([r / c for r, c in zip(tr, tc)]), "same_tokens": same}
        res["rows"].append(row)
        print(f"{n:4d} new tokens: KV cache {row['cached_tok_s']['median']:7.1f} tok/s, full recompute "
              f"{row['recompute_tok_s']['median']:7.1f} tok/s, speed-up {row['speedup']['median']:.1f}x "
              f"(min {row['speedup']['min']:.1f}), same tokens: {same}", flush=True)
    path = write_result(f"generate_{a.lm}_cpu", res)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
