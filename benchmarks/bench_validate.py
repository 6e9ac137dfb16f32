"""One validation pass's text side: time and peak memory of ``train.retrieval_vectors``.

    python benchmarks/bench_validate.py --lm opt-125m --n 512 --batch 256 --tokens 24

Validation computes a [RET] text vector for every caption; a pass that also builds full-vocabulary
logits for every position (B x T x ~50k floats, thrown away) costs memory and time the vectors do
not need. Random-weight OPT-125m-sized LM (50,272 vocabulary rows) and a tiny tokenizer; captions are
random words of a fixed token length. Peak memory is the growth of the process's peak RSS during
the first pass (measured in a fresh child process, so earlier passes cannot hide it).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_backbones, spread, write_result  # noqa: E402


class _Cache:
    """The two things retrieval_vectors reads from a FeatureCache."""

    def __init__(self, captions, dim):
        self.captions = captions
        self._f = torch.randn(len(captions), dim, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.captions)

    def features(self, idx):
        return self._f[list(idx)]


def _setup(a):
    from fromage_mini import Fromage, FromageConfig
    from fromage_mini.toyworld.tiny import make_tokenizer

    torch.manual_seed(0)
    lm, vis = build_backbones(a.lm, "toy", torch.device("cpu"))
    tok = make_tokenizer(Path(tempfile.mkdtemp(prefix="bench-validate-")) / "tok")
    model = Fromage(FromageConfig(lm="random", vision="random", ret_dim=256), lm=lm, tokenizer=tok,
                    vision=vis).eval()
    words = [w for w in tok.get_vocab() if w.isalpha()][:200]
    g = torch.Generator().manual_seed(0)
    caps = []
    while len(caps) < a.n:  # random word strings cut to exactly `tokens` tokens
        ids = tok(" ".join(words[int(i)] for i in torch.randint(len(words), (a.tokens * 2,), generator=g)),
                  add_special_tokens=False).input_ids[: a.tokens]
        caps.append(tok.decode(ids))
    return model, _Cache(caps, model.vis_dim)


def _child(a) -> dict:
    from fromage_mini.train.validate import retrieval_vectors

    model, cache = _setup(a)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    retrieval_vectors(model, cache, a.batch)
    first = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        ts, _ = retrieval_vectors(model, cache, a.batch)
        times.append(time.perf_counter() - t)
    return {"peak_rss_growth_mib": (peak - base) / 1024, "first_pass_s": first, "pass_s": spread(times),
            "vectors": list(ts.shape), "tokens_per_row": len(model.tokenize(cache.captions[:1])["input_ids"][0])}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lm", default="opt-125m")
    ap.add_argument("--n", type=int, default=512, help="captions in the validation split")
    ap.add_argument("--batch", type=int, default=256, help="val_batch_size")
    ap.add_argument("--tokens", type=int, default=24, help="caption tokens (before </s> and [RET])")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--label", default="", help="suffix of the result file (e.g. before / after)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a)))
        return
    args = [sys.executable, __file__, "--child", "--lm", a.lm, "--n", str(a.n), "--batch", str(a.batch),
            "--tokens", str(a.tokens), "--reps", str(a.reps)]
    r = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    print(f"{a.lm}, {a.n} captions x {r['tokens_per_row']} tokens, batch {a.batch}: "
          f"peak RSS +{r['peak_rss_growth_mib']:.0f} MiB in the first pass; "
          f"pass {r['pass_s']['median']:.2f} s (median of {a.reps}; first {r['first_pass_s']:.2f} s)")
    name = f"validate_{a.lm}_n{a.n}_b{a.batch}_cpu" + (f"_{a.label}" if a.label else "")
    print("wrote", write_result(name, {"args": vars(a) | {"child": False}, **r}))


if __name__ == "__main__":
    main()
