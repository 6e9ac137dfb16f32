"""One item of image–caption data: the :class:`Sample` record, decoding an image fully (or saying why
not), and the :class:`SkipLog` that counts every skipped item under one reason of ``SKIP_REASONS``."""
from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ...files import real_path

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

