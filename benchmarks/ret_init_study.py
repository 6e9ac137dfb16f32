"""What the toy LM was taught: [RET] initialised from " summary" vs randomly vs another word, and the
original's per-step [RET] renormalisation, end to end on the toy presets (3 seeds each).

    python benchmarks/ret_init_study.py [--presets toy toy-grid] [--seeds 0 1 2] [--steps 300]

Every run is the preset's training at a fixed number of steps (no time cap, so a busy machine
changes the wall time, not the result), validated on the 500 ShapesWorld validation pairs.
Prints a table of medians (min-max) and writes benchmarks/results/ret_init_study.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import spread, write_result  # noqa: E402

from fromage_mini.presets import resolve  # noqa: E402
from fromage_mini.train.loop import train  # noqa: E402

VARIANTS = {  # name -> settings on top of the preset
    "init ' summary' (preset)": {},
    "init random (the paper)": {"ret_init_text": None},
    "init ' the'": {"ret_init_text": " the"},
    "init ' summary' + renorm": {"ret_renorm": True},
}
KEYS = ("t2i_R@1", "t2i_R@5", "object_acc", "count_acc", "exact")


def run(preset: str, variant: dict, seed: int, steps: int) -> dict:
    mcfg, tcfg = resolve(preset, {**variant, "seed": seed, "max_steps": steps, "max_seconds": None})
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        m = train(mcfg, tcfg, out, log=lambda *a: None)
    c = m.get("captions", {})
    return {"t2i_R@1": m["t2i"]["R@1"], "t2i_R@5": m["t2i"]["R@5"], "object_acc": c.get("object_acc"),
            "count_acc": c.get("count_acc"), "exact": c.get("exact"), "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["toy", "toy-grid"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--name", default="ret_init_study", help="result file name (benchmarks/results/NAME.json)")
    a = ap.parse_args()

    rows = []
    for preset in a.presets:
        for name in a.variants:
            runs = [run(preset, VARIANTS[name], s, a.steps) for s in a.seeds]
            row = {"preset": preset, "variant": name, "runs": runs}
            for k in KEYS:
                vals = [r[k] for r in runs if r[k] is not None]
                row[k] = spread(vals) if vals else None
            rows.append(row)
            print(f"{preset:9s} {name:28s} " + "  ".join(
                f"{k} {row[k]['median']:.3f} ({row[k]['min']:.3f}-{row[k]['max']:.3f})" for k in KEYS if row[k]),
                flush=True)
    print("wrote", write_result(a.name, {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
