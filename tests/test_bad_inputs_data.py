"""Bad inputs in the data layer: each is a counted skip with its reason or a one-line error, and the
next run after a fix is right (stale caches, the one TSV row parser, paths outside the data folder,
unreadable files and folders)."""
import os

import pytest
from PIL import Image

from fromage_mini import FromageError
from fromage_mini.data import SkipLog, open_reader, read_tsv
from fromage_mini.data.cache import cached_split

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="runs as root, which ignores file permissions (chmod)")


def png(path, i=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), COLOURS[i % len(COLOURS)]).save(path)
    return path


def tsv(path, rows, header="caption\timage"):
    """rows: [(caption, image)] or raw lines (bytes)."""
    lines = [header.encode()] + [r if isinstance(r, bytes) else "\t".join(r).encode() for r in rows]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def one_line(e) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# 1. the feature cache is keyed on the data's content


def test_cache_sees_an_edited_caption_an_added_row_and_a_replaced_image(make_model, tmp_path):
    m, root = make_model("opt"), tmp_path / "cache"
    for i in range(3):
        png(tmp_path / f"{i}.png", i)
    data = tsv(tmp_path / "d.tsv", [("a red one", "0.png"), ("a green one", "1.png")])
    assert cached_split(m, str(data), root, "train", log=print).captions == ["a red one", "a green one"]

    stat = data.stat()
    tsv(data, [("a tan one", "0.png"), ("a green one", "1.png")])  # same size ...
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and same mtime: only the bytes differ
    assert cached_split(m, str(data), root, "train", log=print).captions == ["a tan one", "a green one"]

    tsv(data, [("a tan one", "0.png"), ("a green one", "1.png"), ("a blue one", "2.png")])
    c = cached_split(m, str(data), root, "train", log=print)
    assert len(c) == 3 and c.captions[-1] == "a blue one"

    before = c.features([0])
    png(tmp_path / "0.png", 4)  # same name, other pixels
    after = cached_split(m, str(data), root, "train", log=print).features([0])
    assert not after.equal(before)


def test_a_cache_build_with_no_usable_row_is_never_reused(make_model, tmp_path):
    m, root = make_model("opt"), tmp_path / "cache"
    data = tsv(tmp_path / "d.tsv", [("one", "0.png"), ("two", "1.png")])  # the images are not there yet
    with pytest.raises(FromageError, match="no usable samples") as e:
        cached_split(m, str(data), root, "train", log=print)
    assert "missing_file=2" in one_line(e)
    assert not list(root.rglob("index.json"))  # nothing marked complete
    for i in range(2):
        png(tmp_path / f"{i}.png", i)
    assert cached_split(m, str(data), root, "train", log=print).captions == ["one", "two"]


def test_a_header_only_tsv_is_a_one_line_error_for_training(make_model, tmp_path):
    data = tsv(tmp_path / "d.tsv", [])
    with pytest.raises(FromageError, match="no usable samples.*no rows") as e:
        cached_split(make_model("opt"), str(data), tmp_path / "cache", "train", log=print)
    assert str(data) in one_line(e)


# ---------------------------------------------------------------------------------------------
# 2. one row parser: quotes are literal, a row is one line, a lone CR is no crash


def test_unmatched_quotes_are_literal_and_never_shift_later_rows(tmp_path):
    for i in range(5):
        png(tmp_path / f"{i}.png", i)
    rows = [('a 7" record', "0.png"), ('"an unmatched quote', "1.png"), ("plain", "2.png"),
            ('say "hi"', "3.png"), ('"wrapped, as csv.writer writes ""it"""', "4.png")]
    log = SkipLog()
    got = list(read_tsv(tsv(tmp_path / "d.tsv", rows), skip_log=log))
    assert log.total == 0
    assert [(s.key, s.caption) for s in got] == [
        ("0", 'a 7" record'), ("1", '"an unmatched quote'), ("2", "plain"), ("3", 'say "hi"'),
        ("4", 'wrapped, as csv.writer writes "it"')]
    assert [s.path for s in got] == [str((tmp_path / f"{i}.png").resolve()) for i in range(5)]


def test_a_lone_cr_inside_a_caption_is_no_crash(tmp_path):
    png(tmp_path / "0.png")
    png(tmp_path / "1.png", 1)
    data = tsv(tmp_path / "d.tsv", [b"a cr\rinside\t0.png", b"windows ending\t1.png\r"])
    log = SkipLog()
    assert [s.caption for s in read_tsv(data, skip_log=log)] == ["a cr inside", "windows ending"]
    assert log.total == 0


