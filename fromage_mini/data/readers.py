"""Streaming readers for image–caption data, in the forms users already have.

Every reader yields :class:`Sample` records (key, caption, RGB image) one at a time, in a fixed
order, without loading the dataset into memory:

    read_tsv(path)                the original FROMAGe TSV (``caption<TAB>image`` header row)
    read_image_folder(folder)     a plain folder of images (no captions), e.g. for a retrieval index
    read_webdataset(shards)       img2dataset-style ``.tar`` shards (``{key}.jpg`` + ``{key}.txt``)
    read_hf_dataset(name)         a Hugging Face ``datasets`` dataset (imagefolder, parquet, on disk, hub)
    open_reader(spec)             picks one of the above from a path or ``hf:NAME``
    read_images(spec, keys)       the images of a few rows, by key (for a gallery of results)

Bad data is **skipped and counted, never replaced**: the original FROMAGe loader caught any error and
returned a random other item, which hides broken data and changes what the model sees. Here each
skipped item is recorded in a :class:`SkipLog` under one reason (see ``SKIP_REASONS``) and logged at
DEBUG level. Mistakes in what the user asked for (a missing TSV, a missing header column, no shards
found, an unreadable folder) raise :class:`~fromage_mini.errors.FromageError` instead: those are errors,
not bad items. Every TSV/CSV row in the package is parsed by :func:`read_table`, and every image file
named by the data is read by :func:`read_image_file`, which refuses paths leading outside the data
folder unless the reader is given ``allow_outside_root=True``.
"""
from __future__ import annotations

import csv
import glob as _glob
import hashlib
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
from ..files import os_errors, real_path
from .images import IMAGE_EXTENSIONS, IMAGE_SUFFIXES

log = logging.getLogger("fromage_mini.data")

SKIP_REASONS = {
    "missing_file": "the image file named in the TSV does not exist",
    "unreadable": "the image file or shard exists but cannot be read (permissions, I/O error)",
    "outside_root": "the image path leads outside the data folder (.., an absolute path or a symlink); "
                    "pass allow_outside_root=True to read it",
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
    "non_finite_feature": "the model gave NaN or inf for the image (a broken image or tower)",
}

CAPTION_EXTENSIONS = ("txt", "caption")


@dataclass
class Sample:
    """One image–caption pair.

    key: a stable id, unique within the source (TSV data-row index counted from 0, webdataset
    ``__key__``, or dataset row index); caption: stripped text; image: decoded, in RGB mode;
    path: the image file's absolute path when it came from one (TSV, image folder), else None.
    """

    key: str
    caption: str
    image: Image.Image
    path: str | None = None


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


def is_inside(path, root) -> bool:
    """Whether ``path`` (``..`` and symlinks followed, a loop never raising) lies inside the folder ``root``."""
    return real_path(path).is_relative_to(real_path(root))


