"""CC3M preparation end to end: real img2dataset against a loopback HTTP server, then read back."""
import argparse
import functools
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from fromage_mini.data import cc3m, prepare_cc3m, read_webdataset
from fromage_mini.errors import FromageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # datasets reads these when first imported

COLOURS = [(220, 30, 30), (30, 200, 40), (20, 40, 210), (240, 220, 20), (200, 30, 200),
           (20, 210, 210), (250, 140, 10), (120, 60, 20), (90, 90, 90), (250, 250, 250)]
CAPTIONS = ["a red square", 'a 5" floppy disk', '"quoted" at the start', "café à Zürich — 東京",
            "a purple thing", "cyan, with a comma", "orange", "brown", "grey", "white"]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serve a folder of images on 127.0.0.1; yields (base_url, folder)."""
    folder = tmp_path_factory.mktemp("www")
    for i, colour in enumerate(COLOURS):
        size = (48 + 8 * (i % 3), 40 + 10 * (i % 4))  # varied aspect ratios
        fmt = "PNG" if i % 2 else "JPEG"
        Image.new("RGB", size, colour).save(folder / f"img{i}.{fmt.lower()}", fmt)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(3000))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cc3m_tsv(server, tmp_path):
    """A CC3M-style TSV (no header): 10 good rows, 3 dead links, 1 corrupt image, 3 bad rows."""
    base, _ = server
    fmt = {i: "png" if i % 2 else "jpeg" for i in range(10)}
    lines = [f"{CAPTIONS[i]}\t{base}/img{i}.{fmt[i]}" for i in range(10)]
    lines[3:3] = [f"a dead link {k}\t{base}/gone{k}.jpg" for k in range(3)]
    lines.insert(8, f"a corrupt image\t{base}/corrupt.jpg")
    lines.insert(5, "no url here")  # malformed
    lines.insert(9, f"   \t{base}/img0.jpeg")  # empty caption
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_bytes("\n".join(lines).encode() + b"\n" + b"bad \xff bytes\thttp://x/y.jpg\n")
    return path


def _mean_colour(im):
    return tuple(np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0))


def test_prepare_cc3m_end_to_end(cc3m_tsv, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    out = tmp_path / "cc3m"
    result = prepare_cc3m(cc3m_tsv, out, image_size=32, threads=4, timeout=5, samples_per_shard=8,
                          quiet=True)
    assert (result["rows"], result["success"], result["failed_to_download"], result["failed_to_resize"]) \
        == (14, 10, 3, 1)
    assert result["input_rows"] == 14 and result["shards"] == 2
    assert result["input_skipped"]["counts"] == {"malformed_row": 1, "empty_caption": 1, "non_utf8": 1}
    errors = {msg: n for msg, n in result["top_errors"]}
    assert sum(n for msg, n in errors.items() if "404" in msg) == 3
    assert not (out / cc3m.INPUT_FILE).exists()

    samples = list(read_webdataset(out))
    assert sorted(s.caption for s in samples) == sorted(CAPTIONS)  # exactly the successful pairs
    by_caption = {s.caption: s for s in samples}
    for caption, colour in zip(CAPTIONS, COLOURS):
        im = by_caption[caption].image
        assert im.size == (32, 32)  # center_crop to a square
        assert np.abs(np.subtract(_mean_colour(im), colour)).max() < 12, caption  # caption kept its image
    assert len({s.key for s in samples}) == 10
    assert "10 images" in cc3m.format_summary(result)

    with pytest.raises(FromageError, match="other settings"):  # checked before img2dataset starts
        prepare_cc3m(cc3m_tsv, out, image_size=64, samples_per_shard=8, quiet=True)


def test_output_folder_resume_and_redo(tmp_path):
    out, settings = tmp_path / "out", {"tsv": "a.tsv", "sample": 10}
    cc3m._prepare_folder(out, settings, redo=False)  # new folder
    (out / "00000.tar").write_bytes(b"")
    (out / "00000_stats.json").write_text("{}")
    cc3m._prepare_folder(out, settings, redo=False)  # same settings: kept, img2dataset resumes it
    assert (out / "00000_stats.json").exists()
    with pytest.raises(FromageError, match="pass --redo"):
        cc3m._prepare_folder(out, {**settings, "sample": 20}, redo=False)
    cc3m._prepare_folder(out, {**settings, "sample": 20}, redo=True)  # redo: earlier run deleted
    assert [f.name for f in out.iterdir()] == [cc3m.SETTINGS_FILE]
    assert not list(out.glob("*.json"))  # img2dataset reads every *.json there as shard stats


def test_sample_takes_the_first_rows(cc3m_tsv, tmp_path, monkeypatch):
    dest = tmp_path / "in.tsv"
    log = cc3m.SkipLog()
    assert cc3m._write_input(cc3m_tsv, dest, sample=6, skip_log=log) == 5  # row 6 is "no url here"
    lines = dest.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "caption\turl"
    assert lines[2].startswith('"a 5"" floppy disk"\t')  # quoted for img2dataset's CSV parser
    assert log.summary()["counts"] == {"malformed_row": 1}
    # a TSV with a header row (any column order) is accepted too
    headed = tmp_path / "headed.tsv"
    headed.write_text("url\tcaption\nhttp://h/a.jpg\tfirst\nhttp://h/b.jpg\tsecond\n")
    assert cc3m._write_input(headed, dest, sample=1, skip_log=cc3m.SkipLog()) == 1
    assert dest.read_text().splitlines() == ["caption\turl", "first\thttp://h/a.jpg"]


def test_user_errors(cc3m_tsv, tmp_path, monkeypatch):
    with pytest.raises(FromageError, match="TSV not found"):
        prepare_cc3m(tmp_path / "nope.tsv", tmp_path / "o")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("not ours")
    with pytest.raises(FromageError, match="not made by 'data cc3m'"):
        prepare_cc3m(cc3m_tsv, tmp_path / "busy", redo=True)
    assert (tmp_path / "busy" / "precious.txt").exists()  # --redo never deletes a folder it did not make
    monkeypatch.setattr(cc3m.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FromageError, match="pip install img2dataset"):
        prepare_cc3m(cc3m_tsv, tmp_path / "o")


def test_cli_registers_data_cc3m(monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    cc3m.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "cc3m", "x.tsv", "--out", "o", "--sample", "100"])
    assert (args.tsv, args.out, args.sample, args.image_size, args.processes, args.threads, args.timeout) \
        == ("x.tsv", "o", 100, 224, 1, 8, 10)
    seen = {}

    def fake(tsv, out, **kw):
        seen.update(kw, tsv=tsv, out=out)
        return {"out": out, "shards": 1, "rows": 4, "success": 3, "failed_to_download": 1,
                "failed_to_resize": 0, "top_errors": [["HTTP Error 404: File not found", 1]],
                "input_rows": 4, "input_skipped": {"total": 0, "counts": {}, "examples": {}}}

    monkeypatch.setattr(cc3m, "prepare_cc3m", fake)
    assert args.func(args) == 0
    assert seen["sample"] == 100 and seen["resize_mode"] == "center_crop"
    assert "3 images (75.0%)" in capsys.readouterr().out


def test_format_summary_reports_input_skips():
    r = {"out": "o", "shards": 0, "rows": 0, "success": 0, "failed_to_download": 0, "failed_to_resize": 0,
         "top_errors": [], "input_rows": 0,
         "input_skipped": {"total": 2, "counts": {"malformed_row": 2}, "examples": {}}}
    assert "malformed_row" in cc3m.format_summary(r)
