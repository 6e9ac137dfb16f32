"""``fromage-mini index build``: a retrieval index over your own images, with a trained model.

    fromage-mini index build --model runs/toy/checkpoints/step_000500 \\
        --data data_samples/shapesworld/images/val --out runs/val_index
    fromage-mini index search --model ... --index runs/val_index "a small red circle at the top left."

``--data`` is a plain folder of images (searched recursively), a FROMAGe TSV, webdataset shards or a
``datasets`` dataset (anything ``fromage_mini.data.open_reader`` reads). Each row stores the model's
image-side retrieval vector and metadata (path or key, caption). The index remembers which model
built it (:func:`model_fingerprint`), and loading it with another model is refused.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import torch

from ..data.images import IMAGE_SUFFIXES


def model_fingerprint(model) -> str:
    """Hash of what image vectors depend on: the vision tower, its preprocessing and the image head."""
    from ..data.cache import vision_fingerprint

    h = hashlib.sha256(vision_fingerprint(model.vision, model.image_processor, model.config.vision).encode())
    for p in (model.image_head.weight, model.image_head.bias):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _folder_samples(folder: Path, skip_log):
    """Images in a folder tree (sorted), as records with ``key`` = relative path and no caption."""
    from types import SimpleNamespace

    from ..data.readers import BadItem, decode_image

    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        key = str(path.relative_to(folder))
        try:
            img = decode_image(path.read_bytes())
        except BadItem as e:
            skip_log.add(e.reason, key, str(e))
            continue
        except OSError as e:
            skip_log.add("missing_file", key, str(e))
            continue
        yield SimpleNamespace(key=key, caption="", image=img, path=str(path.resolve()))


def _tsv_paths(tsv: Path) -> dict[str, str]:
    """Row key -> absolute image path for a FROMAGe TSV (keys as the TSV reader numbers rows)."""
    out = {}
    with open(tsv, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, [])
        col = header.index("image") if "image" in header else None
        for i, row in enumerate(rows):
            if col is not None and col < len(row):
                out[str(i)] = str((tsv.parent / row[col]).resolve())
    return out


@torch.no_grad()
def build_index(model, data: str, out, batch_size: int = 64, progress: bool = True):
    """Encode every image of ``data`` with ``model`` and write a :class:`RetrievalIndex` to ``out``."""
    from tqdm.auto import tqdm

    from ..data.readers import SkipLog, open_reader
    from ..paths import resolve
    from .index import IndexWriter, RetrievalIndex

    data = resolve(data)
    src = Path(data)
    skips = SkipLog()
    is_folder = src.is_dir() and not any(src.glob("*.tar")) and any(
        p.suffix.lower() in IMAGE_SUFFIXES for p in src.rglob("*"))
    samples = _folder_samples(src, skips) if is_folder else open_reader(data, skip_log=skips)
    paths = _tsv_paths(src) if src.suffix == ".tsv" else {}
    model.eval()
    info = {"model": model.config.to_dict(), "data": data, "skips": {}}
    bar = tqdm(desc="indexing", unit="img", disable=not progress)
    with IndexWriter(out, dim=model.config.ret_dim, model_fingerprint=model_fingerprint(model),
                     extra_info=info) as writer:
        batch = []

        def flush():
            px = model.preprocess([s.image for s in batch]).to(model.device)
            v = model.encode_images(model.image_features(px)).float().cpu().numpy()
            ok = np.isfinite(v).all(axis=1)
            meta = [{"key": s.key, "path": getattr(s, "path", None) or paths.get(s.key), "caption": s.caption}
                    for s in batch]
            writer.add(v[ok], [m for m, good in zip(meta, ok) if good])
            bar.update(len(batch))
            batch.clear()

        for s in samples:
            batch.append(s)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        writer.extra_info["skips"] = skips.summary()["counts"]
    bar.close()
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
    b.add_argument("--model", required=True, help="checkpoint folder written by save_pretrained")
    b.add_argument("--data", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--batch-size", type=int, default=64)
    b.set_defaults(func=_build)
    s = isub.add_parser("search", help="text (ending in [RET] or not) -> top-k images")
    s.add_argument("--model", required=True)
    s.add_argument("--index", required=True)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("text")
    s.set_defaults(func=_search)


def _build(a) -> int:
    from ..model import load_model

    idx = build_index(load_model(a.model), a.data, a.out, a.batch_size)
    print(f"index with {len(idx)} images written to {a.out}")
    return 0


def _search(a) -> int:
    from ..infer.scoring import text_vectors
    from ..model import load_model

    model = load_model(a.model)
    idx = load_for(model, a.index)
    scores, ids = idx.search(text_vectors(model, [[a.text]]).float().numpy(), k=a.k)
    for s, i in zip(scores[0], ids[0]):
        if i >= 0:
            m = idx.metadata(int(i))
            print(f"{s:7.3f}  {m.get('path') or m.get('key')}  {m.get('caption', '')}".rstrip())
    return 0
