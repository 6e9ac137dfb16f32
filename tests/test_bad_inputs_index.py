"""Bad inputs to ``index build``: every image's metadata is its own, skips are counted by reason,
and a build with nothing to index, an unreadable folder or an unwritable output is one line."""
import json
import os
import subprocess

import pytest
from PIL import Image

from fromage_mini import FromageError
from fromage_mini.cli import main
from fromage_mini.retrieval.build import build_index

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="runs as root, which ignores file permissions (chmod)")


@pytest.fixture(scope="module")
def model(tiny_lm_path, tiny_vision_path):
    import torch

    from fromage_mini import Fromage, FromageConfig

    torch.manual_seed(0)
    return Fromage(FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16))


def png(path, i=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), COLOURS[i % len(COLOURS)]).save(path, fmt)
    return path


def rows_of(idx):
    return {idx.metadata(i)["key"]: idx.metadata(i) for i in range(len(idx))}


def build(model, data, out, **kw):
    return build_index(model, str(data), out, batch_size=2, progress=False, **kw)


def test_unmatched_quote_and_lone_cr_keep_every_key_on_its_own_image(model, tmp_path):
    for i in range(5):
        png(tmp_path / f"{i}.png", i)
    lines = [b"caption\timage", b"first\t0.png", b'"an unmatched quote\t1.png', b"a lone cr\rhere\t2.png",
             b'a 5" disk\t3.png', b"last\t4.png"]
    (tmp_path / "d.tsv").write_bytes(b"\n".join(lines) + b"\n")
    rows = rows_of(build(model, tmp_path / "d.tsv", tmp_path / "idx"))
    assert sorted(rows) == ["0", "1", "2", "3", "4"]
    for key, m in rows.items():
        assert m["path"] == str((tmp_path / f"{key}.png").resolve())
    assert rows["1"]["caption"] == '"an unmatched quote' and rows["2"]["caption"] == "a lone cr here"
    # the next build over the fixed file replaces the index, still one image per key
    lines[2] = b"a matched quote\t1.png"
    (tmp_path / "d.tsv").write_bytes(b"\n".join(lines) + b"\n")
    rows = rows_of(build(model, tmp_path / "d.tsv", tmp_path / "idx"))
    assert rows["1"]["caption"] == "a matched quote" and rows["1"]["path"] == str((tmp_path / "1.png").resolve())


def test_tif_images_are_indexed_and_outside_links_counted(model, tmp_path):
    folder = tmp_path / "imgs"
    png(folder / "a.png", 0)
    png(folder / "b.tif", 1, "TIFF")
    png(folder / "sub" / "c.TIFF", 2, "TIFF")
    (folder / "notes.txt").write_text("not an image")
    png(tmp_path / "elsewhere.png", 3)
    (folder / "link.png").symlink_to(tmp_path / "elsewhere.png")
    idx = build(model, folder, tmp_path / "idx")
    assert sorted(rows_of(idx)) == ["a.png", "b.tif", "sub/c.TIFF"]
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["extra_info"]["skips"] == {"outside_root": 1}
    assert len(build(model, folder, tmp_path / "idx2", allow_outside_root=True)) == 4


def test_header_only_tsv_is_a_one_line_error_with_exit_2(model, tmp_path, capsys):
    (tmp_path / "d.tsv").write_text("caption\timage\n")
    model.save_pretrained(tmp_path / "ckpt")
    rc = main(["index", "build", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "d.tsv"),
               "--out", str(tmp_path / "idx")])
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    err = [line for line in err if line.strip() and not line.startswith("indexing")]  # tqdm's bar aside
    assert rc == 2 and len(err) == 1 and "no usable image to index" in err[0] and err[0].startswith("fromage-mini:")
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx.*"))


