"""Evaluation readers, metrics (against hand-computed values) and protocols, on small JSON fixtures."""
import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import fromage_mini.eval as ev
from fromage_mini.eval import visdial, vist

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model(tiny_lm_path, tiny_vision_path):
    from fromage_mini import Fromage, FromageConfig

    torch.manual_seed(0)
    return Fromage(FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16)).eval()


def random_features(model, keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(model.vis_dim, generator=g) for k in keys}


# ---------------------------------------------------------------------------------------------
# metrics
def test_read_vist_groups_by_story_and_sorts_by_worker_order():
    stories, urls = ev.read_vist(FIXTURES / "vist_sis_tiny.json")
    assert [s.id for s in stories] == ["30", "31"]
    s = stories[1]
    assert s.images == ["203", "201", "205", "202", "204"]  # file order (what the original used)
    o = s.in_order()
    assert o.images == ["201", "202", "203", "204", "205"]
    assert o.captions[0] == "it was her birthday ." and o.captions[-1] == "everyone went home happy ."
    assert urls["101"].endswith("101.jpg") and urls["105"].endswith("105_m.jpg") and "205" not in urls


def test_read_visdial_and_dense():
    dialogs = ev.read_visdial(FIXTURES / "visdial_tiny.json")
    assert [d.image_id for d in dialogs] == ["185565", "284"]
    r = dialogs[0].rounds[1]
    assert (r.question, r.answer, r.options, r.gt_index) == ("is it big", "yes", ["two", "no", "one", "yes"], 3)
    assert r.options[r.gt_index] == r.answer
    dense = ev.read_visdial_dense(FIXTURES / "visdial_tiny_dense.json")
    assert dense["284"] == {"round_id": 2, "relevance": [0.0, 0.0, 1.0, 1.0]}


def test_read_story_list_and_pairs():
    stories, paths = ev.read_story_list(FIXTURES / "shapes_stories_tiny.json")
    assert [s.id for s in stories] == ["0", "story-b"] and all(len(s.captions) == 5 for s in stories)
    assert paths["s1_4.png"] == FIXTURES / "s1_4.png" and stories[1].images[-1] == "s1_4.png"
    pairs = ev.read_pairs(FIXTURES / "pairs_tiny.json")
    assert pairs[1] == ("a large blue square on the right.", FIXTURES / "p1.png")


