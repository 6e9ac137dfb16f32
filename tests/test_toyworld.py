"""ShapesWorld: generator, text, shipped sample and shipped toy backbones."""
import csv
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fromage_mini.toyworld import (
    DATA_SAMPLES,
    SEED,
    SHAPESWORLD,
    STYLES,
    TOY_CLIP,
    TOY_LM,
    canonical_caption,
    caption_scores,
    make_dialogue,
    make_scene,
    make_story,
    parse_caption,
    render,
    styled_caption,
    variant,
)
from fromage_mini.toyworld.stories import N_SCENES

shipped = pytest.mark.skipif(not (SHAPESWORLD / "val.tsv").exists(), reason="data_samples not built")


def _records(split):
    return [json.loads(line.rstrip(",\n")) for line in open(SHAPESWORLD / f"scenes_{split}.json")
            if line.startswith("{")]


# ---------------------------------------------------------------- generator and text

def test_generator_is_deterministic():
    a, b = make_scene(0, "train", 7), make_scene(0, "train", 7)
    assert a == b
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert make_scene(0, "val", 7) != a and make_scene(1, "train", 7) != a
    assert render(a).size == (64, 64) and render(a).mode == "RGB"


def test_canonical_captions_parse_back_to_the_scene():
    for i in range(300):
        s = make_scene(0, "train", i)
        want = [{k: o[k] for k in ("size", "colour", "shape", "cell")} for o in s["objects"]]
        cap = canonical_caption(s)
        assert parse_caption(cap) == want, cap
        assert caption_scores(cap, s["objects"]) == {"count_ok": True, "object_acc": 1.0, "exact": True}


def test_caption_scores_partial_credit():
    s = {"objects": [{"size": "small", "colour": "blue", "shape": "circle", "cell": 0},
                     {"size": "large", "colour": "red", "shape": "square", "cell": 5}]}
    assert canonical_caption(s) == "a small blue circle at the top left and a large red square on the right."
    sc = caption_scores("a small blue circle at the top left and a large red star on the right.", s["objects"])
    assert sc == {"count_ok": True, "object_acc": 0.5, "exact": False}
    assert caption_scores("a small blue circle at the top left", s["objects"])["count_ok"] is False


def test_styles_mention_every_object():
    rng = np.random.default_rng(0)
    for i in range(50):
        s = make_scene(0, "train", i)
        for style in STYLES:
            text = styled_caption(s, style, rng)
            assert text.endswith(".")
            assert all(o["colour"] in text or style == "synonyms" for o in s["objects"])


def test_variant_changes_one_attribute_only():
    s = make_scene(0, "train", 3)
    v = variant(s, 0, colour="blue" if s["objects"][0]["colour"] != "blue" else "red")
    assert [o["shape"] for o in v["objects"]] == [o["shape"] for o in s["objects"]]
    assert v["objects"][1:] == s["objects"][1:]
    diff = np.abs(np.asarray(render(v), int) - np.asarray(render(s), int)).sum(-1) > 0
    o = s["objects"][0]
    ys, xs = np.nonzero(diff)
    assert diff.any() and np.all(np.abs(xs - o["x"]) < 10) and np.all(np.abs(ys - o["y"]) < 10)


def test_dialogue_answers_are_consistent():
    rng = np.random.default_rng(0)
    for i in range(100):
        s = make_scene(0, "train", i)
        for t in make_dialogue(s, rng, n_turns=10):
            assert t["answer"] in t["options"]
            if t["type"] == "count":
                assert t["answer"] == ["one", "two", "three"][len(s["objects"]) - 1]
            if t["type"] == "colour":
                shape = t["question"].split()[-1].rstrip("?")
                assert [o["colour"] for o in s["objects"] if o["shape"] == shape] == [t["answer"]]