def test_stale_build_folders_of_killed_builds_are_removed(model, tmp_path):
    png(tmp_path / "imgs" / "a.png")
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that no longer runs, as after a SIGKILL
    stale = tmp_path / f".idx.building-{child.pid}-0123abcd"
    live = tmp_path / f".idx.building-{os.getppid()}-4567abcd"  # a build still running elsewhere
    for d in (stale, live):
        d.mkdir()
        (d / "vectors.npy").write_bytes(b"half written")
    build(model, tmp_path / "imgs", tmp_path / "idx")
    assert not stale.exists() and live.exists()


@as_root
def test_unreadable_image_folder_or_file(model, tmp_path):
    folder = tmp_path / "imgs"
    png(folder / "a.png")
    os.chmod(png(folder / "locked.png", 1), 0)
    idx = build(model, folder, tmp_path / "idx")
    assert len(idx) == 1
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["extra_info"]["skips"] == {"unreadable": 1}
    for locked in (folder / "sub", folder):
        locked.mkdir(exist_ok=True)
        os.chmod(locked, 0)
        try:
            with pytest.raises(FromageError, match="cannot list this folder.*Permission denied") as e:
                build(model, folder, tmp_path / "idx2")
            assert str(locked) in str(e.value) and "\n" not in str(e.value)
        finally:
            os.chmod(locked, 0o755)
        assert not (tmp_path / "idx2").exists()


@as_root
def test_unwritable_output_folder_is_one_line_and_nothing_is_written(model, tmp_path):
    png(tmp_path / "imgs" / "a.png")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(FromageError, match="cannot build the index.*Permission denied") as e:
            build(model, tmp_path / "imgs", tmp_path / "ro" / "idx")
        assert str(tmp_path / "ro") in str(e.value) and "\n" not in str(e.value)
        assert not list((tmp_path / "ro").iterdir())
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_a_symlink_loop_in_the_image_folder_is_skipped_and_counted(model, tmp_path):
    folder = tmp_path / "imgs"
    png(folder / "a.png")
    (folder / "b.png").symlink_to("c.png")  # b -> c -> b
    (folder / "c.png").symlink_to("b.png")
    (folder / "self.jpg").symlink_to("self.jpg")
    idx = build(model, folder, tmp_path / "idx")
    assert sorted(rows_of(idx)) == ["a.png"]
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["extra_info"]["skips"] == {"unreadable": 3}
    assert len(build(model, folder, tmp_path / "idx2", allow_outside_root=True)) == 1  # the other path, too


def test_search_says_when_the_index_is_empty_and_refuses_k_below_1(model, tmp_path, capsys):
    import numpy as np

    from fromage_mini.retrieval.build import model_fingerprint
    from fromage_mini.retrieval.index import RetrievalIndex

    model.save_pretrained(tmp_path / "ckpt")
    empty = RetrievalIndex.build(tmp_path / "empty", np.zeros((0, 16), np.float32), [],
                                 model_fingerprint=model_fingerprint(model))
    assert empty.search(np.ones(16), k=3)[1].shape == (1, 0)  # nothing to return, whatever k
    search = ["index", "search", "--model", str(tmp_path / "ckpt"), "--index", str(tmp_path / "empty"), "a red one"]
    assert main(search) == 2
    assert capsys.readouterr().err.strip() == (
        f"fromage-mini: error: {tmp_path / 'empty'}: the index holds no images, so there is nothing to search; "
        "build it again from data with images (fromage-mini index build)")

    png(tmp_path / "imgs" / "a.png")
    idx = build(model, tmp_path / "imgs", tmp_path / "idx")
    for k in (0, -2):
        with pytest.raises(FromageError) as e:
            idx.search(np.ones(16), k=k)
        assert str(e.value) == f"search(): k must be at least 1 (results per query), got {k}"
    with pytest.raises(SystemExit) as e:
        main(["index", "search", "--model", str(tmp_path / "ckpt"), "--index", str(tmp_path / "idx"), "-k", "0", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("argument -k: expected a positive integer, got '0'")
    assert main(["index", "search", "--model", str(tmp_path / "ckpt"), "--index", str(tmp_path / "idx"), "x"]) == 0
    assert capsys.readouterr().out.strip().endswith("a.png")
