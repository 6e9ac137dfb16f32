"""The shipped grid model on an LM taught the grid layout (``data_samples/toy_fromage_grid_lm``).

The toy LM behind it (``data_samples/toy_lm_grid``) was pretrained on text only, part of it scenes
written in the named-cell layout the grid prefix speaks (" topleft: smallbluecircle top: empty ...")
followed by a caption or by questions and answers. FROMAGe's adapters were then trained on captions
alone. These tests check what that buys: captions that bind size, colour, shape and place, and
questions answered from the image as well as from the caption given as text, with no question in
the adapters' training.
"""
import json

import pytest
import torch
from PIL import Image

from fromage_mini import Fromage, caption
from fromage_mini.paths import DATA_SAMPLES
from fromage_mini.toyworld.metrics import score_captions

ROOT = DATA_SAMPLES / "shapesworld"
MODEL = DATA_SAMPLES / "toy_fromage_grid_lm"

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Fromage.from_pretrained(MODEL).eval()


def val_rows(n):
    return [ln.split("\t") for ln in (ROOT / "val.tsv").read_text().splitlines()[1: n + 1]]


def test_the_lm_was_taught_the_prefix_layout(model):
    """The LM's own pretraining text puts each cell's content where the prefix puts its cell token."""
    from fromage_mini.model.prefix import prefix_layout

    layout = prefix_layout(model.tokenizer, model.config.cell_names, 9)
    assert model.visual_prefix.n_prefix == len(layout) and model.config.cell_pool == "concat"
    assert model.tokenizer.convert_ids_to_tokens([int(t) for t in layout[:2]]) == ["Ġtopleft", ":"]
    assert model.tokenizer.convert_tokens_to_ids("Ġempty") != model.tokenizer.unk_token_id


def test_captions_bind_every_attribute_to_its_place(model):
    """Greedy captions of 100 validation images: most objects right in size, colour, shape and place."""
    rows = val_rows(100)
    preds = caption(model, [Image.open(ROOT / p) for _, p in rows])
    s = score_captions(preds, [p for _, p in rows], [c for c, _ in rows])
    assert s["count_acc"] >= 0.95 and s["object_acc"] >= 0.8, s


def test_questions_are_answered_from_the_image_as_from_the_text(model):
    """Option ranking on 20 validation dialogues: the image does about as well as the true caption
    given as text, and far better than no context (the LM's prior)."""
    from fromage_mini.qa import rank_options

    dialogues = json.loads((ROOT / "dialogues_val.json").read_text())[:20]
    acc = {c: rank_options(model, dialogues, lambda r: Image.open(ROOT / r["image"]), context=c)["all"]
           for c in ("image", "caption", "none")}
    assert acc["image"] >= 0.9 * acc["caption"] and acc["image"] >= acc["none"] + 0.2, acc
