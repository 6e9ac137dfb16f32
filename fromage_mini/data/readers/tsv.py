"""The original FROMAGe TSV (and CSV): the one row parser of the package, and the TSV sample reader."""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from ...errors import FromageError
from ...files import os_errors, real_path
from .items import Sample, SkipLog, _make, read_image_file


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

