"""Image files: the one list of suffixes we read, and opening one as RGB."""
from __future__ import annotations

from ..errors import FromageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")  # in priority order
IMAGE_SUFFIXES = frozenset("." + e for e in IMAGE_EXTENSIONS)
SQUASH = (224, 224)  # the original resized every eval image to this, ignoring its aspect ratio


def load_image(path, squash: bool = False):
    """Open an image file as RGB (``squash``: resize to 224×224 first, as the original did)."""
    from PIL import Image

    try:
        im = Image.open(path)
        if squash:
            im = im.resize(SQUASH)
        return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # the bomb check: > 178M pixels
        raise FromageError(f"{path}: cannot read image ({e})") from None
