"""How often does the chat answer "show me ..." with an image? 50 requests on the shipped toy model.

    python benchmarks/chat_show_me.py [--model data_samples/toy_fromage] [--n 50]

Each request names one object of a validation scene ("show me a small red circle"); the index holds
the 500 validation images. Two ways of asking, each in a fresh Dialogue with default settings:
the request as typed, and the request ending in [RET] (which Dialogue answers with a retrieval
first). Reported: the share of answers that return an image, and the share whose first image
holds the object asked for (same size, colour and shape, anywhere). Writes
benchmarks/results/chat_show_me.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fromage_mini.chat import Dialogue  # noqa: E402
from fromage_mini.infer.generate import TensorIndex  # noqa: E402
from fromage_mini.infer.scoring import image_vectors  # noqa: E402
from fromage_mini.model import load_model  # noqa: E402
from fromage_mini.paths import resolve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="data_samples/toy_fromage")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--name", default="chat_show_me")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(resolve(a.model), device="cpu")
    recs = json.loads(Path(resolve("data_samples/shapesworld/scenes_val.json")).read_text())
    from PIL import Image

    images = [Image.open(Path(resolve("data_samples/shapesworld")) / r["image"]) for r in recs]
    index = TensorIndex(image_vectors(model, images), [{"scene": r["scene"]} for r in recs])
    asks = []
    for r in recs[: a.n]:
        o = r["scene"]["objects"][0]
        asks.append((f"show me a {o['size']} {o['colour']} {o['shape']}", (o["size"], o["colour"], o["shape"])))

    def holds(meta, want):
        return any((o["size"], o["colour"], o["shape"]) == want for o in meta["scene"]["objects"])

    out = {}
    for way, suffix in (("as typed", ""), ("ending in [RET]", " [RET]")):
        got = hit = 0
        for text, want in asks:
            result = Dialogue(model, index).ask(text + suffix)
            parts = [p for p in result.retrievals if p.ids]
            got += bool(parts)
            hit += bool(parts) and holds(parts[0].metadata[0], want)
        out[way] = {"requests": len(asks), "answered_with_an_image": got / len(asks),
                    "first_image_holds_the_object": hit / len(asks)}
        print(f"{way:16s} image returned {got}/{len(asks)}, first image holds the object {hit}/{len(asks)}")
    print("wrote", write_result(a.name, {"model": a.model, "results": out}))


if __name__ == "__main__":
    main()
