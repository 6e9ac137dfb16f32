"""The released FROMAGe image embeddings (``cc3m_embeddings.pkl``) converted once into the safe index format.

Each file is a pickled dict ``{'paths': [N urls], 'embeddings': (N, 256) array or list of N 1-D (bf16)
tensors}``. Unpickling can run arbitrary code, so nothing here reads one unless told ``trust_pickle=True``.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import FromageError
from .store import IndexWriter, _one_line

#: Fingerprint recorded for indexes converted from the released FROMAGe ``cc3m_embeddings.pkl``
#: (OPT-6.7B + CLIP ViT-L/14 retrieval head of the paper's checkpoint).
RELEASED_FROMAGE_FINGERPRINT = "fromage-release:opt-6.7b+clip-vit-large-patch14:ret256"


def write_released_index(pkl_path: str | os.PathLike | Sequence[str | os.PathLike], out_folder: str | os.PathLike,
                         *, trust_pickle: bool = False,
                         model_fingerprint: str = RELEASED_FROMAGE_FINGERPRINT) -> Path:
    """Convert the released pickle (one file or several shards) into an index folder at ``out_folder``
    (written by :class:`~.store.IndexWriter`: all or nothing). Refuses unless ``trust_pickle=True``."""
    paths = [Path(pkl_path)] if isinstance(pkl_path, (str, os.PathLike)) else [Path(p) for p in pkl_path]
    if not paths:
        raise FromageError("from_released_pickle(): no pickle files given")
    if not trust_pickle:
        raise FromageError(f"{paths[0]}: refusing to load a pickle file, because unpickling can run arbitrary "
                           "code; if you trust it (e.g. the official FROMAGe cc3m_embeddings.pkl), pass "
                           "trust_pickle=True (CLI: --trust-pickle) to convert it once into the safe index format")
    for p in paths:
        if not p.is_file():
            raise FromageError(f"{p}: file not found")
    writer = None
    try:
        for p in paths:
            d = _read_trusted_pickle(p)
            emb = _released_embeddings(d["embeddings"], p)  # (n, d) float32
            urls = [str(u) for u in d["paths"]]
            if len(urls) != emb.shape[0]:
                raise FromageError(f"{p}: {len(urls)} paths but {emb.shape[0]} embeddings")
            del d
            if not urls:
                continue
            if writer is None:
                writer = IndexWriter(out_folder, dim=emb.shape[1], model_fingerprint=model_fingerprint,
                                     extra_info={"source": "released FROMAGe embeddings pickle",
                                                 "source_files": [q.name for q in paths]})
            for s in range(0, len(urls), 65536):
                writer.add(emb[s:s + 65536], [_released_metadata(u) for u in urls[s:s + 65536]])
        if writer is None:
            raise FromageError(f"{paths[0]}: no embeddings found in {len(paths)} file(s)")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return Path(out_folder)


def _read_trusted_pickle(path: Path) -> dict:
    import pickle

    warnings.warn(f"{path}: loading a pickle file because trust_pickle=True; pickle can run arbitrary code, "
                  "so only do this for files from a source you trust", UserWarning, stacklevel=4)
    try:
        with open(path, "rb") as f:
            d = pickle.load(f)  # unsafe-load-ok: explicit trust flag
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as e:
        raise FromageError(f"{path}: could not unpickle ({_one_line(e)})") from None
    if not isinstance(d, dict) or "paths" not in d or "embeddings" not in d:
        raise FromageError(f"{path}: expected a dict with 'paths' and 'embeddings' (the released FROMAGe format)")
    return d


def _released_metadata(u: str) -> dict:
    return {"url" if u.startswith(("http://", "https://")) else "path": u}


def _released_embeddings(emb, path: Path) -> np.ndarray:
    """(n, d) float32 from a numpy array, a 2-D tensor, or a list of 1-D (bf16) tensors / arrays."""
    def f32(x) -> np.ndarray:
        return x.detach().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)

    if isinstance(emb, (list, tuple)):
        if not emb:
            return np.empty((0, 0), np.float32)
        out = np.empty((len(emb), int(np.prod(f32(emb[0]).shape))), np.float32)
        for i, row in enumerate(emb):
            out[i] = f32(row).reshape(-1)
        return out
    out = f32(emb)
    if out.ndim != 2:
        raise FromageError(f"{path}: embeddings have shape {out.shape}, expected (N, d)")
    return out
