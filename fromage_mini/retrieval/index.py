"""A folder-based, exact nearest-neighbour index over image-side retrieval vectors: open it, read its
metadata, search it.

FROMAGe retrieves images by cosine similarity between the [RET] vector of the text side and the
retrieval vectors of candidate images. The original release shipped those image vectors as one
3 GB pickle; here any user can index their own images into a small, safe folder. The pieces live
beside this file: :mod:`.store` (the folder format and its crash-safe writer), :mod:`.search` (exact
chunked top-k), :mod:`.released` (the released pickle, converted once).
"""
from __future__ import annotations

import itertools
import json
import os
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import FromageError
from ..files import load_numpy, read_json
from . import search as _search
from .released import RELEASED_FROMAGE_FINGERPRINT, write_released_index
from .search import _fp16_matvec_is_accurate
from .store import (
    _REBUILD_HINT,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILES,
    INFO_FILE,
    METADATA_FILE,
    OFFSETS_FILE,
    VECTORS_FILE,
    IndexWriter,
    _npy_header,
    _one_line,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "INDEX_FILES", "RELEASED_FROMAGE_FINGERPRINT", "IndexWriter",
           "RetrievalIndex", "_fp16_matvec_is_accurate", "_npy_header"]


def _load_array(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Memory-map one of the index's .npy files, checking dtype and shape; one-line errors."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise FromageError(f"{path}: cannot open ({e.strerror}); {_REBUILD_HINT}") from None
    if magic != b"\x93NUMPY":  # numpy would call other bytes "pickled data", which misleads
        raise FromageError(f"{path}: not a .npy file (corrupt or overwritten); {_REBUILD_HINT}")
    try:
        a = load_numpy(path, mmap=True)
    except FromageError as e:
        raise FromageError(f"{e}; {_REBUILD_HINT}") from None
    except (OSError, EOFError, ValueError, SyntaxError) as e:
        raise FromageError(f"{path}: truncated or corrupt .npy file ({_one_line(e)}); {_REBUILD_HINT}") from None
    if a.dtype != np.dtype(dtype) or a.shape != shape:
        raise FromageError(f"{path}: holds {a.dtype} {a.shape}, index.json says {np.dtype(dtype)} {shape}; "
                           f"the index is inconsistent, {_REBUILD_HINT}")
    return a


class RetrievalIndex:
    """An exact cosine nearest-neighbour index over L2-normalised fp16 vectors in a folder (an
    :class:`~fromage_mini.infer.tensor_index.ImageIndex`).

    Create with :meth:`build`, :class:`IndexWriter` or :meth:`from_released_pickle`; open with
    :meth:`load`. ``vectors`` is the read-only memory map (N, dim) float16; ``info`` the index.json.
    """

    def __init__(self, folder: Path, info: dict, vectors: np.ndarray, offsets: np.ndarray, metadata_file):
        self.folder, self.info, self.vectors, self._offsets = folder, info, vectors, offsets
        # Held open (like the memory maps), so a loaded index stays one consistent snapshot even if
        # the folder is rebuilt meanwhile. Rows are read with os.pread: no shared file position.
        self._meta_file = metadata_file
        self._close_meta = weakref.finalize(self, metadata_file.close)  # on close(), GC or exit
        self._torch_vectors: torch.Tensor | None = None

    def close(self) -> None:
        """Close the metadata file (the memory maps close when the arrays are garbage-collected)."""
        self._close_meta()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- creating
    @classmethod
    def build(cls, folder: str | os.PathLike, vectors, metadata: Iterable[dict], *, model_fingerprint: str,
              dim: int | None = None, extra_info: dict | None = None, batch_rows: int = 65536) -> RetrievalIndex:
        """Write an index from ``vectors`` and ``metadata`` (one dict per row) and load it.

        ``vectors`` is either one (N, d) array/tensor (written in blocks of ``batch_rows``) or an
        iterable of (d,) rows and/or (n, d) blocks, consumed lazily so that it can stream from a
        model. ``metadata`` is consumed in lock-step; both must have the same length.
        """
        meta_it = iter(metadata)
        if isinstance(vectors, (np.ndarray, torch.Tensor)):
            if vectors.ndim != 2:
                raise FromageError(f"vectors have shape {tuple(vectors.shape)}, expected (N, d)")
            dim = dim if dim is not None else int(vectors.shape[1])
            blocks: Iterator = (vectors[s:s + batch_rows] for s in range(0, vectors.shape[0], batch_rows))
        else:
            blocks = iter(vectors)
            if dim is None:
                first = next(blocks, None)
                if first is None:
                    raise FromageError("build(): no vectors given and no dim to create an empty index with")
                dim = int(np.shape(first)[-1])
                blocks = itertools.chain([first], blocks)
        with IndexWriter(folder, dim=dim, model_fingerprint=model_fingerprint, extra_info=extra_info) as w:
            for block in blocks:
                n = 1 if len(np.shape(block)) == 1 else len(block)  # a (d,) row or an (n, d) block
                metas = list(itertools.islice(meta_it, n))
                if len(metas) < n:
                    raise FromageError(f"build(): metadata ran out after {len(w) + len(metas)} rows")
                w.add(block, metas)
            if next(meta_it, None) is not None:
                raise FromageError(f"build(): more metadata entries than the {len(w)} vectors")
        return cls.load(folder, expected_fingerprint=model_fingerprint)

    @classmethod
    def from_released_pickle(cls, pkl_path: str | os.PathLike | Sequence[str | os.PathLike],
                             out_folder: str | os.PathLike, *, trust_pickle: bool = False,
                             model_fingerprint: str = RELEASED_FROMAGE_FINGERPRINT) -> RetrievalIndex:
        """Convert the released FROMAGe ``cc3m_embeddings.pkl`` (one file or several shards).

        Each file is a pickled dict ``{'paths': [N urls], 'embeddings': (N, 256) array or list of N
        1-D (bf16) tensors}``. Unpickling can run arbitrary code, so this refuses unless
        ``trust_pickle=True``; the result is our pickle-free format, safe to share and load
        (:func:`~.released.write_released_index`).
        """
        write_released_index(pkl_path, out_folder, trust_pickle=trust_pickle, model_fingerprint=model_fingerprint)
        return cls.load(out_folder, expected_fingerprint=model_fingerprint)

    # ---------------------------------------------------------------- opening
    @classmethod
    def load(cls, folder: str | os.PathLike, expected_fingerprint: str | None = None) -> RetrievalIndex:
        """Open an index folder: memory-maps the vectors and offsets, reads no metadata yet.

        Raises a one-line :class:`FromageError` if a file is missing or corrupt, or if
        ``expected_fingerprint`` is given and the index was built with another model.
        """
        folder = Path(folder)
        if not (folder / INFO_FILE).is_file():
            what = "folder not found" if not folder.exists() else f"not an index (no {INFO_FILE})"
            raise FromageError(f"{folder}: {what}; build one with `fromage-mini index build ...`")
        info = read_json(folder / INFO_FILE)
        try:
            if info["format"] != FORMAT:
                raise FromageError(f"{folder / INFO_FILE}: not a {FORMAT} file")
            if int(info["format_version"]) > FORMAT_VERSION:
                raise FromageError(f"{folder / INFO_FILE}: index format version {info['format_version']} is newer "
                                   f"than this fromage_mini supports ({FORMAT_VERSION}); upgrade fromage_mini")
            n, dim, fp = int(info["num_rows"]), int(info["dim"]), str(info["model_fingerprint"])
            if info["dtype"] != "float16":
                raise FromageError(f"{folder / INFO_FILE}: unsupported dtype {info['dtype']!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise FromageError(f"{folder / INFO_FILE}: malformed index description ({_one_line(e)}); "
                               f"{_REBUILD_HINT}") from None
        if expected_fingerprint is not None and fp != expected_fingerprint:
            raise FromageError(f"{folder}: this index was built with another model (fingerprint {fp!r}, current "
                               f"model {expected_fingerprint!r}); its vectors are not comparable, {_REBUILD_HINT}")
        vectors = _load_array(folder / VECTORS_FILE, np.float16, (n, dim))
        offsets = _load_array(folder / OFFSETS_FILE, np.int64, (n + 1,))
        meta = folder / METADATA_FILE
        try:
            f = open(meta, "rb")  # noqa: SIM115 - kept open by the index, closed in close()
        except OSError as e:
            raise FromageError(f"{meta}: cannot open ({e.strerror}); {_REBUILD_HINT}") from None
        size = os.fstat(f.fileno()).st_size
        if offsets[0] != 0 or offsets[-1] != size:
            f.close()
            raise FromageError(f"{meta}: size {size} bytes does not match {OFFSETS_FILE} ({int(offsets[-1])}); "
                               f"truncated or modified, {_REBUILD_HINT}")
        return cls(folder, info, vectors, offsets, f)

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @property
    def model_fingerprint(self) -> str:
        return self.info["model_fingerprint"]

    def __repr__(self) -> str:
        return f"RetrievalIndex({str(self.folder)!r}, rows={len(self)}, dim={self.dim})"

    def metadata(self, i: int) -> dict:
        """Metadata dict of row ``i`` (read from disk on demand)."""
        return self._read_row(i)

    def metadata_many(self, ids) -> list:
        """Metadata of many rows: a 1-D ``ids`` gives a list, a 2-D one (e.g. search ids) a list of
        lists. Id ``-1`` (an empty search slot) gives ``None``."""
        a = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        if a.ndim > 2:
            raise ValueError(f"metadata_many(): ids must be 1-D or 2-D, got shape {a.shape}")
        rows = [None if i == -1 else self._read_row(int(i)) for i in a.reshape(-1)]
        if a.ndim < 2:
            return rows
        c = a.shape[1]
        return [rows[r * c:(r + 1) * c] for r in range(a.shape[0])]

    def _read_row(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for an index of {len(self)} rows")
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        try:
            return json.loads(os.pread(self._meta_file.fileno(), end - start, start))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FromageError(f"{self.folder / METADATA_FILE}: row {i} is not valid JSON ({_one_line(e)}); "
                               f"{_REBUILD_HINT}") from None

    # ---------------------------------------------------------------- searching
    def _tensor(self) -> torch.Tensor:
        """The memory map as a (N, d) fp16 torch tensor (zero copy; torch warns it is read-only)."""
        if self._torch_vectors is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._torch_vectors = torch.from_numpy(self.vectors)
        return self._torch_vectors

    def search(self, queries, k: int = 10, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` rows by cosine similarity (:func:`~.search.search`), as every image index
        searches (:class:`~fromage_mini.infer.tensor_index.ImageIndex` says what ``k`` and ``exclude`` mean).

        Args:
            queries: (d,) or (n, d) numpy array or torch tensor (any float dtype); normalised here.
            k: results per query (at least 1), capped at ``len(self)``.
            exclude: row ids never to return (e.g. images already in the context), for every query or
                one list per query.
        Returns:
            ``(scores, ids)``: (n, k) float32 cosine similarities, best first, and (n, k) int64 row
            ids (numpy); slots that exclusions leave empty hold -inf and -1.
        """
        return _search.search(self._tensor, len(self), self.dim, queries, k, exclude)