def test_training_reads_odd_rows_and_the_next_run_sees_a_fixed_row(make_model, tmp_path):
    m, root = make_model("opt"), tmp_path / "cache"
    for i in range(4):
        png(tmp_path / f"{i}.png", i)
    good = [b'"an unmatched quote\t0.png', b"a lone cr\rhere\t1.png", b"plain\t3.png"]
    data = tsv(tmp_path / "d.tsv", good[:2] + [b"caf\xe9 latin-1\t2.png"] + good[2:])
    c = cached_split(m, str(data), root, "train", log=print)
    assert c.captions == ['"an unmatched quote', "a lone cr here", "plain"] and c.keys == ["0", "1", "3"]
    assert c.info["skips"] == {"non_utf8": 1}
    tsv(data, good[:2] + ["café\t2.png".encode()] + good[2:])  # the user fixes the line
    c = cached_split(m, str(data), root, "train", log=print)
    assert c.captions == ['"an unmatched quote', "a lone cr here", "café", "plain"] and not c.info["skips"]


# ---------------------------------------------------------------------------------------------
# 4. files outside the data folder; unreadable files


def test_paths_outside_the_data_folder_are_skipped_unless_allowed(tmp_path):
    data = tmp_path / "data"
    png(data / "ok.png")
    png(tmp_path / "secret.png", 1)
    (data / "link.png").symlink_to(tmp_path / "secret.png")
    (data / "inner.png").symlink_to(data / "ok.png")  # a symlink that stays inside is fine
    rows = [("ok", "ok.png"), ("dots", "../secret.png"), ("absolute", "/etc/passwd"), ("link", "link.png"),
            ("inner", "inner.png"), ("absolute inside", str(data / "ok.png"))]
    log = SkipLog()
    got = [s.caption for s in read_tsv(tsv(data / "d.tsv", rows), skip_log=log)]
    assert got == ["ok", "inner", "absolute inside"]
    assert log.summary()["counts"] == {"outside_root": 3} and log.examples["outside_root"] == ["1", "2", "3"]

    log = SkipLog()
    got = [s.caption for s in open_reader(str(data / "d.tsv"), skip_log=log, allow_outside_root=True)]
    assert got == ["ok", "dots", "link", "inner", "absolute inside"]
    assert log.summary()["counts"] == {"corrupt_image": 1}  # /etc/passwd, read only when allowed


@as_root
def test_an_unreadable_image_is_counted_as_unreadable(tmp_path):
    png(tmp_path / "ok.png")
    os.chmod(png(tmp_path / "locked.png", 1), 0)
    log = SkipLog()
    got = [s.caption for s in read_tsv(tsv(tmp_path / "d.tsv", [("ok", "ok.png"), ("locked", "locked.png"),
                                                                  ("gone", "gone.png")]), skip_log=log)]
    assert got == ["ok"] and log.summary()["counts"] == {"missing_file": 1, "unreadable": 1}


# ---------------------------------------------------------------------------------------------
# 5. OS errors are one line naming the path and the cause


@as_root
def test_unreadable_tsv_and_data_folder_are_one_line_errors(tmp_path):
    data = tsv(tmp_path / "d.tsv", [("x", "0.png")])
    os.chmod(data, 0)
    with pytest.raises(FromageError, match="Permission denied") as e:
        read_tsv(data)
    assert str(data) in one_line(e)
    shards = tmp_path / "shards"
    shards.mkdir()
    os.chmod(shards, 0)
    try:
        with pytest.raises(FromageError, match="cannot list this folder.*Permission denied") as e:
            open_reader(str(shards))
        assert str(shards) in one_line(e)
    finally:
        os.chmod(shards, 0o755)


@as_root
def test_an_unreadable_shard_is_counted(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("k.png", png(tmp_path / "k.png").read_bytes()), ("k.txt", b"a caption")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "shards").mkdir()
    for name in ("00000.tar", "00001.tar"):
        (tmp_path / "shards" / name).write_bytes(buf.getvalue())
    os.chmod(tmp_path / "shards" / "00000.tar", 0)
    log = SkipLog()
    assert [s.caption for s in open_reader(str(tmp_path / "shards"), skip_log=log)] == ["a caption"]
    assert log.summary()["counts"] == {"unreadable": 1}


@as_root
def test_unwritable_cache_folder_is_a_one_line_error(make_model, tmp_path):
    png(tmp_path / "0.png")
    data = tsv(tmp_path / "d.tsv", [("x", "0.png")])
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(FromageError, match="cannot build the feature cache.*Permission denied") as e:
            cached_split(make_model("opt"), str(data), tmp_path / "ro" / "cache", "train", log=print)
        assert str(tmp_path / "ro") in one_line(e)
        assert not list((tmp_path / "ro").iterdir())
    finally:
        os.chmod(tmp_path / "ro", 0o755)
