"""A plain folder of images (no captions), e.g. for a retrieval index; and listing folders with one-line errors."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import FromageError
from ...files import real_path
from ..images import IMAGE_SUFFIXES
from .items import BadItem, Sample, SkipLog, decode_image, read_image_file


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