def read_image_file(path, root=None) -> bytes:
    """The bytes of an image file, or :class:`BadItem`: ``missing_file``, ``unreadable`` (permissions,
    I/O error), or ``outside_root`` if ``root`` is given and ``path`` leads outside it (then the file is
    not opened)."""
    path = Path(path)
    if root is not None and not is_inside(path, root):
        raise BadItem("outside_root", f"{path} -> {real_path(path)}")
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadItem("missing_file", str(path)) from None
    except OSError as e:
        raise BadItem("unreadable", f"{path}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------
# the original FROMAGe TSV


def split_row(line: str, delimiter: str = "\t") -> list[str]:
    """One decoded TSV/CSV line -> its fields. The one row parser: training, index build and eval.

    A row is always one line: a quote never joins lines or hides a delimiter, so a bad row cannot
    shift the rows after it. TSV: split at every tab; a field wholly wrapped in double quotes is
    unquoted (``"a 5"" disk"`` -> ``a 5" disk``, as pandas and ``csv.writer`` write it), any other
    quote is a literal character. CSV: quoted as the csv module reads it, within the line. A CR inside
    the line becomes a space. A CSV line the csv module rejects gives ``[]``.
    """
    line = line.rstrip("\r\n").replace("\r", " ")
    if delimiter == "\t":
        return [_unquote(f) for f in line.split("\t")]
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:  # e.g. a field over csv.field_size_limit()
        return []


def _unquote(field: str) -> str:
    if len(field) > 1 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def read_table(path, *, skip_log: SkipLog | None = None,
               columns: tuple[str, ...] = ("caption", "image")) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(key, {column: field})`` for each data row of a TSV (a ``.csv`` file: comma-separated)
    whose header row names ``columns`` (other columns are kept too). Rows are split by :func:`split_row`.

    Keys are data-row indices counted from 0 (file line = key + 2). Each line is decoded on its own, so a
    non-UTF-8 line is skipped as ``non_utf8``; a line without one field per header column as
    ``malformed_row``. A UTF-8 BOM before the header is ignored. A missing or unreadable file or a bad
    header is a :class:`FromageError` now, not at the first ``next()``.
    """
    path = Path(path)
    skip_log = SkipLog() if skip_log is None else skip_log
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    if not path.is_file():
        raise FromageError(f"{path}: {'CSV' if delimiter == ',' else 'TSV'} file not found; check the path")
    with os_errors("read it"), open(path, "rb") as f:
        header = _table_header(path, f.readline(), columns, delimiter)
    return _iter_table(path, header, delimiter, skip_log)


def _iter_table(path: Path, header: list[str], delimiter: str, skip_log: SkipLog):
    with os_errors("read it"), open(path, "rb") as f:
        f.readline()
        for row, raw in enumerate(f):
            key = str(row)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skip_log.add("non_utf8", key, str(e))
                continue
            fields = split_row(line, delimiter)
            if len(fields) != len(header):
                skip_log.add("malformed_row", key, f"{len(fields)} fields, header has {len(header)}")
                continue
            yield key, dict(zip(header, fields))


def _table_header(path: Path, raw: bytes, columns: tuple[str, ...], delimiter: str) -> list[str]:
    sep = "tab" if delimiter == "\t" else "comma"
    want = " and ".join(repr(c) for c in columns)
    try:
        header = [h.strip() for h in split_row(raw.decode("utf-8-sig"), delimiter)]
    except UnicodeDecodeError:
        raise FromageError(f"{path}: the header row is not UTF-8 text; "
                           f"the first line must name {sep}-separated columns {want}") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise FromageError(f"{path}: header row {header} lacks column(s) {missing}; "
                           f"the first line must name {sep}-separated columns {want}")
    return header


def read_tsv(tsv_path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
             skip_log: SkipLog | None = None, min_size: int = 1,
             allow_outside_root: bool = False) -> Iterator[Sample]:
    """Yield samples from a FROMAGe TSV: a header row naming ``caption`` and ``image`` columns
    (others are ignored), then one tab-separated row per pair, parsed by :func:`read_table`.

    Image paths are relative to ``image_root`` (default: the TSV's folder). A path that leads outside
    that folder (``..``, an absolute path, a symlink to elsewhere) is skipped as ``outside_root``
    unless ``allow_outside_root``. Keys are data-row indices counted from 0 (file line = key + 2).
    """
    tsv_path = Path(tsv_path)
    skip_log = SkipLog() if skip_log is None else skip_log
    rows = read_table(tsv_path, skip_log=skip_log)
    root = Path(image_root) if image_root is not None else tsv_path.parent
    return _iter_tsv(rows, root, skip_log, min_size, None if allow_outside_root else root)


def _iter_tsv(rows, root: Path, skip_log: SkipLog, min_size: int, inside: Path | None):
    for key, row in rows:
        path = root / row["image"]
        sample = _make(key, row["caption"], partial(read_image_file, path, inside), skip_log, min_size)
        if sample is not None:
            sample.path = str(real_path(path))
            yield sample


# ------------------------------------------------------------------------------------------------
# a plain folder of images


def _cannot_list(e: OSError):
    raise FromageError(f"{e.filename}: cannot list this folder ({e.strerror or e})")


def _check_listable(folder: Path) -> None:
    try:
        with os.scandir(folder):
            pass
    except OSError as e:
        _cannot_list(e)


def list_images(folder) -> list[Path]:
    """The image files (a suffix of ``IMAGE_SUFFIXES``, any case) in a folder tree, sorted.

    Symlinked sub-folders are not entered. A folder that cannot be listed is a :class:`FromageError`.
    """
    out = []
    for d, _, files in os.walk(folder, onerror=_cannot_list):
        out += [Path(d, f) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out)


def read_image_folder(folder, *, skip_log: SkipLog | None = None, min_size: int = 1,
                      allow_outside_root: bool = False) -> Iterator[Sample]:
    """Yield the images of :func:`list_images` as samples with an empty caption, key = the path
    relative to ``folder``. A file that leads outside the folder (a symlink to elsewhere) is skipped
    as ``outside_root`` unless ``allow_outside_root``. The folder is listed now."""
    folder = Path(folder)
    skip_log = SkipLog() if skip_log is None else skip_log
    paths = list_images(folder)
    return _iter_folder(folder, paths, skip_log, min_size, None if allow_outside_root else folder)


def _iter_folder(folder: Path, paths: list[Path], skip_log: SkipLog, min_size: int, inside: Path | None):
    for path in paths:
        key = str(path.relative_to(folder))
        try:
            image = decode_image(read_image_file(path, inside), min_size)
        except BadItem as e:
            skip_log.add(e.reason, key, str(e))
            continue
        yield Sample(key, "", image, str(real_path(path)))


# ------------------------------------------------------------------------------------------------
# webdataset tar shards (img2dataset layout), read with tarfile in stream mode


def list_shards(shards: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Resolve a glob, a folder (its ``*.tar``), one ``.tar`` path, or a list of paths to sorted shards."""
    if isinstance(shards, (str, os.PathLike)):
        s = str(shards)
        if os.path.isdir(s):
            _check_listable(Path(s))
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
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        skip_log.add("unreadable", str(path), e.strerror or str(e))
        return
    with raw:
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
    return read_image_file(value)


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


def open_reader(spec, *, allow_outside_root: bool = False, **kw) -> Iterator[Sample]:
    """Pick a reader from ``spec`` and return its iterator; ``kw`` goes to the reader.

    ``hf:NAME`` -> :func:`read_hf_dataset`; ``*.tsv`` -> :func:`read_tsv`; ``*.tar``, a glob, a list,
    or a folder holding ``.tar`` files -> :func:`read_webdataset`; a ``.parquet`` file, or a folder
    with parquet files, ``metadata.jsonl`` or a ``save_to_disk`` layout -> :func:`read_hf_dataset`.
    ``allow_outside_root`` goes to :func:`read_tsv` (the only reader that follows paths in the data).
    """
    if not isinstance(spec, (str, os.PathLike)):
        return read_webdataset(spec, **kw)
    s = str(spec)
    if s.startswith("hf:"):
        return read_hf_dataset(s[3:], **kw)
    if s.endswith(".tsv"):
        return read_tsv(s, allow_outside_root=allow_outside_root, **kw)
    if s.endswith(".tar") or _glob.has_magic(s):
        return read_webdataset(s, **kw)
    p = Path(s)
    if p.is_file() and p.suffix == ".parquet":
        return read_hf_dataset(s, **kw)
    if p.is_dir():
        _check_listable(p)
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


def read_images(spec, keys, *, image_root=None, allow_outside_root: bool = False,
                max_scan: int = 2000) -> dict[str, Image.Image]:
    """The RGB images of the rows ``keys`` of a source (keys as its reader gives them) -> ``{key: image}``.

    A TSV is read by key: only its lines are scanned and only the wanted images opened, so any
    row is cheap. Other sources (shards, datasets) only stream: they are read in order until every
    key is found or ``max_scan`` samples have gone by. Keys not found, or whose image is bad, are
    absent from the result; nothing is counted or raised for them.
    """
    wanted, out = {str(k) for k in keys}, {}
    if not wanted:
        return out
    s = str(spec)
    if s.endswith(".tsv"):
        root = Path(image_root) if image_root is not None else Path(s).parent
        for key, row in read_table(s):
            if key in wanted:
                try:
                    out[key] = decode_image(read_image_file(root / row["image"], None if allow_outside_root else root))
                except BadItem:
                    pass
                if len(out) == len(wanted):
                    break
        return out
    for n, sample in enumerate(open_reader(spec), 1):
        if sample.key in wanted:
            out[sample.key] = sample.image
        if len(out) == len(wanted) or n >= max_scan:
            break
    return out


def source_fingerprint(spec, *, allow_outside_root: bool = False, image_root=None) -> str:
    """A short hash of what :func:`open_reader` would read from ``spec``; it changes with the data.

    A TSV: its path, size, mtime and bytes, and the path, size and mtime of every image it names. A
    folder, a glob, a shard or a parquet file: the path, size and mtime of each file. ``hf:NAME``: the
    name only. Used to key caches, so an edited caption, an added row or a replaced image is never
    served from an old cache.
    """
    s = str(spec)
    root = None if image_root is None else os.path.abspath(image_root)
    h = hashlib.sha256(repr((os.path.abspath(s), allow_outside_root) + ((root,) if root else ())).encode())
    if s.startswith("hf:"):
        return h.hexdigest()[:16]
    p = Path(s)
    if p.is_dir():
        _check_listable(p)
        files = sorted(Path(d, f) for d, _, fs in os.walk(p, onerror=_cannot_list) for f in fs)
    else:
        files = sorted(Path(f) for f in _glob.glob(s)) if _glob.has_magic(s) else [p]
    for f in files:
        h.update(_identity(f))
    if p.suffix == ".tsv" and p.is_file():
        with os_errors("read it"), open(p, "rb") as f:
            for block in iter(partial(f.read, 1 << 20), b""):
                h.update(block)
        for _, row in read_table(p):
            h.update(_identity(Path(root or p.parent) / row["image"]))
    return h.hexdigest()[:16]


def _identity(path: Path) -> bytes:
    """Path, size and mtime of a file (or why it cannot be stat'ed), as bytes to hash."""
    try:
        st = path.stat()
        return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
    except OSError as e:
        return f"{path}\0{e.errno}\n".encode()
