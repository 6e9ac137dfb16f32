"""Images for the evaluations: finding them by id, checking that they decode (bad ones skipped and
counted), computing their features once, and which recall cut-offs a candidate set makes trivial."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data.images import IMAGE_SUFFIXES, SQUASH, load_image
from ..data.readers import BadItem, SkipLog, decode_image, read_image_file
from ..errors import FromageError
from ..infer.modes import inference


def find_images(folder) -> dict[str, Path]:
    """Image files under ``folder`` by id: the file stem, and the number its stem ends with.

    ``VisualDialog_val2018_000000185565.jpg`` is found as ``"185565"``; VIST's ``1234.jpg`` as ``"1234"``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FromageError(f"{folder}: image folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, p)
            m = re.search(r"(\d+)$", p.stem)
            if m:
                found.setdefault(str(int(m.group(1))), p)
    return found


@inference
def compute_features(model, images: Mapping[str, Any], *, squash: bool = False,
                     batch_size: int = 32, progress: bool = False) -> dict[str, torch.Tensor]:
    """{id: PIL / path / feature / (3, H, W) pixels} -> {id: feature} (of shape ``model.feature_shape``), in batches."""
    from tqdm.auto import tqdm

    from ..infer.prompt import to_features

    keys = list(images)
    out: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(keys), desc="image features", unit="img", disable=not progress)
    for s in range(0, len(keys), batch_size):
        chunk = keys[s: s + batch_size]
        items = []
        for k in chunk:
            im = images[k]
            if isinstance(im, (str, Path)):
                im = load_image(im, squash)
            elif squash and not torch.is_tensor(im):
                im = im.resize(SQUASH)
            items.append(im)
        for k, f in zip(chunk, to_features(model, items)):
            out[k] = f
        bar.update(len(chunk))
    bar.close()
    return out



def readable_images(paths, skip_log) -> set[Path]:
    """The files among ``paths`` that decode as images; the others are counted in ``skip_log`` by
    reason (``missing_file``, ``unreadable``, ``empty_file``, ``corrupt_image``, ...), so a bad image
    drops its own item instead of stopping the evaluation. Each file is decoded once here (and again
    when its features are computed)."""
    good = set()
    for p in dict.fromkeys(paths):
        try:
            decode_image(read_image_file(p))
            good.add(p)
        except BadItem as e:
            skip_log.add(e.reason, str(p), str(e))
    return good


def usable_images(images: Mapping[str, Any], skip_log: SkipLog | None) -> dict[str, Any]:
    """``images`` (id -> PIL / path / feature) without the file paths that do not decode, each counted
    in ``skip_log`` by reason (:func:`readable_images`): what the CLI and the library functions both
    use, so a corrupt file drops its own item (a story, a pair, a dialogue) instead of the evaluation."""
    skip_log = SkipLog() if skip_log is None else skip_log
    paths = [Path(v) for v in images.values() if isinstance(v, (str, Path))]
    good = readable_images(paths, skip_log) if paths else set()
    return {k: v for k, v in images.items() if not isinstance(v, (str, Path)) or Path(v) in good}


def trivial_cutoffs(ks, candidates: int) -> dict[str, list[str]]:
    """``{"trivial": ["R@k", ...]}`` for the cut-offs with k >= ``candidates`` (every candidate is then
    within the top k, so R@k is 1 whatever the model does: reported, but marked as no result); {} if none."""
    names = [f"R@{k}" for k in ks if k >= candidates]
    return {"trivial": names} if names else {}


def skip_counts(skip_log: SkipLog) -> dict[str, dict[str, int]]:
    """``{"skips": {reason: n}}`` when ``skip_log`` counted anything, else {} (results stay plain numbers)."""
    return {"skips": skip_log.summary()["counts"]} if skip_log.total else {}
