"""Answer ranking speed: scoring N candidate answers after one long context, with the context's KV
cache shared by all candidates versus re-running ``[context, candidate]`` for each.

    python benchmarks/bench_scoring.py --lm opt-125m --context 160 --options 100

VisDial ranks 100 answer options per round after an image and the dialogue so far; the original (and
our first version) ran the whole context once per option. Random-weight model built from a config;
both paths are checked to give the same scores.
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
from fromage_mini.infer.generate import PromptInputs  # noqa: E402
from fromage_mini.infer.scoring import candidate_scores  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lm", default="opt-125m")
    ap.add_argument("--vision", default="vit-b/32")
    ap.add_argument("--context", type=int, default=160, help="context tokens (image prefix + dialogue)")
    ap.add_argument("--options", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=50)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    lm, vis = build_backbones(a.lm, a.vision, torch.device("cpu"))
    m = Fromage(FromageConfig(lm="random", vision="random"), lm=lm, vision=vis).eval()
    g = torch.Generator().manual_seed(0)
    V = lm.get_input_embeddings().num_embeddings
    ctx_ids = torch.randint(3, V - 2, (a.context,), generator=g)
    with torch.no_grad():
        ctx = PromptInputs(m.embed_tokens(ctx_ids[None])[0], ctx_ids)
    lengths = torch.randint(1, 9, (a.options,), generator=g).tolist()  # short answers, 1-8 tokens
    cands = [torch.randint(3, V - 2, (n,), generator=g).tolist() for n in lengths]
    times = {"shared": [], "rerun": []}
    scores = {}
    for _ in range(a.reps):
        for mode in times:
            t = time.perf_counter()
            scores[mode] = candidate_scores(m, ctx, cands, batch_size=a.batch, share_context=mode == "shared")
            times[mode].append(time.perf_counter() - t)
            print(f"{mode:7s} {times[mode][-1]:.2f} s for {a.options} options", flush=True)
    same = bool(torch.allclose(scores["shared"], scores["rerun"], rtol=1e-3, atol=1e-3))
    res = {"lm": a.lm, "context_tokens": a.context, "options": a.options,
           "answer_tokens_mean": sum(lengths) / len(lengths),
           "seconds_shared": spread(times["shared"]), "seconds_rerun": spread(times["rerun"]),
           "speedup": spread([r / s for r, s in zip(times["rerun"], times["shared"])]), "same_scores": same}
    print(f"speed-up {res['speedup']['median']:.1f}x (min {res['speedup']['min']:.1f}); same scores: {same}")
    print(f"wrote {write_result(f'scoring_{a.lm}_cpu', res)}")


if __name__ == "__main__":
    main()
