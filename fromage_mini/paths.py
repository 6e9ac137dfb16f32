"""Where things live: the shipped samples, and the caches we write.

Two symbolic prefixes keep configs and checkpoints free of one machine's absolute paths:

``data_samples/...``  the shipped samples (toy backbones, ShapesWorld, trained toy adapters). Found in
                      ``$FROMAGE_MINI_DATA`` if set, else in the installed package (a wheel carries
                      them as ``fromage_mini/data_samples``), else in the source checkout.
``cache:...``         our caches (frozen features, converted backbones), under ``$FROMAGE_MINI_CACHE``
                      if set, else ``$XDG_CACHE_HOME/fromage_mini``, else ``~/.cache/fromage_mini``
                      - never the working directory.

Anything else (hub names, your own paths) is returned unchanged by :func:`resolve`.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SAMPLES_PREFIX = "data_samples/"
CACHE_PREFIX = "cache:"


def data_root() -> Path:
    """The folder holding the shipped samples (it may not exist: :func:`resolve` says what to do)."""
    if os.environ.get("FROMAGE_MINI_DATA"):
        return Path(os.environ["FROMAGE_MINI_DATA"]).expanduser()
    installed = PACKAGE / "data_samples"  # inside a wheel
    return installed if installed.is_dir() else PACKAGE.parent / "data_samples"  # a source checkout


def cache_root() -> Path:
    """The root of every cache fromage_mini writes (created on first use by whoever writes)."""
    if os.environ.get("FROMAGE_MINI_CACHE"):
        return Path(os.environ["FROMAGE_MINI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fromage_mini"


DATA_SAMPLES = data_root()  # where the samples are for this process (read once, at import)


def resolve(name: str) -> str:
    """``data_samples/x`` -> the shipped copy of x; ``cache:x`` -> x under :func:`cache_root`.

    Raises FromageError, in one line, when the shipped samples cannot be found.
    """
    if not name:
        return name
    if name.startswith(CACHE_PREFIX):
        return str(cache_root() / name[len(CACHE_PREFIX):])
    if name.startswith(SAMPLES_PREFIX) or name.rstrip("/") == SAMPLES_PREFIX[:-1]:
        root = data_root()
        if not root.is_dir():
            from .errors import FromageError

            raise FromageError(f"the shipped samples are not at {root}: set FROMAGE_MINI_DATA to a data_samples "
                               "folder (a source checkout has one), or install fromage_mini from a wheel or checkout")
        return str(root / name[len(SAMPLES_PREFIX):])
    return name
