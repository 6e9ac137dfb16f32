"""Bad inputs to ``eval``: the pairs file is read by the training reader's row parser, and a bad row
or image is skipped, counted by reason in the output JSON, instead of stopping the evaluation."""
import argparse
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import fromage_mini.eval as ev
from fromage_mini.data import SkipLog

FIXTURES = Path(__file__).parent / "fixtures"
COLOURS = ["red", "green", "blue", "yellow", "white"]


@pytest.fixture(scope="module")
def ckpt(tiny_lm_path, tiny_vision_path, tmp_path_factory):
    import torch

    from fromage_mini import Fromage, FromageConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    Fromage(FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16)).save_pretrained(folder)
    return ["--model", str(folder), "--device", "cpu", "--ks", "1,2"]


def png(path, i=0):
    Image.new("RGB", (32, 32), COLOURS[i % len(COLOURS)]).save(path)
    return path


def run_eval(ckpt, out, *task):
    p = argparse.ArgumentParser()
    ev.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["eval", *ckpt, "--out", str(out), *task])
    assert args.func(args) == 0
    return json.loads(out.read_text())


def test_pairs_tsv_with_bom_bad_lines_and_outside_paths(tmp_path):
    lines = ["\ufeffcaption\timage".encode(), b"good\ta.png", b"caf\xe9 latin-1\tb.png", b"no tab",
             b"  \tc.png", b"escape\t../../etc/passwd", b'"unmatched quote\td.png', b"a lone\rcr\te.png"]
    (tmp_path / "p.tsv").write_bytes(b"\n".join(lines) + b"\n")
    log = SkipLog()
    pairs = ev.read_pairs(tmp_path / "p.tsv", skip_log=log)
    assert pairs == [("good", tmp_path / "a.png"), ('"unmatched quote', tmp_path / "d.png"),
                     ("a lone cr", tmp_path / "e.png")]
    assert log.summary()["counts"] == {"empty_caption": 1, "malformed_row": 1, "non_utf8": 1, "outside_root": 1}
    assert len(ev.read_pairs(tmp_path / "p.tsv", allow_outside_root=True)) == 4


def test_pairs_csv_is_quoted_within_one_line(tmp_path):
    (tmp_path / "p.csv").write_bytes(b'image,caption\na.png,"red, then blue"\nb.png,"one quote\nc.png,x\ry\n')
    log = SkipLog()
    pairs = ev.read_pairs(tmp_path / "p.csv", skip_log=log)
    assert pairs == [("red, then blue", tmp_path / "a.png"), ("one quote", tmp_path / "b.png"),
                     ("x y", tmp_path / "c.png")]
    assert log.total == 0


def test_recall_skips_and_counts_bad_images(ckpt, tmp_path):
    for i in range(3):
        png(tmp_path / f"{i}.png", i)
    (tmp_path / "bad.png").write_bytes(b"<html>not an image</html>")
    rows = ["caption\timage", "red\t0.png", "green\t1.png", "broken\tbad.png", "gone\tmissing.png", "blue\t2.png"]
    (tmp_path / "p.tsv").write_text("\n".join(rows) + "\n")
    r = run_eval(ckpt, tmp_path / "r.json", "recall", "--pairs", str(tmp_path / "p.tsv"))
    assert r["n"] == 3 and r["skips"] == {"corrupt_image": 1, "missing_file": 1}


def test_vist_skips_the_story_with_an_empty_image(ckpt, tmp_path):
    shutil.copy(FIXTURES / "shapes_stories_tiny.json", tmp_path / "stories.json")
    for s in range(2):
        for j in range(5):
            png(tmp_path / f"s{s}_{j}.png", j + s)
    (tmp_path / "s1_2.png").write_bytes(b"")
    r = run_eval(ckpt, tmp_path / "v.json", "vist", "--stories", str(tmp_path / "stories.json"))
    assert r["n"] == 1 and r["skipped"] == 1 and r["skips"] == {"empty_file": 1}


def test_json_pairs_with_a_null_caption_or_image_are_skipped_and_counted(tmp_path):
    pairs = [{"caption": "red", "image": "a.png"}, {"caption": None, "image": "b.png"}, ["   ", "c.png"],
             {"caption": "no image", "image": None}, [None, "d.png"], {"caption": "blue", "image": "e.png"}]
    (tmp_path / "p.json").write_text(json.dumps(pairs))
    log = SkipLog()
    got = ev.read_pairs(tmp_path / "p.json", skip_log=log)
    assert got == [("red", tmp_path / "a.png"), ("blue", tmp_path / "e.png")]  # never the caption "None"
    assert log.summary()["counts"] == {"empty_caption": 3, "malformed_row": 1}


def test_the_library_skips_and_counts_a_story_with_a_corrupt_image_as_the_cli_does(ckpt, tmp_path):
    from fromage_mini.model import load_model

    shutil.copy(FIXTURES / "shapes_stories_tiny.json", tmp_path / "stories.json")
    for s in range(2):
        for j in range(5):
            png(tmp_path / f"s{s}_{j}.png", j + s)
    (tmp_path / "s1_2.png").write_bytes(b"<html>not an image</html>")
    stories, paths = ev.read_story_list(tmp_path / "stories.json")
    log = SkipLog()
    out = ev.contextual_retrieval(load_model(ckpt[1], "cpu"), stories, paths, ks=(1, 2), skip_log=log)
    assert (out["n"], out["skipped"], out["skips"]) == (1, 1, {"corrupt_image": 1})
    assert log.summary()["counts"] == {"corrupt_image": 1}
    cli = run_eval(ckpt, tmp_path / "v.json", "vist", "--stories", str(tmp_path / "stories.json"))
    assert (cli["n"], cli["skipped"], cli["skips"]) == (1, 1, {"corrupt_image": 1})


def test_recall_at_k_with_k_not_below_the_candidates_is_marked_trivial(ckpt, tmp_path, capsys):
    for i in range(3):
        png(tmp_path / f"{i}.png", i)
    (tmp_path / "p.tsv").write_text("caption\timage\nred\t0.png\ngreen\t1.png\nblue\t2.png\n")
    p = argparse.ArgumentParser()
    ev.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["eval", *ckpt[:4], "--ks", "1,3,5", "--out", str(tmp_path / "r.json"), "recall",
                         "--pairs", str(tmp_path / "p.tsv")])
    assert args.func(args) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["trivial"] == ["R@3"] and r["t2i_R@3"] == 1.0 and "t2i_R@5" not in r
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'note: R@3 is 1 whatever the model does here (k >= the number of candidates), so it is marked "trivial"; '
        "evaluate on more items")
