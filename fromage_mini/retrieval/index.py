"""A folder-based, exact nearest-neighbour index over image-side retrieval vectors.

FROMAGe retrieves images by cosine similarity between the [RET] vector of the text side and the
retrieval vectors of candidate images. The original release shipped those image vectors as one
3 GB pickle; here any user can index their own images into a small, safe folder::

    my_index/
        index.json              format, version, N, dim, dtype, model fingerprint, extra info
        vectors.npy             (N, dim) float16, every row L2-normalised (memory-mapped at load)
        metadata.jsonl          one JSON object per row, e.g. {"path": ..., "url": ..., "caption": ...}
        metadata_offsets.npy    (N + 1,) int64 byte offsets: row i is bytes [off[i], off[i+1])

Writing is crash-safe: everything is written into a hidden sibling folder and renamed into place
only once complete, so an interrupted build never leaves a folder that loads as an index, and a
previous complete index in the same place survives until the new one is ready.

Searching is exact (brute force, no approximation in the result) and chunked, so peak extra memory
stays bounded however many rows the index holds. Few queries: a fp16 matrix-vector product over the
memory-mapped rows (PyTorch's CPU kernel accumulates in fp32) picks a small candidate set per
chunk with a safety margin, which is then rescored exactly in fp32. Many queries: each chunk is
converted to fp32 in a small cache-resident buffer and multiplied by all queries at once.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import platform
import secrets
import shutil
import struct
import tempfile
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import FromageError
from ..files import load_numpy, read_json, write_error, write_json

FORMAT = "fromage-mini-index"
FORMAT_VERSION = 1
INFO_FILE = "index.json"
VECTORS_FILE = "vectors.npy"
METADATA_FILE = "metadata.jsonl"
OFFSETS_FILE = "metadata_offsets.npy"
INDEX_FILES = frozenset({INFO_FILE, VECTORS_FILE, METADATA_FILE, OFFSETS_FILE})

#: Fingerprint recorded for indexes converted from the released FROMAGe ``cc3m_embeddings.pkl``
#: (OPT-6.7B + CLIP ViT-L/14 retrieval head of the paper's checkpoint).
RELEASED_FROMAGE_FINGERPRINT = "fromage-release:opt-6.7b+clip-vit-large-patch14:ret256"

_REBUILD_HINT = "rebuild it with `fromage-mini index build ...`"
_NPY_HEADER_BYTES = 128  # fixed .npy header size, so the header can be rewritten once N is known
# Search tuning, measured with benchmarks/bench_index.py --strategies on a 2-core AVX2 CPU. Fewer, larger
# steps also cope better with a busy machine (every step is a parallel region that waits for all threads).
_FP16_CHUNK_ROWS = 1 << 20  # rows per fp16 mat-vec step (a 2 MB fp16 score buffer)
_CHUNK_ROWS = 1 << 18  # rows per step of the many-query path (score buffer: rows x 64 queries x 4 B)
# Rows converted to fp32 at once in the many-query path: with one thread, small cache-resident steps
# (4 MB) are fastest; with several, each step's thread synchronisation costs more than the cache
# misses of 16 MB steps (much more when other processes compete for the cores).
_SUB_ROWS: int | None = None  # None: 4096 rows with one torch thread, 16384 with more
_FP16_MAX_QUERIES = 4  # up to this many queries use the fp16 mat-vec + exact-rescore path
# fp16 scores differ from exact ones by err <= ~1e-3 (rounding of the query and of each output, each
# <= 2^-11 for unit vectors, with fp32 accumulation). Every row of a chunk's true top-k then has an
# fp16 score >= (k-th fp16 score) - 2 err, so rescoring the rows within this margin is exact.
_FP16_MARGIN = 1.0 / 256
_QUERY_GROUP = 64  # queries scanned together in the many-query path (bounds the score buffer)
_NORM_EPS = 1e-12


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of a float32 (n, d) array in place; all-zero rows stay zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    x /= np.maximum(norms, _NORM_EPS)[:, None]
    return x


def _as_float32_rows(vectors, dim: int | None) -> np.ndarray:
    """Accept a (d,) or (n, d) numpy array / torch tensor / nested list; return float32 (n, d)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    x = np.array(vectors, dtype=np.float32, copy=True)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise FromageError(f"vectors have shape {tuple(x.shape)}, expected {want}")
    if not np.isfinite(x).all():
        raise FromageError("vectors contain NaN or infinite values; check the model that produced them")
    return x