def test_story_thread_persists():
    for i in range(20):
        st = make_story(0, "story_val", i)
        assert len(st["scenes"]) == N_SCENES
        for b in st["scenes"][1:]:
            assert b["narration"].startswith("then the ")
            assert parse_caption(b["caption"])       # captions stay canonical


# ---------------------------------------------------------------- shipped sample

@shipped
def test_tsv_and_shards_hold_the_same_pairs():
    for split, n in (("train", 2000), ("val", 500)):
        with open(SHAPESWORLD / f"{split}.tsv") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert len(rows) >= n and set(rows[0]) == {"caption", "image"}
        tsv = {r["image"].rsplit("/", 1)[-1][:-4]: r for r in rows}
        seen = {}
        for shard in sorted((SHAPESWORLD / "shards" / split).glob("*.tar")):
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    key, ext = m.name.rsplit(".", 1)
                    seen.setdefault(key, {})[ext] = tar.extractfile(m).read()
        assert set(seen) == set(tsv)
        for key in list(seen)[::97]:
            meta = json.loads(seen[key]["json"])
            assert meta["status"] == "success" and meta["key"] == key and meta["width"] == 64
            assert seen[key]["txt"].decode() == meta["caption"] == tsv[key]["caption"]
            assert seen[key]["jpg"] == (SHAPESWORLD / tsv[key]["image"]).read_bytes()


@shipped
def test_shipped_images_match_their_scene_records():
    recs = _records("val")
    assert len(recs) == 500
    for r in recs[:100]:
        assert r["scene"] == make_scene(SEED, "val", r["scene"]["index"])       # regenerable
        a = np.asarray(Image.open(SHAPESWORLD / r["image"]).convert("RGB"), int)
        for o in r["scene"]["objects"]:                                          # captions match pixels
            assert np.abs(a[int(o["y"]), int(o["x"])] - o["rgb"]).max() < 40
        assert parse_caption(r["caption"]) == [{k: o[k] for k in ("size", "colour", "shape", "cell")}
                                               for o in r["scene"]["objects"]]
    dialogues = json.loads((SHAPESWORLD / "dialogues_val.json").read_text())
    stories = json.loads((SHAPESWORLD / "stories_val.json").read_text())
    assert len(dialogues) == 500 and (SHAPESWORLD / stories[0]["scenes"][0]["image"]).exists()


# ---------------------------------------------------------------- shipped backbones

