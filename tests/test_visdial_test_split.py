"""VisDial v1.0 *test* split: unanswered last rounds are ranked (never filled with a made-up answer),
the challenge submission file is written, and the command says when there is no ground truth."""
import argparse
import json

import pytest
import torch
from PIL import Image

import fromage_mini.eval as ev
from fromage_mini.eval import visdial

# The official test layout, shrunk: 3 dialogs stopping at rounds 3, 2 and 1; only each dialog's last
# round has answer_options (5 here, 100 in the real file) and none has an answer or gt_index.
TEST_SPLIT = {
    "version": "1.0",
    "split": "test",
    "data": {
        "questions": ["what colour is it", "is it big", "how many are there", "is it sunny", "any people"],
        "answers": ["red", "yes", "no", "two", "blue", "one"],
        "dialogs": [
            {"image_id": 185565, "caption": "a red circle", "dialog": [
                {"question": 0, "answer": 0},
                {"question": 1, "answer": 1},
                {"question": 2, "answer_options": [3, 5, 2, 1, 0]}]},
            {"image_id": 284, "caption": "two blue squares", "dialog": [
                {"question": 2, "answer": 3},
                {"question": 3, "answer_options": [2, 1, 4, 0, 5]}]},
            {"image_id": 7, "caption": "a green triangle", "dialog": [
                {"question": 4, "answer_options": [1, 2, 3, 4, 5]}]},
        ],
    },
}
IMAGE_IDS = [185565, 284, 7]


@pytest.fixture(scope="module")
def model(tiny_lm_path, tiny_vision_path):
    from fromage_mini import Fromage, FromageConfig

    torch.manual_seed(0)
    return Fromage(FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16)).eval()


@pytest.fixture
def test_json(tmp_path):
    path = tmp_path / "visdial_1.0_test.json"
    path.write_text(json.dumps(TEST_SPLIT))
    return path


def features(model, keys):
    g = torch.Generator().manual_seed(0)
    return {str(k): torch.randn(model.vis_dim, generator=g) for k in keys}


def test_reader_keeps_unanswered_rounds_question_only(test_json):
    dialogs = ev.read_visdial(test_json)
    last = dialogs[0].rounds[-1]
    assert (last.question, last.answer, last.gt_index) == ("how many are there", None, None)
    assert last.options == ["two", "one", "no", "yes", "red"] and dialogs[0].rounds[0].options == []
    assert ev.dialogue_text(dialogs[0]) == "Q: what colour is it? A: red. Q: is it big? A: yes."
    assert ev.dialogue_text(dialogs[2]) == ""  # round 1: nothing answered yet
    # a negative index (padding in some copies) is not read as data["answers"][-1]
    raw = json.loads(json.dumps(TEST_SPLIT))
    raw["data"]["dialogs"][1]["dialog"][1] |= {"answer": -1, "gt_index": -1}
    test_json.write_text(json.dumps(raw))
    r = ev.read_visdial(test_json)[1].rounds[1]
    assert r.answer is None and r.gt_index is None


def test_ranking_prompts_end_with_the_question_and_ranks_follow_scores(model, test_json, monkeypatch):
    dialogs = ev.read_visdial(test_json)
    prompts, fake = [], {}

    def scores(m, ctx, cands, **kw):  # distinct scores per dialog, visible in the ranks
        prompts.append(ctx[-1])
        fake[len(prompts)] = torch.randn(len(cands), generator=torch.Generator().manual_seed(len(prompts)))
        return fake[len(prompts)]

    monkeypatch.setattr(visdial, "log_likelihood", scores)
    out = ev.visdial_answer_ranking(model, dialogs, features(model, IMAGE_IDS), return_ranks=True)
    assert prompts == ["Q: what colour is it?\nA: red\nQ: is it big?\nA: yes\nQ: how many are there?\nA:",
                       "Q: how many are there?\nA: two\nQ: is it sunny?\nA:", "Q: any people?\nA:"]
    assert not any("None" in p for p in prompts)
    assert out["rounds"] == 3 and out["gt_rounds"] == 0 and "MRR" not in out and "R@1" not in out
    sub = out["submission"]
    assert [(e["image_id"], e["round_id"]) for e in sub] == [(185565, 3), (284, 2), (7, 1)]
    for n, e in enumerate(sub, 1):
        assert sorted(e["ranks"]) == [1, 2, 3, 4, 5]
        best_first = sorted(range(5), key=lambda j: -float(fake[n][j]))
        assert [e["ranks"][j] for j in best_first] == [1, 2, 3, 4, 5]


def test_option_ranks_ties_and_nan():
    assert ev.option_ranks(torch.tensor([0.5, 2.0, 0.5, float("nan"), -1.0])) == [2, 1, 3, 5, 4]


def test_retrieval_uses_answered_rounds_only(model, test_json, monkeypatch):
    seen = {}
    real = visdial.text_vectors

    def spy(m, prompts, **kw):
        seen["prompts"] = prompts
        return real(m, prompts, **kw)

    monkeypatch.setattr(visdial, "text_vectors", spy)
    out = ev.visdial_image_retrieval(model, ev.read_visdial(test_json), features(model, IMAGE_IDS), ks=(1, 2))
    assert seen["prompts"] == ["Q: what colour is it? A: red. Q: is it big? A: yes.", "Q: how many are there? A: two."]
    assert out["n"] == 2 and out["no_answered_rounds"] == 1 and out["skipped"] == 0 and out["R@2"] == 1.0


def test_cli_writes_submission_and_says_there_is_no_ground_truth(model, test_json, tmp_path, capsys):
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "img").mkdir()
    for i, iid in enumerate(IMAGE_IDS):
        Image.new("RGB", (32, 32), ["red", "blue", "green"][i]).save(
            tmp_path / "img" / f"VisualDialog_test2018_{iid:012d}.jpg")
    p = argparse.ArgumentParser()
    ev.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["eval", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--ks", "1,2",
                         "--out", str(tmp_path / "m.json"), "visdial", "--data", str(test_json),
                         "--images", str(tmp_path / "img"), "--submission", str(tmp_path / "sub.json")])
    assert args.func(args) == 0
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert [(e["image_id"], e["round_id"]) for e in sub] == [(185565, 3), (284, 2), (7, 1)]
    assert all(set(e) == {"image_id", "round_id", "ranks"} and sorted(e["ranks"]) == [1, 2, 3, 4, 5] for e in sub)
    err = capsys.readouterr().err.strip().splitlines()
    note = [line for line in err if line.startswith("visdial:")]
    assert len(note) == 1 and "no ground-truth answers" in note[0] and "3 rounds ranked" in note[0]
    assert str(tmp_path / "sub.json") in note[0]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["answers"]["gt_rounds"] == 0 and "submission" not in m["answers"] and m["retrieval"]["n"] == 2


def test_val_submission_has_every_round_and_agrees_with_the_metrics(model):
    from pathlib import Path

    dialogs = ev.read_visdial(Path(__file__).parent / "fixtures" / "visdial_tiny.json")
    out = ev.visdial_answer_ranking(model, dialogs, features(model, ["185565", "284"]), ks=(1,), return_ranks=True)
    sub = out["submission"]
    assert out["rounds"] == out["gt_rounds"] == 4 and [e["round_id"] for e in sub] == [1, 2, 1, 2]
    gt = [r.gt_index for d in dialogs for r in d.rounds]
    assert out["R@1"] == sum(e["ranks"][g] == 1 for e, g in zip(sub, gt)) / 4
