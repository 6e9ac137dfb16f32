"""Where the shipped samples live, and how names of shipped backbones/data resolve.

Configs and checkpoints refer to shipped assets as ``data_samples/...`` (never an absolute path of
one machine); :func:`resolve` finds them from any working directory.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_SAMPLES = REPO / "data_samples"


def resolve(name: str) -> str:
    """``data_samples/...`` -> the repo's copy when not found relative to the working directory.

    Hub names and other paths are returned unchanged.
    """
    if name and name.startswith("data_samples/") and not Path(name).exists():
        return str(REPO / name)
    return name
