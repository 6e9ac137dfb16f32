"""What frozen SmolLM2-135M-Instruct does with *perfect text*, before any adapter is trained.

    python benchmarks/smollm2_text_limits.py [--dialogues 15] [--scenes 30]

Two upper bounds on what a FROMAGe model built on this LM can show, measured on text alone:

1. **Questions about a scene given its true caption as text**, by option ranking (the summed
   log-probability of each answer option; as ``fromage_mini.qa.rank_options`` does with an image), in
   five prompt formats: the course's ``caption\\nQ: …\\nA:``, the same with no caption (the prior), the
   Instruct model's chat template around caption and question, the template with no caption, and
   the template with an "Answer in one word." instruction.
2. **The scene in the grid prefix's named-cell layout, as words** (``" top left: small red circle
   top: empty …"``, the perfect tokens a grid prefix could at best deliver), followed by
   ``Caption:``; zero-shot and 3-shot (three training scenes written the same way, with their
   captions, before the query). Greedy captions are scored as in training (objects right: size,
   colour, shape and place).

Needs the converted backbone (``fromage-mini backbones smollm2``). Writes
``benchmarks/results/smollm2_text_limits.json``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from fromage_mini.paths import DATA_SAMPLES, resolve  # noqa: E402
from fromage_mini.presets import SMOLLM2  # noqa: E402
from fromage_mini.toyworld.captions import WHERE, canonical_caption  # noqa: E402
from fromage_mini.toyworld.metrics import score_captions  # noqa: E402

ROOT = DATA_SAMPLES / "shapesworld"
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
FORMATS = {
    "caption\\nQ: …\\nA:": lambda cap, q: f"{cap}\nQ: {q}\nA:",
    "Q: …\\nA: (no caption)": lambda cap, q: f"Q: {q}\nA:",
    "chat template, caption + question": lambda cap, q: CHAT.format(f"{cap}\n{q}"),
    "chat template, question only": lambda cap, q: CHAT.format(q),
    "chat template, 'Answer in one word.'": lambda cap, q: CHAT.format(f"Image: {cap}\nAnswer in one word. {q}"),
}


@torch.no_grad()
def option_scores(lm, tok, context: str, options: list[str], space: bool) -> list[float]:
    """Summed log-probability of each option after ``context`` (one padded batch)."""
    c = tok(context).input_ids
    opts = [tok((" " if space else "") + o).input_ids for o in options]
    L = len(c) + max(map(len, opts))
    ids = torch.tensor([c + t + [0] * (L - len(c) - len(t)) for t in opts])
    lp = lm(ids).logits[:, len(c) - 1:-1].log_softmax(-1)
    return [sum(lp[j, i, t[i]].item() for i in range(len(t))) for j, t in enumerate(opts)]


def qa_bounds(lm, tok, dialogues: list[dict]) -> dict:
    out = {}
    for name, fmt in FORMATS.items():
        rows = collections.defaultdict(list)
        for rec in dialogues:
            for t in rec["turns"]:
                context = fmt(rec["caption"], t["question"])
                s = option_scores(lm, tok, context, t["options"], space=not name.startswith("chat"))
                rows[t["type"]].append(t["options"][max(range(len(s)), key=s.__getitem__)] == t["answer"])
        every = [x for v in rows.values() for x in v]
        out[name] = {"all": round(sum(every) / len(every), 3), "n": len(every),
                     **{k: round(sum(v) / len(v), 3) for k, v in sorted(rows.items())}}
        print(f"  QA {name:40s} {out[name]['all']:.3f}", flush=True)
    return out


def layout_words(scene: dict) -> str:
    cells = ["empty"] * 9
    for o in scene["objects"]:
        cells[o["cell"]] = f"{o['size']} {o['colour']} {o['shape']}"
    return "".join(f" {name}: {c}" for name, c in zip(WHERE, cells))


@torch.no_grad()
def layout_captions(lm, tok, train: list[dict], val: list[dict], shots: int) -> dict:
    demo = "".join(f"{layout_words(d)}\nCaption: {canonical_caption(d)}\n\n" for d in train[:shots])
    preds = []
    for s in val:
        ids = tok(demo + f"{layout_words(s)}\nCaption:", return_tensors="pt").input_ids
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=45, do_sample=False)
        preds.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip())
    refs = [canonical_caption(s) for s in val]
    r = {k: round(v, 3) for k, v in score_captions(preds, refs, refs).items()}
    print(f"  layout as words, {shots}-shot: {r}", flush=True)
    return {**r, "examples": [{"caption": p, "reference": t} for p, t in zip(preds[:3], refs[:3])]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=15, help="validation dialogues (4 questions each)")
    ap.add_argument("--scenes", type=int, default=30, help="validation scenes to caption from the layout")
    a = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(SMOLLM2)
    tok, lm = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    t0 = time.time()
    dialogues = json.loads((ROOT / "dialogues_val.json").read_text())[: a.dialogues]
    train = [r["scene"] for r in json.loads((ROOT / "scenes_train.json").read_text())]
    val = [r["scene"] for r in json.loads((ROOT / "scenes_val.json").read_text())][: a.scenes]
    result = {"qa_option_ranking": qa_bounds(lm, tok, dialogues),
              "layout_as_words": {f"{k}-shot": layout_captions(lm, tok, train, val, k) for k in (0, 3)},
              "dialogues": a.dialogues, "scenes": a.scenes, "seconds": round(time.time() - t0, 1)}
    write_result("smollm2_text_limits", result)


if __name__ == "__main__":
    main()