def _npy_header(dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header of exactly ``_NPY_HEADER_BYTES`` bytes (space padded, 64-aligned)."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    body = repr(d).encode("latin1")
    pad = _NPY_HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} too large for a {_NPY_HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", _NPY_HEADER_BYTES - 10) + body + b" " * pad + b"\n"


class _NpyAppender:
    """Append rows to a .npy file whose first dimension is only known at the end."""

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), row_shape, 0
        self.f = open(path, "wb")  # noqa: SIM115 - closed in finish() or IndexWriter.abort()
        self.f.write(_npy_header(self.dtype, (0, *row_shape)))  # placeholder, rewritten in finish()

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        assert a.shape[1:] == self.row_shape, (a.shape, self.row_shape)
        self.f.write(memoryview(a).cast("B"))  # raw C-order bytes, native order as the header's descr says
        self.rows += a.shape[0]

    def finish(self) -> None:
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace anything but a missing folder, an empty one, or a previous index."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FromageError(f"{folder}: exists and is not a folder; choose a new folder for the index")
    other = sorted(p.name for p in folder.iterdir() if p.name not in INDEX_FILES and not p.name.startswith("."))
    if other:
        raise FromageError(f"{folder}: exists and holds files that are not part of an index "
                           f"(e.g. {other[0]!r}); choose an empty or new folder for the index")


def _install(tmp: Path, folder: Path) -> None:
    """Move the complete index folder ``tmp`` to ``folder``, replacing a previous index there."""
    _check_replaceable(folder)
    if folder.exists():
        # Two renames: a crash between them leaves no folder (never a half index); the previous
        # index is then still complete in the hidden ``.<name>.old-*`` sibling.
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    _fsync_dir(folder.parent)