def test_find_images_by_trailing_number(tmp_path):
    for name in ("VisualDialog_val2018_000000185565.jpg", "1234.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = ev.find_images(tmp_path)
    assert found["185565"].name.startswith("VisualDialog") and found["1234"].name == "1234.png"
    assert "notes" not in found


# ---------------------------------------------------------------------------------------------
# protocols
def test_vist_protocol_order_bos_and_exclusion(model, monkeypatch):
    stories, _ = ev.read_vist(FIXTURES / "vist_sis_tiny.json")
    images = random_features(model, [i for s in stories for i in s.images])
    seen = {}
    real = vist.text_vectors

    def spy(m, prompts, **kw):
        seen["prompts"], seen["bos"] = prompts, kw.get("bos")
        return real(m, prompts, **kw)

    monkeypatch.setattr(vist, "text_vectors", spy)
    out = ev.contextual_retrieval(model, stories, images, ks=(1, 6))
    p = seen["prompts"][1]
    assert seen["bos"] == "once" and p[0] == "it was her birthday ." and p[-1] == "everyone went home happy ."
    assert len(p) == 9 and torch.equal(p[1], images["201"])  # caption, image, ..., caption
    # 10 candidates minus 4 context images: the target ranks at most 6th
    assert out["n"] == 2 and out["candidates"] == 10 and out["R@6"] == 1.0

    ev.contextual_retrieval(model, stories, images, faithful_to_original=True)
    assert seen["bos"] == "per_text" and seen["prompts"][1][0] == "then the cake came out ."

    # a story with a missing image is skipped; the captions-only setting drops the images
    del images["205"]
    out = ev.contextual_retrieval(model, stories, images, n_images=0)
    assert out["n"] == 1 and out["skipped"] == 1 and all(isinstance(x, str) for x in seen["prompts"][0])


def test_vist_scores_match_a_direct_computation(model):
    stories, _ = ev.read_vist(FIXTURES / "vist_sis_tiny.json")
    images = random_features(model, [i for s in stories for i in s.images], seed=3)
    out = ev.contextual_retrieval(model, stories, images, ks=(1, 2, 3))
    from fromage_mini.infer.scoring import image_vectors, text_vectors

    keys = list(images)
    v = torch.nn.functional.normalize(image_vectors(model, torch.stack([images[k] for k in keys])), dim=-1)
    hits = {1: 0, 2: 0, 3: 0}
    for s in stories:
        s = s.in_order()
        t = torch.nn.functional.normalize(text_vectors(model, [ev.story_prompt(s, images)]), dim=-1)[0]
        scores = {k: float(v[j] @ t) for j, k in enumerate(keys) if k not in s.images[:-1]}
        rank = 1 + sum(x > scores[s.images[-1]] for x in scores.values())
        for k in hits:
            hits[k] += rank <= k
    assert {k: out[f"R@{k}"] for k in hits} == {k: pytest.approx(h / 2) for k, h in hits.items()}


def test_visdial_ndcg_round_offset_and_ranks(model, monkeypatch):
    """Fake option scores that depend only on the round: the NDCG row each protocol reads is visible."""
    dialogs = ev.read_visdial(FIXTURES / "visdial_tiny.json")
    dense = ev.read_visdial_dense(FIXTURES / "visdial_tiny_dense.json")
    images = random_features(model, [d.image_id for d in dialogs])
    by_round = {1: torch.tensor([4.0, 3.0, 2.0, 1.0]), 2: torch.tensor([1.0, 2.0, 3.0, 4.0])}
    monkeypatch.setattr(visdial, "log_likelihood", lambda m, ctx, cands, **kw: by_round[ctx[-1].count("Q:")])
    monkeypatch.setattr(visdial, "build_inputs", lambda m, prompt, **kw: prompt[-1])
    monkeypatch.setattr(visdial, "candidate_scores", lambda m, ctx, cands, **kw: by_round[ctx.count("Q:")])

    fixed = ev.visdial_answer_ranking(model, dialogs, images, dense, ks=(1, 2))
    # gt ranks: dialog 0 -> 1, 1; dialog 1 -> 2, 4
    assert fixed["rounds"] == 4 and fixed["R@1"] == 0.5 and fixed["R@2"] == 0.75
    assert fixed["MRR"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 4) / 4)
    # dialog 0 reads round 1 ([4,3,2,1] vs relevance [1,0,0,.5]); dialog 1 round 2 (ideal)
    d0 = 1 / (1 + 0.5 / math.log2(3))
    assert fixed["NDCG"] == pytest.approx((d0 + 1) / 2) and fixed["dense_rounds"] == 2

    faithful = ev.visdial_answer_ranking(model, dialogs, images, dense, ks=(1, 2), faithful_to_original=True)
    # the original's i*10 + round_id: dialog 0 reads round 2's scores; dialog 1's index falls off the end
    assert faithful["NDCG"] == pytest.approx(0.5 / (1 + 0.5 / math.log2(3))) and faithful["dense_rounds"] == 1
    assert faithful["MRR"] == fixed["MRR"]


