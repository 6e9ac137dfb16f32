"""Question answering about ShapesWorld validation images with the shipped toy model, per question type.

    python benchmarks/toy_dialogue.py [--model data_samples/toy_fromage] [--n 150] [--name toy_dialogue]

Two prompt strategies: ``image``: [image, "Q: …\\nA:"] (the original's dialogue format), and
``caption-first``: [image, <the model's own greedy caption>, "\\nQ: …\\nA:"], which matches the
toy LM's pretraining documents (a caption, then Q/A lines). Answers are cut at [RET] and compared
with the gold answer exactly. Results are grouped by question type and number of objects.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fromage_mini import Fromage, caption, generate  # noqa: E402
from fromage_mini.paths import DATA_SAMPLES  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="data_samples/toy_fromage")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--name", default="toy_dialogue", help="results file name (benchmarks/results/NAME.json)")
    a = ap.parse_args(argv)
    m = Fromage.from_pretrained(a.model).eval()
    root = DATA_SAMPLES / "shapesworld"
    dialogues = json.loads((root / "dialogues_val.json").read_text())[: a.n]
    scenes = {r["key"]: r for r in json.loads((root / "scenes_val.json").read_text())}
    stats = {s: collections.defaultdict(lambda: [0, 0]) for s in ("image", "caption-first")}
    for rec in dialogues:
        n_obj = len(scenes[rec["key"]]["scene"]["objects"])
        img = Image.open(root / rec["image"])
        cap = caption(m, [img])[0]
        for t in rec["turns"]:
            q = "Q: " + t["question"] + "\nA:"
            for strategy, prompt in (("image", [img, q]), ("caption-first", [img, cap + "\n" + q])):
                ans = generate(m, prompt, max_new_tokens=8).text.split("[RET]")[0].strip(" .")
                s = stats[strategy][f"{t['type']}/{n_obj}"]
                s[0] += ans == t["answer"]
                s[1] += 1
    res = {}
    for strategy, st in stats.items():
        res[strategy] = {k: round(v[0] / v[1], 3) for k, v in sorted(st.items())}
        tot = [sum(v[0] for v in st.values()), sum(v[1] for v in st.values())]
        res[strategy]["all"] = round(tot[0] / tot[1], 3)
        print(strategy, json.dumps(res[strategy]))
    write_result(a.name, {"model": a.model, "n": a.n, **res})


if __name__ == "__main__":
    main()
