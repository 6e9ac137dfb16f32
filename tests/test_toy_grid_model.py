"""The shipped grid-prefix model (``data_samples/toy_fromage_grid``): it loads, retrieves and reads the layout.

The dialogue test states the goal the grid prefix was built for; the shipped model does not reach it
(docs/toy-results.md, "The grid prefix": the frozen toy LM cannot read a fixed-length grid of cell tokens), so it
is marked as an expected failure, strictly: the day a model passes it, the marker must go.
"""
import json

import pytest
import torch
from PIL import Image

from fromage_mini import Fromage
from fromage_mini.paths import DATA_SAMPLES

ROOT = DATA_SAMPLES / "shapesworld"


@pytest.fixture(scope="module")
def grid():
    torch.manual_seed(0)
    return Fromage.from_pretrained("data_samples/toy_fromage_grid").eval()


def val_rows(n):
    return [ln.split("\t") for ln in (ROOT / "val.tsv").read_text().splitlines()[1: n + 1]]


def test_shipped_grid_model_is_a_grid_model(grid):
    assert grid.config.visual_prefix == "grid" and grid.config.grid_size == 3
    feats = grid.image_features(grid.preprocess([Image.open(ROOT / val_rows(1)[0][1])]))
    assert feats.shape[1:] == (1 + 9, grid.vis_dim)
    assert grid.visual_embeds(feats).shape[1] == 9  # one LM token per cell


def test_grid_model_retrieves_with_its_pooled_head(grid):
    """t2i among 100 validation images: the caption's own image in the top 5 for most captions."""
    rows = val_rows(100)
    with torch.no_grad():
        img = grid.encode_images(grid.image_features(grid.preprocess([Image.open(ROOT / p) for _, p in rows])))
        b = grid.tokenize([c for c, _ in rows])
        txt = grid.encode_text(b["input_ids"], b["attention_mask"])
    top5 = (txt @ img.T).topk(5, dim=1).indices
    hits = (top5 == torch.arange(100)[:, None]).any(1).float().mean()
    assert hits >= 0.9, f"t2i R@5 {hits:.2f} among 100"


def test_grid_model_reads_the_cells_where_they_are(grid):
    """The caption loss is lower with the image's cells in place than with the same cells shuffled."""
    rows = val_rows(64)
    with torch.no_grad():
        feats = grid.image_features(grid.preprocess([Image.open(ROOT / p) for _, p in rows]))
        b = grid.tokenize([c for c, _ in rows])
        shuffled = feats.clone()
        shuffled[:, 1:] = feats[:, 1 + torch.randperm(9, generator=torch.Generator().manual_seed(0))]
        loss = [float(grid(b["input_ids"], b["attention_mask"], features=f).cap_loss) for f in (feats, shuffled)]
    assert loss[0] < loss[1] - 0.05, f"caption CE in place {loss[0]:.3f}, shuffled {loss[1]:.3f}"


@pytest.mark.xfail(strict=True,
                   reason="the shipped grid model does not bind attributes (docs/toy-results.md: The grid prefix)")
def test_three_turn_dialogue_answers_colour_shape_and_count(grid):
    """A dialogue about a validation image (image in the first turn) gets a colour, a shape and a
    count question right, for at least 8 of the first 10 validation scenes that have all three."""
    from fromage_mini.chat import Dialogue

    right = tried = 0
    for rec in json.loads((ROOT / "dialogues_val.json").read_text()):
        turns = {t["type"]: t for t in rec["turns"]}
        if not {"colour", "shape", "count"} <= set(turns):
            continue
        chat = Dialogue(grid, max_new_tokens=6)
        answers = [chat.ask(turns["colour"]["question"], image=Image.open(ROOT / rec["image"])).text,
                   chat.ask(turns["shape"]["question"]).text, chat.ask(turns["count"]["question"]).text]
        gold = [turns[k]["answer"] for k in ("colour", "shape", "count")]
        right += all(a.split("[RET]")[0].strip(" .") == g for a, g in zip(answers, gold))
        tried += 1
        if tried == 10:
            break
    assert tried == 10 and right >= 8, f"{right}/{tried} dialogues fully right"
