"""Streaming readers for image–caption data, in the forms users already have.

Every reader yields :class:`Sample` records (key, caption, RGB image) one at a time, in a fixed
order, without loading the dataset into memory:

    read_tsv(path)                the original FROMAGe TSV (``caption<TAB>image`` header row)
    read_webdataset(shards)       img2dataset-style ``.tar`` shards (``{key}.jpg`` + ``{key}.txt``)
    read_hf_dataset(name)         a Hugging Face ``datasets`` dataset (imagefolder, parquet, on disk, hub)
    open_reader(spec)             picks one of the above from a path or ``hf:NAME``

Bad data is **skipped and counted, never replaced**: the original FROMAGe loader caught any error and
returned a random other item, which hides broken data and changes what the model sees. Here each
skipped item is recorded in a :class:`SkipLog` under one reason (see ``SKIP_REASONS``) and logged at
DEBUG level. Mistakes in what the user asked for (a missing TSV, a missing header column, no shards
found) raise :class:`~fromage_mini.files.FromageError` instead: those are errors, not bad items.
"""
from __future__ import annotations

import csv
import glob as _glob
import io
import logging
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FromageError
from .images import IMAGE_EXTENSIONS

log = logging.getLogger("fromage_mini.data")

SKIP_REASONS = {
    "missing_file": "the image file named in the TSV does not exist",
    "missing_image": "a shard or dataset record has a caption but no image",
    "empty_file": "the image file has zero bytes",
    "corrupt_image": "the bytes are not a decodable image (garbage, HTML page, broken data)",
    "truncated_image": "the image file ends before the image data does",
    "decompression_bomb": "the image claims more pixels than PIL's Image.MAX_IMAGE_PIXELS",
    "too_small": "a side is shorter than the reader's min_size (default 1: nothing is too small)",
    "empty_caption": "the caption is missing or only whitespace",
    "non_utf8": "a TSV line or caption file is not valid UTF-8",
    "malformed_row": "a TSV line does not have one field per header column",
    "truncated_shard": "a tar shard ends mid-file; what came before is kept",
    "corrupt_shard": "a tar shard cannot be read at all",
}

CAPTION_EXTENSIONS = ("txt", "caption")


@dataclass
class Sample:
    """One image–caption pair.

    key: a stable id, unique within the source (TSV data-row index counted from 0, webdataset
    ``__key__``, or dataset row index); caption: stripped text; image: decoded, in RGB mode.
    """

    key: str
    caption: str
    image: Image.Image


class SkipLog:
    """Counts of skipped items by reason, with up to ``max_examples`` example keys per reason.

    Pass one to a reader (``skip_log=``) and read ``total`` or ``summary()`` afterwards; one log can be
    shared by several readers.
    """

    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, key: str, detail: str = "") -> None:
        """Record one skipped item (and log it at DEBUG level)."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(str(key))
        log.debug("skip %s [%s]%s", key, reason, f": {detail}" if detail else "")

    @property
    def total(self) -> int:
        """Number of skipped items over all reasons."""
        return sum(self.counts.values())

    def summary(self) -> dict:
        """``{"total": n, "counts": {reason: n}, "examples": {reason: [key, ...]}}``, reasons sorted."""
        reasons = sorted(self.counts)
        return {"total": self.total,
                "counts": {r: self.counts[r] for r in reasons},
                "examples": {r: list(self.examples.get(r, [])) for r in reasons}}

    def __str__(self) -> str:
        if not self.total:
            return "skipped 0"
        parts = [f"{r}={n}" for r, n in sorted(self.counts.items())]
        return f"skipped {self.total}: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# decoding one image


class BadItem(Exception):
    """One item cannot be used; ``reason`` is a key of ``SKIP_REASONS``. Readers catch it and count it."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason = reason


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16/32-bit grey is scaled to 8 bits."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # always a new image, detached from any file