class IndexWriter:
    """Stream rows into a new index; the folder appears (atomically) only when :meth:`close` succeeds.

    Memory use is independent of the number of rows: vectors, metadata and offsets go straight to
    files in a hidden temporary sibling folder. Use as a context manager: an exception inside the
    ``with`` block discards everything written so far and leaves ``folder`` untouched::

        with IndexWriter("my_index", dim=256, model_fingerprint=fp) as w:
            for vecs, metas in batches:        # vecs (n, 256) float, metas list of n dicts
                w.add(vecs, metas)
    """

    def __init__(self, folder: str | os.PathLike, *, dim: int, model_fingerprint: str,
                 extra_info: dict | None = None):
        self.folder = Path(folder)
        self.dim, self.model_fingerprint = int(dim), str(model_fingerprint)
        self.extra_info = dict(extra_info or {})
        try:
            json.dumps(self.extra_info, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise FromageError(f"extra_info is not JSON-serialisable ({_one_line(e)})") from None
        _check_replaceable(self.folder)  # fail before doing any work
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # os.mkdir (unlike mkdtemp) honours the umask, so the index gets the user's usual permissions
        self._tmp = self.folder.parent / f".{self.folder.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(self._tmp)
        self._closed = False
        with self._failing_aborts():
            self._vectors = _NpyAppender(self._tmp / VECTORS_FILE, np.float16, (self.dim,))
            self._offsets = _NpyAppender(self._tmp / OFFSETS_FILE, np.int64, ())
            self._offsets.append(np.zeros(1, np.int64))
            self._meta = open(self._tmp / METADATA_FILE, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._pos = 0  # bytes written to metadata.jsonl

    @contextlib.contextmanager
    def _failing_aborts(self):
        """Any failure in the block discards the build; an OSError (a full disk, ...) becomes one line."""
        try:
            yield
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                raise write_error(e, self.folder) from None
            raise

    def __len__(self) -> int:
        return self._vectors.rows

    def add(self, vectors, metadata: Sequence[dict]) -> None:
        """Append rows: ``vectors`` (n, dim) or (dim,) float; ``metadata`` a list of n JSON-able dicts."""
        if self._closed:
            raise FromageError(f"{self.folder}: index writer is already closed")
        x = _normalise_rows(_as_float32_rows(vectors, self.dim))  # (n, dim) float32, unit rows
        metadata = list(metadata)
        if len(metadata) != x.shape[0]:
            raise FromageError(f"add(): {x.shape[0]} vectors but {len(metadata)} metadata entries")
        lines = []
        for i, m in enumerate(metadata):
            if not isinstance(m, dict):
                raise FromageError(f"add(): metadata entry {i} is a {type(m).__name__}, expected a dict")
            try:
                s = json.dumps(m, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as e:
                raise FromageError(f"add(): metadata entry {i} is not JSON-serialisable ({_one_line(e)})") from None
            lines.append(s.encode("utf-8") + b"\n")
        if not lines:
            return
        ends = self._pos + np.cumsum([len(b) for b in lines], dtype=np.int64)  # (n,)
        with self._failing_aborts():
            self._vectors.append(x.astype(np.float16))
            self._meta.write(b"".join(lines))
            self._offsets.append(ends)
        self._pos = int(ends[-1])

    def close(self) -> Path:
        """Finish the files, write ``index.json`` and move the folder into place. Returns the folder."""
        if self._closed:
            return self.folder
        with self._failing_aborts():
            self._vectors.finish()
            self._offsets.finish()
            self._meta.flush()
            os.fsync(self._meta.fileno())
            self._meta.close()
            from ..version import __version__

            write_json(self._tmp / INFO_FILE, {  # written last: a folder without it is no index
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "num_rows": self._vectors.rows, "dim": self.dim, "dtype": "float16", "normalized": True,
                "model_fingerprint": self.model_fingerprint,
                "created_with": {"package": "fromage_mini", "version": __version__, "numpy": np.__version__,
                                 "torch": torch.__version__, "python": platform.python_version()},
                "extra_info": self.extra_info,
            })
            os.chmod(self._tmp / INFO_FILE, (self._tmp / VECTORS_FILE).stat().st_mode & 0o777)  # not 0600
            _fsync_dir(self._tmp)
            _install(self._tmp, self.folder)
        self._closed = True
        return self.folder

    def abort(self) -> None:
        """Discard everything written; ``folder`` (and any previous index in it) is left as it was."""
        self._closed = True
        for f in (getattr(self, "_vectors", None), getattr(self, "_offsets", None)):
            if f is not None:
                with contextlib.suppress(Exception):
                    f.f.close()
        with contextlib.suppress(Exception):
            self._meta.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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
    """An exact cosine nearest-neighbour index over L2-normalised fp16 vectors in a folder.

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
        ``trust_pickle=True``; the result is our pickle-free format, safe to share and load.
        """
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
        """Exact top-``k`` rows by cosine similarity.

        Args:
            queries: (d,) or (n, d) numpy array or torch tensor (any float dtype); normalised here.
            k: results per query (at least 1), capped at ``len(self)``; an empty index returns no
                columns whatever ``k`` is.
            exclude: row ids never to return (e.g. images already in the context): a list of ints
                applied to every query, or a list of n lists, one per query.
        Returns:
            ``(scores, ids)``: (n, k) float32 cosine similarities, best first, and (n, k) int64 row
            ids. If exclusions leave fewer than ``k`` rows, the empty slots hold -inf and -1.
        """
        q = _normalise_rows(_as_float32_rows(queries, self.dim))  # (n, d) float32
        n, N = q.shape[0], len(self)
        if N and int(k) < 1:
            raise FromageError(f"search(): k must be at least 1 (results per query), got {k}")
        k = min(int(k), N)
        excl = _exclusions(exclude, n)  # n sorted int64 arrays
        scores = np.full((n, k), -np.inf, np.float32)
        ids = np.full((n, k), -1, np.int64)
        if k == 0 or n == 0:
            return scores, ids
        if n <= _FP16_MAX_QUERIES and _fp16_matvec_is_accurate(self.dim):
            for j in range(n):
                scores[j], ids[j] = self._search_fp16(torch.from_numpy(q[j]), k, excl[j])
        else:
            for g in range(0, n, _QUERY_GROUP):
                scores[g:g + _QUERY_GROUP], ids[g:g + _QUERY_GROUP] = self._search_fp32(
                    torch.from_numpy(q[g:g + _QUERY_GROUP]), k, excl[g:g + _QUERY_GROUP])
        return scores, ids

    def _search_fp16(self, q: torch.Tensor, k: int, excl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One query (d,) float32: fp16 mat-vec per chunk, then exact fp32 rescoring of candidates."""
        V, N = self._tensor(), len(self)
        q16 = q.half()
        approx = torch.empty(min(_FP16_CHUNK_ROWS, N), dtype=torch.float16)  # fp16 scores of one chunk
        best_s, best_i = torch.full((k,), -torch.inf), torch.full((k,), -1, dtype=torch.int64)
        for s in range(0, N, _FP16_CHUNK_ROWS):
            e = min(s + _FP16_CHUNK_ROWS, N)
            a = approx[:e - s]
            torch.mv(V[s:e], q16, out=a)  # (m,) fp16, accumulated in fp32
            local = torch.from_numpy(_local(excl, s, e))
            a[local] = -torch.inf
            kth = float(a.topk(min(k, e - s)).values[-1])
            # the chunk's true top-k lies within _FP16_MARGIN of kth (see there); rescore those rows exactly
            cand = torch.nonzero(a > -torch.inf if kth == -np.inf else a >= kth - _FP16_MARGIN).view(-1)
            exact = torch.cat([V[s + c].float() @ q for c in cand.split(4096)]) if len(cand) else q[:0]
            best_s, best_i = _merge(best_s, best_i, exact, cand + s, k)
        return best_s.numpy(), best_i.numpy()

    def _search_fp32(self, q: torch.Tensor, k: int, excl: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Queries (n, d) float32: chunks converted to fp32 in a small buffer, one matmul per chunk."""
        V, N, n = self._tensor(), len(self), q.shape[0]
        sub = _SUB_ROWS or (4096 if torch.get_num_threads() == 1 else 16384)
        qt = q.T.contiguous()  # (d, n)
        buf = torch.empty(min(sub, N), self.dim)  # fp32 copy of a few rows
        sc = torch.empty(min(_CHUNK_ROWS, N), n)  # (rows, n) exact scores of one chunk
        best_s, best_i = torch.full((n, k), -torch.inf), torch.full((n, k), -1, dtype=torch.int64)
        for s in range(0, N, _CHUNK_ROWS):
            e = min(s + _CHUNK_ROWS, N)
            for r in range(s, e, sub):
                t = min(r + sub, e)
                b = buf[:t - r]
                b.copy_(V[r:t])
                torch.mm(b, qt, out=sc[r - s:t - s])
            c = sc[:e - s]
            for j, ex in enumerate(excl):
                c[torch.from_numpy(_local(ex, s, e)), j] = -torch.inf
            top_s, top_i = c.topk(min(k, e - s), dim=0)  # (k', n)
            best_s, best_i = _merge(best_s, best_i, top_s.T, top_i.T + s, k)
        return best_s.numpy(), best_i.numpy()


@functools.cache
def _fp16_matvec_is_accurate(dim: int) -> bool:
    """Check once per process that torch's fp16 mat-vec has the error the fp16 path assumes.

    PyTorch's CPU kernel accumulates in fp32, so the error is ~1e-3 at most; a build that
    accumulated in fp16 would err more, and then every search takes the (exact) fp32 path.
    """
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    rows = torch.randn(4096, dim, generator=g) * torch.linspace(0, 1, 4096)[:, None] + 4 * q  # cosines ~0.2..1
    v = torch.nn.functional.normalize(rows, dim=1).half()
    err = (torch.mv(v, q.half()).float() - v.float() @ q).abs().max()
    return float(err) <= _FP16_MARGIN / 2


def _merge(best_s, best_i, new_s, new_i, k):
    """Keep the k best of the running (..., k) results and new candidates (..., m)."""
    s, i = torch.cat([best_s, new_s], -1), torch.cat([best_i, new_i], -1)
    top_s, j = s.topk(k, dim=-1)
    top_i = i.gather(-1, j)
    top_i[top_s == -torch.inf] = -1  # excluded rows are never returned, even to fill a slot
    return top_s, top_i


def _exclusions(exclude, n: int) -> list[np.ndarray]:
    """Normalise ``exclude`` to n sorted, unique int64 id arrays (one per query)."""
    if exclude is None:
        return [np.empty(0, np.int64)] * n
    if isinstance(exclude, torch.Tensor):
        exclude = exclude.cpu().numpy()
    items = list(exclude)
    per_query = bool(items) and all(isinstance(x, (list, tuple, np.ndarray, torch.Tensor)) for x in items)
    if not per_query:
        return [np.unique(np.asarray(items, dtype=np.int64).reshape(-1))] * n
    if len(items) != n:
        raise FromageError(f"exclude has {len(items)} per-query lists for {n} queries")
    return [np.unique(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.int64).reshape(-1))
            for x in items]


def _local(ids: np.ndarray, s: int, e: int) -> np.ndarray:
    """The sorted ids in [s, e), shifted to chunk-local positions."""
    return ids[np.searchsorted(ids, s):np.searchsorted(ids, e)] - s


def _read_trusted_pickle(path: Path) -> dict:
    import pickle

    warnings.warn(f"{path}: loading a pickle file because trust_pickle=True; pickle can run arbitrary code, "
                  "so only do this for files from a source you trust", UserWarning, stacklevel=3)
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