@shipped
def test_toy_lm_loads_and_carries_the_caption_forward():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fromage_mini.toyworld.captions import compound
    from fromage_mini.toyworld.pretrain_lm import bag_mass

    lm = AutoModelForCausalLM.from_pretrained(TOY_LM).eval()
    tok = AutoTokenizer.from_pretrained(TOY_LM)
    assert (tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3])
    assert tok.bos_token_id == tok.eos_token_id == 2 and tok.pad_token_id == 1
    assert tok("a small").input_ids[0] == 2                                     # BOS prepended, OPT-style
    scenes = [r["scene"] for r in _records("val")[:32]]
    assert bag_mass(lm, tok, scenes) > 0.25                                     # random LM: ~0.02
    # the most likely word after "<caption> summary" is one of the caption's own compounds, mostly
    enc = tok([canonical_caption(s) + " summary" for s in scenes], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = lm(**enc).logits[torch.arange(len(scenes)), enc.attention_mask.sum(1) - 1]
    top = tok.convert_ids_to_tokens(logits.argmax(-1).tolist())
    hits = [t.lstrip("Ġ") in {compound(o) for o in s["objects"]} for t, s in zip(top, scenes)]
    assert np.mean(hits) > 0.4                                                  # shipped: 0.56 on 500


@shipped
def test_toy_vision_tower_loads_with_its_processor():
    from transformers import AutoImageProcessor, CLIPVisionModel

    from fromage_mini.toyworld.pretrain_clip import normalise, to_tower_pixels

    info = json.loads((DATA_SAMPLES / "BUILD_INFO.json").read_text())
    model = CLIPVisionModel.from_pretrained(TOY_CLIP).eval()
    proc = AutoImageProcessor.from_pretrained(TOY_CLIP)
    ims = [Image.open(SHAPESWORLD / r["image"]).convert("RGB") for r in _records("val")[:4]]
    x = proc(images=ims, return_tensors="pt").pixel_values
    ours = normalise(to_tower_pixels(ims, x.shape[-1]), proc.image_mean, proc.image_std)
    assert torch.allclose(x, ours, atol=1e-5)                                   # trained on these exact pixels
    with torch.no_grad():
        pooled = model(pixel_values=x).pooler_output
    assert pooled.shape == (4, info["clip"]["pooled_dim"])


# ---------------------------------------------------------------- pretraining smoke runs

def test_pretrain_scripts_smoke(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

    from fromage_mini.toyworld.pretrain_clip import pretrain_clip
    from fromage_mini.toyworld.pretrain_lm import pretrain_lm

    m = pretrain_lm(tmp_path / "lm", steps=2, batch_size=8, n_docs=200, n_eval=8, eval_every=1, progress=False,
                    hidden=16, layers=1, heads=2, ffn=32, max_positions=192)
    assert len(m["history"]) == 2 and np.isfinite(m["val_caption_ppl"])
    tok = AutoTokenizer.from_pretrained(tmp_path / "lm")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "lm").config.hidden_size == 16
    c = pretrain_clip(tmp_path / "clip", tok, steps=2, batch_size=8, n_images=16, n_val=8, progress=False,
                      image_size=16, hidden=16, layers=1, heads=2, mlp=32, text_hidden=16, text_layers=1,
                      projection=8)
    assert 0.0 <= c["t2i_R@1"] <= 1.0
    assert CLIPVisionModel.from_pretrained(tmp_path / "clip").config.image_size == 16


def test_grid_documents_speak_the_named_cell_prefix_layout():
    """A grid document's layout is, token for token, what the grid prefix with cell names gives the LM
    (a cell's content where the prefix puts the cell token), and the caption after it starts as a
    caption does after a visual prefix."""
    from fromage_mini.model.prefix import prefix_layout
    from fromage_mini.presets import CELL_WORDS
    from fromage_mini.toyworld.corpus import EMPTY_WORD, GRID_MIX, build_corpus
    from fromage_mini.toyworld.pretrain_lm import encode_documents
    from fromage_mini.toyworld.tokenizer import train_tokenizer
    from fromage_mini.toyworld.world import CELLS

    assert CELL_WORDS == CELLS  # the preset names the cells as the corpus does
    docs = build_corpus(SEED, 400, GRID_MIX)
    tok = train_tokenizer([d if isinstance(d, str) else "".join(d) for d in docs])
    grid = [(i, d) for i, d in enumerate(docs) if isinstance(d, tuple) and d[1].startswith("a ")]
    assert grid and any(isinstance(d, tuple) and d[1].startswith("Q:") for d in docs)
    i, (layout_text, cap) = grid[0]
    scene = make_scene(SEED, "train", i)
    assert cap == canonical_caption(scene)
    ids = encode_documents(tok, [docs[i]])[0]
    layout = prefix_layout(tok, CELLS, 9).tolist()
    head = ids[1:1 + len(layout)]  # after </s>
    assert [t for t, slot in zip(head, layout) if slot >= 0] == [t for t in layout if t >= 0]
    contents = tok.convert_ids_to_tokens([t for t, slot in zip(head, layout) if slot < 0])
    want = [EMPTY_WORD] * 9
    for o in scene["objects"]:
        want[o["cell"]] = f"{o['size']}{o['colour']}{o['shape']}"
    assert [c.lstrip("Ġ") for c in contents] == want
    assert ids[1 + len(layout):] == tok(cap, add_special_tokens=False).input_ids  # "a", not " a"
    assert ids[1 + len(layout)] == tok(cap).input_ids[1]
