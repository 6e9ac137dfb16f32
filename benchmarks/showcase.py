"""What a trained ShapesWorld model can do, measured: captions that bind, retrieval, zero-shot QA,
free answers, a retrieval turn and contextual retrieval. Writes benchmarks/results/NAME.json.

    python benchmarks/showcase.py --model data_samples/smollm2_fromage_grid --name showcase_smollm2_grid
    python benchmarks/showcase.py --model data_samples/toy_fromage --name showcase_toy --qa 150

Captions and retrieval use the 500 validation pairs (``--pairs``); QA the first ``--qa`` validation
dialogues (4 questions each); contextual retrieval the 100 validation stories. Each part prints as it
finishes; ``--skip`` leaves parts out (e.g. ``--skip chat,stories``), and ``--update`` keeps the parts
an earlier run stored in NAME.json (so a slow model can be measured part by part).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

from fromage_mini import Fromage  # noqa: E402
from fromage_mini.paths import DATA_SAMPLES  # noqa: E402

ROOT = DATA_SAMPLES / "shapesworld"
PARTS = ("captions", "retrieval", "qa", "chat", "ret_turn", "stories")


def captions_part(m, recs, out):
    from fromage_mini.infer.generate import caption, to_features
    from fromage_mini.toyworld.metrics import score_captions

    feats = to_features(m, [Image.open(ROOT / r["image"]) for r in recs])
    t = time.perf_counter()
    preds = caption(m, feats)
    dt = time.perf_counter() - t
    out["captions"] = score_captions(preds, [r["key"] for r in recs], [r["caption"] for r in recs])
    out["captions"]["images_per_s"] = round(len(recs) / dt, 2)
    out["captions"]["examples"] = [{"ref": r["caption"], "pred": p} for r, p in zip(recs[:8], preds[:8])]


def retrieval_part(m, recs, out):
    from fromage_mini.eval import recall_at_k_dataset

    out["retrieval"] = recall_at_k_dataset(m, [(r["caption"], ROOT / r["image"]) for r in recs], ks=(1, 5, 10))


def qa_part(m, dialogues, out, chat: bool, ret_scale: float = 1.0):
    from fromage_mini.qa import chat_answers, rank_options

    load = lambda rec: Image.open(ROOT / rec["image"])  # noqa: E731
    key = "chat" if chat else "qa"
    out[key] = {"dialogues": len(dialogues)}
    for ctx in ("image", "caption", "none"):
        if chat:
            acc, ex = chat_answers(m, dialogues, load, ctx, examples=6, ret_scale_factor=ret_scale)
            out[key][ctx] = acc | {"examples": ex}
        else:
            out[key][ctx] = rank_options(m, dialogues, load, ctx)
        print(key, ctx, json.dumps({k: v for k, v in out[key][ctx].items() if k != "examples"}), flush=True)


def ret_turn_part(m, recs, out):
    """Ask for a picture in a chat; index = the validation images; was the image found right?"""
    from fromage_mini.chat import Dialogue
    from fromage_mini.eval.images import compute_features
    from fromage_mini.infer.generate import TensorIndex
    from fromage_mini.infer.scoring import image_vectors

    feats = compute_features(m, {r["key"]: ROOT / r["image"] for r in recs})
    index = TensorIndex(image_vectors(m, torch.stack(list(feats.values()))), [{"key": k} for k in feats])
    rows = []
    for r in recs[:20]:
        chat = Dialogue(m, index, max_new_tokens=4)
        res = chat.ask(f"show me {r['caption'].rstrip('.')} [RET]")
        got = [md["key"] for p in res.retrievals for md in p.metadata][:1]
        rows.append({"asked": r["caption"], "top1": got[0] if got else None, "right": got[:1] == [r["key"]]})
    out["ret_turn"] = {"top1_right": sum(x["right"] for x in rows) / len(rows), "n": len(rows), "examples": rows[:3]}


def stories_part(m, out):
    from fromage_mini.eval import contextual_retrieval, read_story_list

    stories, images = read_story_list(ROOT / "stories_val.json", image_root=ROOT)
    out["stories"] = {name: contextual_retrieval(m, stories, images, n_captions=c, n_images=i, ks=(1, 5, 10))
                      for name, c, i in (("1 caption", 1, 0), ("5 captions", 5, 0), ("5 captions, 4 images", 5, 4))}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True, help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--qa", type=int, default=150, help="validation dialogues (4 questions each)")
    ap.add_argument("--chat-ret-scale", type=float, default=1.0,
                    help="ret_scale_factor of the chat answers (1: as trained; <1 makes [RET] rarer)")
    ap.add_argument("--update", action="store_true", help="keep the parts already stored in NAME.json")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {','.join(PARTS)}")
    a = ap.parse_args(argv)
    skip = {s for s in a.skip.split(",") if s}
    torch.manual_seed(0)
    m = Fromage.from_pretrained(a.model).eval()
    recs = json.loads((ROOT / "scenes_val.json").read_text())[: a.pairs]
    dialogues = json.loads((ROOT / "dialogues_val.json").read_text())[: a.qa]
    old = RESULTS / f"{a.name}.json"
    out = json.loads(old.read_text()) if a.update and old.exists() else {}
    out.pop("machine", None)
    out.pop("qa_dialogues", None)  # each qa/chat part records its own dialogue count (--update mixes runs)
    out.update({"model": a.model, "pairs": len(recs), "chat_ret_scale": a.chat_ret_scale})
    t0 = time.perf_counter()
    with torch.inference_mode():
        for part in PARTS:
            if part in skip:
                continue
            t = time.perf_counter()
            if part == "captions":
                captions_part(m, recs, out)
            elif part == "retrieval":
                retrieval_part(m, recs, out)
            elif part in ("qa", "chat"):
                qa_part(m, dialogues, out, chat=part == "chat", ret_scale=a.chat_ret_scale)
            elif part == "ret_turn":
                ret_turn_part(m, recs, out)
            else:
                stories_part(m, out)
            if part not in ("qa", "chat"):
                print(part, json.dumps({k: v for k, v in out[part].items() if k != "examples"}), flush=True)
            out.setdefault("seconds", {})[part] = round(time.perf_counter() - t, 1)
    out["total_s"] = round(time.perf_counter() - t0, 1) + (out.get("total_s", 0) if a.update else 0)
    out["peak_rss_gib"] = max(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
                              out.get("peak_rss_gib", 0) if a.update else 0)
    write_result(a.name, out)


if __name__ == "__main__":
    main()