def decode_image(data: bytes, min_size: int = 1) -> Image.Image:
    """Fully decode image bytes into an RGB image, or raise :class:`BadItem` with the reason.

    ``img.load()`` forces the whole file to be decoded, so truncation is caught here and not later
    in a DataLoader worker. PIL's pixel limit (``Image.MAX_IMAGE_PIXELS``) is honoured, warning
    included (``warnings.catch_warnings`` is process-wide: decode in processes, not threads).
    EXIF orientation is applied, so the image is upright as a viewer shows it. Known gap: PIL
    accepts a JPEG whose middle bytes are damaged (libjpeg only warns), so it decodes with garbage.
    """
    if not data:
        raise BadItem("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadItem("decompression_bomb", str(e)) from None
    except UnidentifiedImageError as e:
        raise BadItem("corrupt_image", str(e)) from None
    except OSError as e:
        reason = "truncated_image" if "truncated" in str(e) else "corrupt_image"
        raise BadItem(reason, str(e)) from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as e:
        # PIL raises these from plugin parsers on malformed headers or chunks
        reason = "decompression_bomb" if "too large" in str(e).lower() else "corrupt_image"
        raise BadItem(reason, f"{type(e).__name__}: {e}") from None
    if min(rgb.size) < min_size:
        raise BadItem("too_small", f"{rgb.size[0]}x{rgb.size[1]} < {min_size}")
    return rgb


def _clean_caption(caption) -> str:
    caption = "" if caption is None else str(caption).strip()
    if not caption:
        raise BadItem("empty_caption")
    return caption


def _make(key: str, caption, load, skip_log: SkipLog, min_size: int) -> Sample | None:
    """Build a Sample, or record why not and return None.

    ``load()`` returns the encoded image bytes or raises ``BadItem``; it is called only once the
    caption is known to be usable, so each item is counted under exactly one reason.
    """
    try:
        caption = _clean_caption(caption)
        return Sample(key, caption, decode_image(load(), min_size))
    except BadItem as s:
        skip_log.add(s.reason, key, str(s))
        return None


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadItem("missing_file", str(path)) from None


# ------------------------------------------------------------------------------------------------
# the original FROMAGe TSV


def read_tsv(tsv_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
             skip_log: SkipLog | None = None, min_size: int = 1) -> Iterator[Sample]:
    """Yield samples from a FROMAGe TSV: a header row naming ``caption`` and ``image`` columns
    (others are ignored), then one tab-separated row per pair.

    Image paths are relative to ``image_root`` (default: the TSV's folder); absolute paths are used
    as they are. A field wrapped in double quotes is unquoted (``"a 5"" disk"`` -> ``a 5" disk``), as
    pandas, which the original used, reads it; a quote inside a field is kept. Keys are data-row
    indices counted from 0 (file line = key + 2). Each line is decoded on its own, so one non-UTF-8 line is skipped as
    ``non_utf8`` and the rest still read.
    """
    tsv_path = Path(tsv_path)
    skip_log = SkipLog() if skip_log is None else skip_log
    if not tsv_path.is_file():
        raise FromageError(f"{tsv_path}: TSV file not found; check the path")
    with open(tsv_path, "rb") as f:
        header = _tsv_header(tsv_path, f.readline())  # checked now, not at the first next()
    root = Path(image_root) if image_root is not None else tsv_path.parent
    return _iter_tsv(tsv_path, header, root, skip_log, min_size)


def _iter_tsv(tsv_path: Path, header: list[str], root: Path, skip_log: SkipLog, min_size: int):
    n_cols, cap_col, img_col = len(header), header.index("caption"), header.index("image")
    with open(tsv_path, "rb") as f:
        f.readline()
        for row, raw in enumerate(f):
            key = str(row)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skip_log.add("non_utf8", key, str(e))
                continue
            fields = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"), [])
            if len(fields) != n_cols:
                skip_log.add("malformed_row", key, f"{len(fields)} fields, header has {n_cols}")
                continue
            path = root / fields[img_col]
            sample = _make(key, fields[cap_col], partial(_read_file, path), skip_log, min_size)
            if sample is not None:
                yield sample


def _tsv_header(tsv_path: Path, raw: bytes) -> list[str]:
    try:
        header = raw.decode("utf-8-sig").rstrip("\r\n").split("\t")
    except UnicodeDecodeError:
        raise FromageError(f"{tsv_path}: the header row is not UTF-8 text; "
                           "the first line must be 'caption<TAB>image'") from None
    header = [h.strip() for h in header]
    missing = [c for c in ("caption", "image") if c not in header]
    if missing:
        raise FromageError(f"{tsv_path}: header row {header} lacks column(s) {missing}; "
                           "the first line must name tab-separated columns 'caption' and 'image'")
    return header


# ------------------------------------------------------------------------------------------------
# webdataset tar shards (img2dataset layout), read with tarfile in stream mode


def list_shards(shards: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Resolve a glob, a folder (its ``*.tar``), one ``.tar`` path, or a list of paths to sorted shards."""
    if isinstance(shards, (str, os.PathLike)):
        s = str(shards)
        if os.path.isdir(s):
            found = sorted(Path(s).glob("*.tar"))
            if not found:
                raise FromageError(f"{s}: folder has no .tar shards; point at the img2dataset output folder")
            return found
        if _glob.has_magic(s):
            found = sorted(Path(p) for p in _glob.glob(s))
            if not found:
                raise FromageError(f"{s}: no files match this pattern; check the path")
            return found
        paths = [Path(s)]
    else:
        paths = [Path(p) for p in shards]
        if not paths:
            raise FromageError("no shards given; pass a folder, a glob or a list of .tar files")
    for p in paths:
        if not p.is_file():
            raise FromageError(f"{p}: shard not found; check the path")
    return paths


def _split_member(name: str) -> tuple[str, str]:
    """webdataset naming: ``dir/key.ext.ext2`` -> (``dir/key``, ``ext.ext2``); the key is up to the first dot."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _group_to_sample(key: str, parts: dict[str, bytes], skip_log: SkipLog, min_size: int):
    img_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
    cap_ext = next((e for e in CAPTION_EXTENSIONS if e in parts), None)
    caption = None
    if cap_ext is not None:
        try:
            caption = parts[cap_ext].decode("utf-8")
        except UnicodeDecodeError as e:
            skip_log.add("non_utf8", key, str(e))
            return None
    return _make(key, caption, partial(_member_image, parts, img_ext), skip_log, min_size)


def _member_image(parts: dict[str, bytes], ext: str | None) -> bytes:
    if ext is None:
        raise BadItem("missing_image", f"no member with extension {'/'.join(IMAGE_EXTENSIONS)}")
    return parts[ext]


def _shard_groups(path: Path, skip_log: SkipLog) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) for each complete run of adjacent members sharing a key.

    A shard that ends early (mid-member, mid-header, or without the end-of-archive zero block) is
    counted once as ``truncated_shard``; the sample being read when it ends is dropped with it, since
    it cannot be known whether all its members arrived.
    """
    key, parts = None, {}
    with open(path, "rb") as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    if os.path.basename(member.name).startswith("."):
                        continue  # macOS ._ files and other hidden entries
                    k, ext = _split_member(member.name)
                    if k != key:  # a new key starts: the previous sample is complete
                        if key is not None:
                            yield key, parts
                        key, parts = k, {}
                    parts[ext] = tf.extractfile(member).read()
                end = tf.offset
        except tarfile.ReadError as e:
            if key is None and "unexpected end" not in str(e):
                reason = "truncated_shard" if "empty file" in str(e) else "corrupt_shard"
            else:
                reason = "truncated_shard"
            skip_log.add(reason, str(path), str(e))
            return
        # tarfile ends quietly on a cut-off or garbage header: require the zero end-of-archive block
        raw.seek(end)
        if raw.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            skip_log.add("truncated_shard", str(path), f"no end-of-archive block at byte {end}")
            return
    if key is not None:
        yield key, parts


def read_webdataset(shards, *, skip_log: SkipLog | None = None, min_size: int = 1) -> Iterator[Sample]:
    """Yield samples from webdataset ``.tar`` shards in img2dataset's layout.

    ``shards``: a glob (``out/*.tar``), a folder (all its ``*.tar``), one ``.tar`` path, or a list.
    Shards are read in sorted order (a list is kept in its order), members in tar order; members of
    one sample are adjacent and share a key (``00001234.jpg``, ``00001234.txt``, ``00001234.json``).
    The image is the first of jpg/jpeg/png/webp/... present; the caption is ``.txt``. Uses only
    ``tarfile`` (stream mode), so one sample at a time is in memory. A cut-off shard yields what was
    complete, is counted as ``truncated_shard``, and reading goes on with the next shard.
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    return _iter_webdataset(list_shards(shards), skip_log, min_size)


def _iter_webdataset(paths: list[Path], skip_log: SkipLog, min_size: int):
    for path in paths:
        for key, parts in _shard_groups(path, skip_log):
            sample = _group_to_sample(key, parts, skip_log, min_size)
            if sample is not None:
                yield sample


# ------------------------------------------------------------------------------------------------
# Hugging Face datasets

IMAGE_COLUMNS = ("image", "jpg", "img", "png", "webp", "jpeg")
CAPTION_COLUMNS = ("text", "caption", "txt", "captions", "sentence")


def _load_hf(name_or_path: str, split: str):
    """Open a dataset lazily: streaming for files and the hub, memory-mapped for save_to_disk folders."""
    import datasets

    if isinstance(name_or_path, (datasets.Dataset, datasets.IterableDataset)):
        return name_or_path
    p = Path(name_or_path)
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise FromageError(f"{p}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return ds
    if p.is_file() and p.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=[str(p)], split="train", streaming=True)
    if p.is_dir():
        parquet = sorted(str(f) for f in p.rglob("*.parquet"))
        if parquet:
            return datasets.load_dataset("parquet", data_files=parquet, split="train", streaming=True)
        return datasets.load_dataset("imagefolder", data_dir=str(p), split=split, streaming=True)
    if p.exists() or str(name_or_path).startswith((".", "/")):
        raise FromageError(f"{name_or_path}: not a dataset folder, parquet file or hub name")
    try:
        return datasets.load_dataset(str(name_or_path), split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds; the user needs one line
        raise FromageError(f"{name_or_path}: cannot open this dataset ({type(e).__name__}: {e})") from None


def _pick_column(features: dict, given: str | None, candidates: tuple, what: str, name: str) -> str:
    if given is not None:
        if given not in features:
            raise FromageError(f"{name}: no column {given!r}; columns are {sorted(features)}")
        return given
    for c in candidates:
        if c in features:
            return c
    raise FromageError(f"{name}: cannot tell which column holds the {what} (columns {sorted(features)}); "
                       f"pass {what}_column=")


def _hf_image_bytes(value) -> bytes:
    """An image cell (``{"bytes", "path"}``, raw bytes, a path, or a PIL image) -> encoded bytes."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if not value:
        raise BadItem("missing_image")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):  # already decoded by a source we could not stop
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    return _read_file(Path(value))


def read_hf_dataset(name_or_path: str, split: str = "train", image_column: str | None = None,
                    caption_column: str | None = None, *, skip_log: SkipLog | None = None,
                    min_size: int = 1) -> Iterator[Sample]:
    """Yield samples from a Hugging Face ``datasets`` dataset.

    ``name_or_path``: a local imagefolder (images + ``metadata.jsonl`` with ``file_name``, ``text``),
    a folder of parquet files or one ``.parquet``, a ``save_to_disk`` folder, a hub name (needs
    internet), or an already opened ``Dataset``/``IterableDataset``. Streams where the format allows
    (a ``save_to_disk`` folder is memory-mapped instead).
    Columns are detected when not given: image from ``image``/``jpg``/..., caption from
    ``text``/``caption``/``txt``/.... Images are decoded here, not by ``datasets``, so a bad image is
    counted and skipped instead of stopping the iteration. Keys are row indices.
    """
    import datasets

    skip_log = SkipLog() if skip_log is None else skip_log
    ds = _load_hf(name_or_path, split)
    features = ds.features
    if features is None:  # a streaming source that only knows its columns after the first row
        features = ds._resolve_features().features
    img_col = _pick_column(features, image_column, IMAGE_COLUMNS, "image", name_or_path)
    cap_col = _pick_column(features, caption_column, CAPTION_COLUMNS, "caption", name_or_path)
    if isinstance(features[img_col], datasets.Image):
        ds = ds.cast_column(img_col, datasets.Image(decode=False))
    return _iter_hf(ds.select_columns([img_col, cap_col]), img_col, cap_col, skip_log, min_size)


def _iter_hf(ds, img_col: str, cap_col: str, skip_log: SkipLog, min_size: int):
    for row, record in enumerate(ds):
        value = record[img_col]
        sample = _make(str(row), record[cap_col], partial(_hf_image_bytes, value), skip_log, min_size)
        if sample is not None:
            yield sample


# ------------------------------------------------------------------------------------------------
# one entry point


def open_reader(spec, **kw) -> Iterator[Sample]:
    """Pick a reader from ``spec`` and return its iterator; ``kw`` goes to the reader.

    ``hf:NAME`` -> :func:`read_hf_dataset`; ``*.tsv`` -> :func:`read_tsv`; ``*.tar``, a glob, a list,
    or a folder holding ``.tar`` files -> :func:`read_webdataset`; a ``.parquet`` file, or a folder
    with parquet files, ``metadata.jsonl`` or a ``save_to_disk`` layout -> :func:`read_hf_dataset`.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return read_webdataset(spec, **kw)
    s = str(spec)
    if s.startswith("hf:"):
        return read_hf_dataset(s[3:], **kw)
    if s.endswith(".tsv"):
        return read_tsv(s, **kw)
    if s.endswith(".tar") or _glob.has_magic(s):
        return read_webdataset(s, **kw)
    p = Path(s)
    if p.is_file() and p.suffix == ".parquet":
        return read_hf_dataset(s, **kw)
    if p.is_dir():
        if any(p.glob("*.tar")):
            return read_webdataset(p, **kw)
        markers = ("metadata.jsonl", "metadata.csv", "dataset_dict.json", "state.json")
        if any((p / m).exists() for m in markers) or any(p.rglob("*.parquet")):
            return read_hf_dataset(s, **kw)
        raise FromageError(f"{p}: folder has no .tar shards, parquet files, metadata.jsonl or saved dataset")
    if not p.exists():
        raise FromageError(f"{s}: not found (give a .tsv, a folder of .tar shards, a glob, "
                           "an imagefolder/parquet folder, or hf:NAME)")
    raise FromageError(f"{s}: unknown data format (give a .tsv, .tar, .parquet, a folder, or hf:NAME)")
