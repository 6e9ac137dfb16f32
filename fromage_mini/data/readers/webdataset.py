"""webdataset ``.tar`` shards in img2dataset's layout, read with ``tarfile`` in stream mode (one sample
in memory at a time); a cut-off shard keeps what was complete."""
from __future__ import annotations

import glob as _glob
import os
import tarfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

from ...errors import FromageError
from ..images import IMAGE_EXTENSIONS
from .folder import _check_listable
from .items import BadItem, Sample, SkipLog, _make

CAPTION_EXTENSIONS = ("txt", "caption")


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

