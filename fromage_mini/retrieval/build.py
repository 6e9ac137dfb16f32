"""``fromage-mini index build``: a retrieval index over your own images, with a trained model.

    fromage-mini index build --model runs/toy/checkpoints/step_000500 \\
        --data data_samples/shapesworld/images/val --out runs/val_index
    fromage-mini index search --model ... --index runs/val_index "a small red circle at the top left."

``--data`` is a plain folder of images (searched recursively), a FROMAGe TSV, webdataset shards or a
``datasets`` dataset (anything ``fromage_mini.data.open_reader`` reads). Each row stores the model's
image-side retrieval vector and metadata (path or key, caption). The index remembers which model
built it (:func:`model_fingerprint`), and loading it with another model is refused. Image files that
lead outside the data folder (``..``, symlinks) are skipped as ``outside_root`` unless
``--allow-outside-root`` is given.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import FromageError


def model_fingerprint(model) -> str:
    """Hash of what image vectors depend on: the vision tower, its preprocessing and the image head."""
    from ..data.cache import vision_fingerprint

    h = hashlib.sha256(vision_fingerprint(model.vision, model.image_processor, model.config.vision).encode())
    for p in (model.image_head.weight, model.image_head.bias):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_index(model, data: str, out, batch_size: int = 64, progress: bool = True, *,
                allow_outside_root: bool = False):
    """Encode every image of ``data`` with ``model`` and write a :class:`RetrievalIndex` to ``out``.

    Bad images are skipped and counted. No usable image, a folder that cannot be read or an ``out``
    that cannot be written is a one-line :class:`FromageError`, and ``out`` is left as it was. Hidden
    build folders that a killed earlier build left beside ``out`` are removed first.
    """
    from tqdm.auto import tqdm

    from ..data.readers import SkipLog, list_images, open_reader, read_image_folder
    from ..files import os_errors, remove_stale_siblings
    from ..paths import resolve
    from .index import IndexWriter, RetrievalIndex

    data = resolve(data)
    src = Path(data)
    skips = SkipLog()
    model.eval()
    info = {"model": model.config.to_dict(), "data": data, "skips": {}}
    with os_errors("build the index"), tqdm(desc="indexing", unit="img", disable=not progress) as bar:
        is_folder = src.is_dir() and not any(src.glob("*.tar")) and list_images(src)
        read = read_image_folder if is_folder else open_reader
        samples = read(data, skip_log=skips, allow_outside_root=allow_outside_root)
        remove_stale_siblings(out, "building")  # what an IndexWriter killed by SIGKILL left behind
        with IndexWriter(out, dim=model.config.ret_dim, model_fingerprint=model_fingerprint(model),
                         extra_info=info) as writer:
            batch = []

            def flush():
                px = model.preprocess([s.image for s in batch]).to(model.device)
                v = model.encode_images(model.image_features(px)).float().cpu().numpy()
                ok = np.isfinite(v).all(axis=1)
                for s, good in zip(batch, ok):
                    if not good:
                        skips.add("non_finite_feature", s.key)
                writer.add(v[ok], [{"key": s.key, "path": s.path, "caption": s.caption}
                                   for s, good in zip(batch, ok) if good])
                bar.update(len(batch))
                batch.clear()

            for s in samples:
                batch.append(s)
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
            if not len(writer):  # raised inside the with: nothing is written, a previous index stays
                raise FromageError(f"{data}: no usable image to index ({skips}); nothing was written")
            writer.extra_info["skips"] = skips.summary()["counts"]
    if skips.total:
        print(f"skipped {skips.total} images: {skips.summary()['counts']}")
    return RetrievalIndex.load(out)


def load_for(model, folder):
    """Load an index and check it was built with ``model`` (one clear error otherwise)."""
    from .index import RetrievalIndex

    return RetrievalIndex.load(folder, expected_fingerprint=model_fingerprint(model))


def register(sub):
    p = sub.add_parser("index", help="build or query a retrieval index over your own images")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode a folder / TSV / shards / dataset into an index folder")
    b.add_argument("--model", required=True, help="checkpoint folder (save_pretrained) or a training run folder")
    b.add_argument("--data", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--allow-outside-root", action="store_true",
                   help="read image files that lead outside the data folder (.., absolute paths, symlinks)")
    b.set_defaults(func=_build)
    s = isub.add_parser("search", help="text (ending in [RET] or not) -> top-k images")
    s.add_argument("--model", required=True, help="checkpoint folder (save_pretrained) or a training run folder")
    s.add_argument("--index", required=True)
    s.add_argument("-k", type=_positive_int, default=5, help="results to show (at least 1)")
    s.add_argument("text")
    s.set_defaults(func=_search)


def _positive_int(text: str) -> int:
    import argparse

    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _build(a) -> int:
    from ..model import load_model

    idx = build_index(load_model(a.model), a.data, a.out, a.batch_size, allow_outside_root=a.allow_outside_root)
    print(f"index with {len(idx)} images written to {a.out}")
    return 0


def _search(a) -> int:
    from ..infer.scoring import text_vectors
    from ..model import load_model

    model = load_model(a.model)
    idx = load_for(model, a.index)
    if not len(idx):
        raise FromageError(f"{a.index}: the index holds no images, so there is nothing to search; "
                           "build it again from data with images (fromage-mini index build)")
    scores, ids = idx.search(text_vectors(model, [[a.text]]).float().numpy(), k=a.k)
    for s, i in zip(scores[0], ids[0]):
        if i >= 0:
            m = idx.metadata(int(i))
            print(f"{s:7.3f}  {m.get('path') or m.get('key')}  {m.get('caption', '')}".rstrip())
    return 0
