"""One entry point: pick the reader from what the user gives (a path, a glob, ``hf:NAME``), and read
the images of a few rows by key."""
from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ...errors import FromageError
from .folder import _check_listable
from .hf import read_hf_dataset
from .items import BadItem, Sample, decode_image, read_image_file
from .tsv import read_table, read_tsv
from .webdataset import read_webdataset


def open_reader(spec, *, allow_outside_root: bool = False, **kw) -> Iterator[Sample]:
    """Pick a reader from ``spec`` and return its iterator; ``kw`` goes to the reader.

    ``hf:NAME`` -> :func:`read_hf_dataset`; ``*.tsv`` -> :func:`read_tsv`; ``*.tar``, a glob, a list,
    or a folder holding ``.tar`` files -> :func:`read_webdataset`; a ``.parquet`` file, or a folder
    with parquet files, ``metadata.jsonl`` or a ``save_to_disk`` layout -> :func:`read_hf_dataset`.
    ``allow_outside_root`` goes to :func:`read_tsv`, the one reader that checks the paths its data names;
    a dataset's image cells that hold a path are read by :func:`read_hf_dataset` as given, unchecked.
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
