"""A Hugging Face ``datasets`` dataset (imagefolder, parquet, ``save_to_disk``, hub), streamed where
the format allows; images are decoded here, so a bad one is counted and skipped."""
from __future__ import annotations

import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from PIL import Image

from ...errors import FromageError
from .items import BadItem, Sample, SkipLog, _make, read_image_file

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
    """An image cell (``{"bytes", "path"}``, raw bytes, a path, or a PIL image) -> encoded bytes.

    A path is read as the dataset gives it, with no check that it stays inside any folder."""
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

