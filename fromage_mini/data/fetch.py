"""Optional, bounded image fetching by URL.

Nothing in fromage_mini touches the network unless asked: retrieval results whose metadata holds a
URL are returned as URLs. When a user opts in (``chat --fetch-urls``), :func:`fetch_image` downloads
with a timeout, a size limit and a content-type check, and reports failures instead of raising.
"""
from __future__ import annotations

import io
import urllib.error
import urllib.request
from dataclasses import dataclass

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")


@dataclass
class Fetched:
    url: str
    image: object | None  # PIL.Image (RGB) on success
    error: str | None  # one-line reason on failure


def fetch_image(url: str, timeout: float = 5.0, max_bytes: int = 10 * 2**20,
                allowed_types: tuple[str, ...] = IMAGE_TYPES) -> Fetched:
    """Download one image; never raises for network or content problems (see ``Fetched.error``)."""
    from PIL import Image

    if not url.startswith(("http://", "https://")):
        return Fetched(url, None, "not an http(s) URL")
    req = urllib.request.Request(url, headers={"User-Agent": "fromage-mini"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype not in allowed_types:
                return Fetched(url, None, f"content type {ctype or 'missing'!r} is not an image type")
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                return Fetched(url, None, f"{int(length)} bytes exceeds the {max_bytes}-byte limit")
            data = r.read(max_bytes + 1)
        if len(data) > max_bytes:
            return Fetched(url, None, f"more than {max_bytes} bytes")
        img = Image.open(io.BytesIO(data))
        img.load()
        return Fetched(url, img.convert("RGB"), None)
    except urllib.error.HTTPError as e:
        return Fetched(url, None, f"HTTP {e.code}")
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return Fetched(url, None, f"{type(e).__name__}: {reason}")
    except Exception as e:  # a broken image file, PIL's decompression-bomb error, ...
        return Fetched(url, None, f"{type(e).__name__}: {e}")
