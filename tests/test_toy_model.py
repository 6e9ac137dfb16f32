"""The shipped ShapesWorld-trained model: [RET] retrieval works, and the main inference paths run on it."""
import json

import pytest
import torch
from PIL import Image

from fromage_mini import Fromage, generate
from fromage_mini.infer.generate import TensorIndex
from fromage_mini.paths import DATA_SAMPLES

ROOT = DATA_SAMPLES / "shapesworld"


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return Fromage.from_pretrained("data_samples/toy_fromage").eval()


@pytest.fixture(scope="module")
def val_index(toy):
    rows = [ln.split("\t") for ln in (ROOT / "val.tsv").read_text().splitlines()[1:101]]
    images = [Image.open(ROOT / path) for _, path in rows]
    with torch.no_grad():
        v = toy.encode_images(toy.image_features(toy.preprocess(images)))
    return TensorIndex(v, [{"caption": c, "path": p} for c, p in rows]), rows, images


def test_caption_then_ret_retrieves_the_matching_image(toy, val_index):
    """A caption followed by [RET] brings back its own image in the top 5 among 100 (most of the time)."""
    index, rows, _ = val_index
    hits = 0
    for caption, path in rows[:40]:
        res = generate(toy, [caption + "[RET]"], index=index, images_per_ret=5, max_new_tokens=1)
        got = [m["path"] for m in res.retrievals[0].metadata]
        hits += path in got
    assert hits >= 36, f"only {hits}/40 captions retrieved their image in the top 5"


def test_model_emits_ret_after_a_caption(toy):
    """Retrieval-mode training taught the LM to emit [RET] right after a description."""
    rows = [ln.split("\t") for ln in (ROOT / "val.tsv").read_text().splitlines()[1:21]]
    b = toy.tokenize([c for c, _ in rows], add_ret=False)
    with torch.no_grad():
        logits, _ = toy.lm_forward(toy.embed_tokens(b["input_ids"]), b["attention_mask"])
    last = b["attention_mask"].sum(1) - 1
    top = logits[torch.arange(len(rows)), last].argmax(-1)
    assert (top == toy.ret_id).float().mean() >= 0.9


def test_captions_name_the_right_number_of_objects(toy, val_index):
    from fromage_mini import caption
    from fromage_mini.toyworld.metrics import score_captions

    _, rows, images = val_index
    preds = caption(toy, images[:60])
    s = score_captions(preds, [p for _, p in rows[:60]], [c for c, _ in rows[:60]])
    assert s["count_acc"] >= 0.85


def test_dialogue_runs_on_a_validation_image(toy):
    from fromage_mini.chat import Dialogue

    rec = json.loads((ROOT / "dialogues_val.json").read_text())[0]
    chat = Dialogue(toy, context=[Image.open(ROOT / rec["image"])])
    answers = [chat.ask(t["question"]).text for t in rec["turns"][:3]]
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
