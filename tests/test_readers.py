"""The streaming readers: same pairs from every format, and bad data skipped and counted, never replaced."""
import io
import json
import logging
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from fromage_mini.data import SKIP_REASONS, SkipLog, open_reader, read_hf_dataset, read_tsv, read_webdataset
from fromage_mini.errors import FromageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # datasets reads these when first imported


# ---------------------------------------------------------------------------------------------
# helpers


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pattern(seed: int, size=(24, 16)) -> Image.Image:
    """A small image that differs per seed, so a swapped sample would be noticed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_tar(path, members, end_block=True):
    """members: [(name, bytes)]. Written in this order, like img2dataset's shards."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if not end_block:  # cut right after the last member: no end-of-archive block
        data = data[: _end_of_members(data)]
    path.write_bytes(data)
    return path


def _end_of_members(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for _ in tf:
            pass
        return tf.offset


def cut_inside(path, member_name, keep=100):
    """Cut a tar file ``keep`` bytes into the data of ``member_name`` (a shard cut off mid-file)."""
    with tarfile.open(path) as tf:
        start = tf.getmember(member_name).offset_data
    path.write_bytes(path.read_bytes()[: start + keep])


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb's header)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def pairs(samples):
    return [(s.caption, s.image.mode, s.image.size, s.image.tobytes()) for s in samples]


# ---------------------------------------------------------------------------------------------
# the same pairs from every format

GOOD = [(f"caption number {i}", pattern(i, (20 + i, 12 + i)), "JPEG" if i % 2 else "PNG") for i in range(5)]


@pytest.fixture(scope="module")
def same_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("same")
    (root / "tsv" / "img").mkdir(parents=True)
    (root / "imagefolder").mkdir()
    (root / "parquet").mkdir()
    files = []
    for i, (cap, im, fmt) in enumerate(GOOD):
        name = f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        data = encode(im, fmt, quality=90) if fmt == "JPEG" else encode(im, fmt)
        files.append((name, cap, data))
        (root / "tsv" / "img" / name).write_bytes(data)
        (root / "imagefolder" / name).write_bytes(data)
    lines = ["caption\timage"] + [f"{cap}\timg/{name}" for name, cap, _ in files]
    (root / "tsv" / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(root / "imagefolder" / "metadata.jsonl", "w", encoding="utf-8") as f:
        for name, cap, _ in files:
            f.write(json.dumps({"file_name": name, "text": cap}) + "\n")
    members = []
    for i, (name, cap, data) in enumerate(files):
        key = f"{i:09d}"
        members += [(f"{key}.{name.split('.')[1]}", data), (f"{key}.txt", cap.encode()),
                    (f"{key}.json", json.dumps({"caption": cap}).encode())]
    (root / "shards").mkdir()
    write_tar(root / "shards" / "00000.tar", members[:9])
    write_tar(root / "shards" / "00001.tar", members[9:])

    import datasets
    feats = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": d, "path": None} for _, _, d in files], "text": [c for _, c, _ in files]},
        features=feats)
    ds.to_parquet(str(root / "parquet" / "train.parquet"))
    ds.save_to_disk(str(root / "saved"))
    return root


def test_all_formats_yield_the_same_pairs(same_data):
    expected = [(cap, "RGB", im.size) for cap, im, _ in GOOD]
    from_tsv = pairs(read_tsv(same_data / "tsv" / "pairs.tsv"))
    assert [p[:3] for p in from_tsv] == expected
    # PNG rows are lossless: exactly the source pixels
    for (_cap, im, fmt), got in zip(GOOD, from_tsv):
        if fmt == "PNG":
            assert got[3] == im.tobytes()
    for spec in [same_data / "shards", str(same_data / "shards" / "*.tar"),
                 sorted((same_data / "shards").glob("*.tar")),
                 same_data / "imagefolder", same_data / "parquet", same_data / "saved"]:
        log = SkipLog()
        got = pairs(open_reader(spec if isinstance(spec, list) else str(spec), skip_log=log))
        assert got == from_tsv, spec
        assert log.total == 0


def test_keys_and_determinism(same_data):
    keys = [s.key for s in read_tsv(same_data / "tsv" / "pairs.tsv")]
    assert keys == ["0", "1", "2", "3", "4"]
    wds = [s.key for s in read_webdataset(same_data / "shards")]
    assert wds == [f"{i:09d}" for i in range(5)]
    assert [s.key for s in read_webdataset(same_data / "shards")] == wds
    assert [s.key for s in read_hf_dataset(str(same_data / "imagefolder"))] == keys


def test_hf_columns_given_and_detected(same_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [encode(pattern(i)) for i in range(2)]
    (tmp_path / "i2d").mkdir()  # img2dataset's parquet layout: a jpg bytes column and a caption column
    pq.write_table(pa.table({"jpg": data, "caption": ["x", "y"], "url": ["u1", "u2"]}),
                   tmp_path / "i2d" / "00000.parquet")
    assert [s.caption for s in read_hf_dataset(str(tmp_path / "i2d"))] == ["x", "y"]
    assert [s.caption for s in read_hf_dataset(str(tmp_path / "i2d"), caption_column="url")] == ["u1", "u2"]
    with pytest.raises(FromageError, match="no column 'nope'"):
        read_hf_dataset(str(tmp_path / "i2d"), image_column="nope")
    pq.write_table(pa.table({"pixels": data, "label": ["x", "y"]}), tmp_path / "odd.parquet")
    with pytest.raises(FromageError, match="image_column="):
        read_hf_dataset(str(tmp_path / "odd.parquet"))


# ---------------------------------------------------------------------------------------------
# the bad-input corpus, through the TSV reader


def _corpus(folder):
    """(TSV lines, {key: expected (mode-independent) check}) for a folder of awkward files."""
    good_jpg = encode(pattern(1, (32, 20)), "JPEG", quality=92)
    good_png = encode(pattern(2, (30, 22)))
    cmyk = Image.new("CMYK", (10, 6), (0, 255, 255, 0))  # pure red in CMYK
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # a fully transparent pixel -> white
    palette = Image.new("P", (7, 5), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    files = {
        "good.jpg": good_jpg,
        "good.png": good_png,
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + os.urandom(1500),
        "corrupt.png": good_png[:60] + b"\x00" * 80 + good_png[140:],
        "trunc.jpg": good_jpg[: len(good_jpg) * 2 // 3],
        "trunc.png": good_png[: len(good_png) * 2 // 3],
        "empty.jpg": b"",
        "page.jpg": b"<html><body>404 Not Found</body></html>",
        "cmyk.jpg": encode(cmyk, "JPEG", quality=95),
        "rgba.png": encode(rgba),
        "la.png": encode(Image.new("LA", (6, 6), (100, 0))),
        "grey.png": encode(Image.new("L", (9, 4), 77)),
        "palette.png": encode(palette),
        "bit16.png": encode(Image.fromarray(np.full((5, 5), 32896, dtype=np.uint16))),
        "one.png": encode(Image.new("RGB", (1, 1), (1, 2, 3))),
        "bomb.png": png_claiming(30000, 30000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    long_caption = "a very long caption " * 500
    rows = [
        b"caption\timage",
        b"good jpeg\tgood.jpg",  # 0
        b"corrupt jpeg\tcorrupt.jpg",  # 1
        b"corrupt png\tcorrupt.png",  # 2
        b"truncated jpeg\ttrunc.jpg",  # 3
        b"truncated png\ttrunc.png",  # 4
        b"zero bytes\tempty.jpg",  # 5
        b"an html page\tpage.jpg",  # 6
        b"cmyk\tcmyk.jpg",  # 7
        b"rgba\trgba.png",  # 8
        b"grey with alpha\tla.png",  # 9
        b"greyscale\tgrey.png",  # 10
        b"palette\tpalette.png",  # 11
        b"sixteen bit\tbit16.png",  # 12
        b"one pixel\tone.png",  # 13
        b"a bomb\tbomb.png",  # 14
        b"not there\tmissing.jpg",  # 15
        b"caf\xe9 latin-1 bytes\tgood.png",  # 16
        b"three\tfields\tgood.png",  # 17
        b"no tab at all",  # 18
        b"   \tgood.png",  # 19: empty caption
        long_caption.encode() + b"\tgood.png",  # 20
        "café — 東京 🚀\tgood.png".encode(),  # 21
        b"windows line ending\tgood.png\r",  # 22
        b"a folder\t.",  # 23
        b'"a 5"" disk, quoted as pandas writes it"\tgood.png',  # 24
        b'a 5" disk, quote inside\tgood.png',  # 25
    ]
    (folder / "data.tsv").write_bytes(b"\n".join(rows) + b"\n")
    kept = {"0": "good jpeg", "7": "cmyk", "8": "rgba", "9": "grey with alpha", "10": "greyscale",
            "11": "palette", "12": "sixteen bit", "13": "one pixel", "20": long_caption.strip(),
            "21": "café — 東京 🚀", "22": "windows line ending", "24": 'a 5" disk, quoted as pandas writes it',
            "25": 'a 5" disk, quote inside'}
    skipped = {"corrupt_image": ["1", "2", "6"], "truncated_image": ["3", "4"], "empty_file": ["5"],
               "decompression_bomb": ["14"], "missing_file": ["15", "23"], "non_utf8": ["16"],
               "malformed_row": ["17", "18"], "empty_caption": ["19"]}
    return kept, skipped


def test_bad_inputs_are_skipped_counted_and_never_replaced(tmp_path, caplog):
    kept, skipped = _corpus(tmp_path)
    log = SkipLog(max_examples=10)
    with caplog.at_level(logging.DEBUG, logger="fromage_mini.data"):
        samples = list(read_tsv(tmp_path / "data.tsv", skip_log=log))

    assert {s.key: s.caption for s in samples} == kept  # in file order, nothing substituted
    assert [s.key for s in samples] == sorted(kept, key=int)
    assert all(s.image.mode == "RGB" for s in samples)
    assert log.summary() == {"total": sum(map(len, skipped.values())),
                             "counts": {r: len(k) for r, k in sorted(skipped.items())},
                             "examples": dict(sorted(skipped.items()))}
    assert set(log.counts) <= set(SKIP_REASONS)
    assert len([r for r in caplog.records if r.message.startswith("skip ")]) == log.total

    by_key = {s.key: s.image for s in samples}
    assert by_key["0"].size == (32, 20)
    r, g, b = by_key["7"].getpixel((5, 3))  # CMYK red -> RGB red
    assert r > 200 and g < 60 and b < 60
    assert by_key["8"].getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert by_key["8"].getpixel((3, 3)) == (0, 0, 255)
    assert by_key["9"].getpixel((0, 0)) == (255, 255, 255)  # LA, fully transparent -> white
    assert by_key["10"].getpixel((0, 0)) == (77, 77, 77)
    assert by_key["11"].getpixel((0, 0)) == (10, 200, 30)
    assert by_key["12"].getpixel((0, 0)) == (128, 128, 128)  # 16-bit scaled, not clipped to white
    assert by_key["13"].size == (1, 1) and by_key["13"].getpixel((0, 0)) == (1, 2, 3)
    for key in ("20", "21", "22", "24", "25"):  # the rows that reuse good.png get good.png's pixels
        assert by_key[key].tobytes() == pattern(2, (30, 22)).tobytes()


def test_decompression_bomb_warning_level_is_skipped(tmp_path, monkeypatch):
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are skipped
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    (tmp_path / "small.png").write_bytes(encode(pattern(0, (20, 20))))  # 400 px
    (tmp_path / "warn.png").write_bytes(encode(pattern(0, (40, 40))))  # 1600 px
    (tmp_path / "error.png").write_bytes(encode(pattern(0, (50, 50))))  # 2500 px
    (tmp_path / "t.tsv").write_text("caption\timage\nsmall\tsmall.png\nwarn\twarn.png\nerror\terror.png\n")
    log = SkipLog()
    assert [s.caption for s in read_tsv(tmp_path / "t.tsv", skip_log=log)] == ["small"]
    assert log.summary()["counts"] == {"decompression_bomb": 2}
    assert Image.MAX_IMAGE_PIXELS == 1000  # the reader did not raise the limit


def test_min_size_and_image_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "tiny.png").write_bytes(encode(pattern(0, (3, 40))))
    (tmp_path / "imgs" / "ok.png").write_bytes(encode(pattern(1, (8, 8))))
    (tmp_path / "t.tsv").write_text("id\timage\tcaption\n1\ttiny.png\ttiny\n2\tok.png\tok\n")
    log = SkipLog()
    got = [s.caption for s in read_tsv(tmp_path / "t.tsv", image_root=tmp_path / "imgs", skip_log=log,
                                       min_size=4)]
    assert got == ["ok"] and log.summary()["counts"] == {"too_small": 1}
    assert len(list(read_tsv(tmp_path / "t.tsv", image_root=tmp_path / "imgs"))) == 2  # 3 px is valid


def test_user_errors_raise_one_line_when_the_reader_is_made(tmp_path):
    """User errors are errors, not skips, and come at call time, before any iteration."""
    (tmp_path / "h.tsv").write_text("text\timage\nx\ty.png\n")
    (tmp_path / "b.tsv").write_bytes(b"capt\xffion\timage\n")
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: read_tsv(tmp_path / "nope.tsv"), "nope.tsv: TSV file not found"),
        (lambda: read_tsv(tmp_path / "h.tsv"), r"lacks column\(s\) \['caption'\]"),
        (lambda: read_tsv(tmp_path / "b.tsv"), "not UTF-8"),
        (lambda: read_webdataset(tmp_path / "empty"), "no .tar shards"),
        (lambda: read_webdataset(str(tmp_path / "*.tar")), "no files match"),
        (lambda: read_webdataset([tmp_path / "gone.tar"]), "shard not found"),
        (lambda: open_reader(str(tmp_path / "gone")), "not found"),
        (lambda: open_reader(str(tmp_path / "empty")), "folder has no"),
        (lambda: read_hf_dataset(str(tmp_path / "gone")), "not a dataset folder"),
    ]
    for make, message in cases:
        with pytest.raises(FromageError, match=message) as info:
            make()
        assert "\n" not in str(info.value)


def test_open_reader_picks_the_reader(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(pattern(0)))
    (tmp_path / "d.tsv").write_text("caption\timage\nfrom tsv\ta.png\n")
    write_tar(tmp_path / "s.tar", [("k1.png", encode(pattern(0))), ("k1.txt", b"from tar")])
    assert [s.caption for s in open_reader(str(tmp_path / "d.tsv"))] == ["from tsv"]
    assert [s.caption for s in open_reader(str(tmp_path / "s.tar"))] == ["from tar"]
    assert [s.caption for s in open_reader(tmp_path)] == ["from tar"]  # a folder with .tar shards


# ---------------------------------------------------------------------------------------------
# webdataset shards: bad members, cut-off shards


def test_webdataset_bad_members_and_truncated_shards(tmp_path):
    good = {i: encode(pattern(10 + i)) for i in range(8)}
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "00000.tar", [
        ("000.png", good[0]), ("000.txt", b"zero"), ("000.json", b"{}"),
        ("001.jpg", b"\xff\xd8garbage"), ("001.txt", b"corrupt image"),
        ("002.png", good[2]), ("002.txt", b"caf\xe9"),  # latin-1 caption
        ("003.txt", b"caption without an image"), ("003.json", b"{}"),
        ("004.png", good[4]), ("004.txt", b"  \n"),
        ("005.webp", encode(pattern(15), "WEBP", lossless=True)), ("005.txt", "über 東京".encode()),
        ("._006.png", b"macOS resource fork"),
    ])
    # cut in the middle of sample 102's image: 100 and 101 are complete and kept
    write_tar(shards / "00001.tar", [("100.png", good[0]), ("100.txt", b"hundred"),
                                     ("101.png", good[1]), ("101.txt", b"hundred one"),
                                     ("102.png", os.urandom(5000)), ("102.txt", b"lost")])
    cut_inside(shards / "00001.tar", "102.png")
    # ends right after a member with no end-of-archive block: tarfile alone would not notice
    write_tar(shards / "00002.tar", [("200.png", good[2]), ("200.txt", b"two hundred"),
                                     ("201.png", good[3]), ("201.txt", b"unsure")], end_block=False)
    (shards / "00003.tar").write_bytes(b"")  # zero bytes: an interrupted write
    (shards / "00004.tar").write_bytes(b"this is not a tar file" * 40)
    write_tar(shards / "00005.tar", [("500.png", good[5]), ("500.txt", b"after the bad shards")])

    log = SkipLog()
    got = [(s.key, s.caption) for s in read_webdataset(shards, skip_log=log)]
    assert got == [("000", "zero"), ("005", "über 東京"), ("100", "hundred"), ("101", "hundred one"),
                   ("200", "two hundred"), ("500", "after the bad shards")]
    assert log.summary()["counts"] == {"corrupt_image": 1, "non_utf8": 1, "missing_image": 1,
                                       "empty_caption": 1, "truncated_shard": 3, "corrupt_shard": 1}
    assert log.summary()["examples"]["truncated_shard"] == [str(shards / f"0000{i}.tar") for i in (1, 2, 3)]
    images = {s.key: s.image.tobytes() for s in read_webdataset(shards)}
    assert images["101"] == pattern(11).tobytes() and images["500"] == pattern(15).tobytes()


def test_hf_imagefolder_bad_rows(tmp_path):
    folder = tmp_path / "if"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(pattern(0)))
    (folder / "b.png").write_bytes(encode(pattern(1))[:100])
    (folder / "c.png").write_bytes(encode(pattern(2)))
    (folder / "d.png").write_bytes(b"")
    rows = [("a.png", "kept"), ("b.png", "truncated"), ("c.png", ""), ("d.png", "zero bytes"),
            ("gone.png", "missing")]
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n"
                                                   for f, t in rows))
    log = SkipLog()
    assert [(s.key, s.caption) for s in read_hf_dataset(str(folder), skip_log=log)] == [("0", "kept")]
    assert log.summary()["counts"] == {"truncated_image": 1, "empty_caption": 1, "empty_file": 1,
                                       "missing_file": 1}


def test_skip_log_summary_and_str():
    log = SkipLog(max_examples=2)
    for k in "abc":
        log.add("corrupt_image", k)
    log.add("missing_file", "z", "detail")
    assert log.total == 4
    assert log.summary() == {"total": 4, "counts": {"corrupt_image": 3, "missing_file": 1},
                             "examples": {"corrupt_image": ["a", "b"], "missing_file": ["z"]}}
    assert str(log) == "skipped 4: corrupt_image=3, missing_file=1"
    with pytest.raises(ValueError):
        log.add("not_a_reason", "k")


def test_hf_dataset_object_without_known_features():
    import datasets

    data = [encode(pattern(i)) for i in range(3)]

    def rows():
        for i, d in enumerate(data):
            yield {"jpg": d, "txt": f"row {i}" if i != 1 else None}

    ds = datasets.IterableDataset.from_generator(rows)
    log = SkipLog()
    got = [(s.key, s.caption, s.image.tobytes()) for s in read_hf_dataset(ds, skip_log=log)]
    assert got == [("0", "row 0", pattern(0).tobytes()), ("2", "row 2", pattern(2).tobytes())]
    assert log.summary()["counts"] == {"empty_caption": 1}