def test_visdial_runs_end_to_end_both_protocols(model):
    dialogs = ev.read_visdial(FIXTURES / "visdial_tiny.json")
    dense = ev.read_visdial_dense(FIXTURES / "visdial_tiny_dense.json")
    images = random_features(model, [d.image_id for d in dialogs])
    for faithful in (False, True):
        out = ev.visdial_answer_ranking(model, dialogs, images, dense, ks=(1, 4), faithful_to_original=faithful)
        assert out["rounds"] == 4 and out["R@4"] == 1.0 and 0 < out["NDCG"] <= 1
        ret = ev.visdial_image_retrieval(model, dialogs, images, ks=(1, 2), faithful_to_original=faithful)
        assert ret["n"] == 2 and ret["R@2"] == 1.0
        assert ret["direction"].startswith("image" if faithful else "dialogue")
    assert ev.dialogue_text(dialogs[0]) == "Q: what colour is it? A: red. Q: is it big? A: yes."


def test_recall_at_k_dataset(model):
    pairs = [(c, f) for (c, _), f in zip(ev.read_pairs(FIXTURES / "pairs_tiny.json"),
                                          random_features(model, "abc").values())]
    out = ev.recall_at_k_dataset(model, pairs, ks=(1, 3))
    assert out["n"] == 3 and out["t2i_R@3"] == out["i2t_R@3"] == 1.0 and 0 <= out["t2i_R@1"] <= 1


def test_faithful_squash_resizes_to_224(model):
    im = Image.new("RGB", (300, 100), "red")
    im.paste((0, 0, 255), (0, 0, 150, 100))
    a = ev.compute_features(model, {"x": im}, squash=True)["x"]
    b = ev.compute_features(model, {"x": im.resize((224, 224))})["x"]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# command line
def run_eval(argv):
    p = argparse.ArgumentParser()
    ev.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["eval", *argv])
    return args.func(args)


def test_eval_cli_on_fixtures(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "ckpt")
    ckpt = ["--model", str(tmp_path / "ckpt"), "--device", "cpu", "--ks", "1,2"]
    colours = ["red", "blue", "green", "yellow", "white"]

    def png(path, i):
        Image.new("RGB", (32, 32), colours[i % 5]).save(path)

    # recall over pairs (images next to the pairs file)
    shutil.copy(FIXTURES / "pairs_tiny.json", tmp_path / "pairs.json")
    for i in range(3):
        png(tmp_path / f"p{i}.png", i)
    assert run_eval([*ckpt, "--out", str(tmp_path / "r.json"), "recall", "--pairs", str(tmp_path / "pairs.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 3

    # ShapesWorld stories and VIST (images named by id)
    shutil.copy(FIXTURES / "shapes_stories_tiny.json", tmp_path / "stories.json")
    for s in range(2):
        for j in range(5):
            png(tmp_path / f"s{s}_{j}.png", j + s)
    assert run_eval([*ckpt, "--out", str(tmp_path / "s.json"), "vist",
                     "--stories", str(tmp_path / "stories.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["n"] == 2
    (tmp_path / "vist").mkdir()
    for i, name in enumerate(["101", "102", "103", "104", "105", "201", "202", "203", "204", "205"]):
        png(tmp_path / "vist" / f"{name}.png", i)
    assert run_eval([*ckpt, "--faithful-to-original", "--out", str(tmp_path / "v.json"), "vist",
                     "--annotations", str(FIXTURES / "vist_sis_tiny.json"), "--images", str(tmp_path / "vist")]) == 0
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["n"] == 2 and v["protocol"] == "faithful_to_original"

    # VisDial with the official image file names
    (tmp_path / "vd").mkdir()
    for i, iid in enumerate([185565, 284]):
        png(tmp_path / "vd" / f"VisualDialog_val2018_{iid:012d}.jpg", i)
    assert run_eval([*ckpt, "--out", str(tmp_path / "d.json"), "visdial", "--data", str(FIXTURES / "visdial_tiny.json"),
                     "--dense", str(FIXTURES / "visdial_tiny_dense.json"), "--images", str(tmp_path / "vd")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["answers"]["rounds"] == 4 and "NDCG" in d["answers"] and d["retrieval"]["n"] == 2
    assert '"task": "visdial"' in capsys.readouterr().out
