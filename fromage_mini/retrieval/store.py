"""The index folder on disk: its format, the vectors as stored (unit rows), and the crash-safe writer.

    my_index/
        index.json              format, version, N, dim, dtype, model fingerprint, extra info
        vectors.npy             (N, dim) float16, every row L2-normalised (memory-mapped at load)
        metadata.jsonl          one JSON object per row, e.g. {"path": ..., "url": ..., "caption": ...}
        metadata_offsets.npy    (N + 1,) int64 byte offsets: row i is bytes [off[i], off[i+1])

Writing is crash-safe: everything is written into a hidden sibling folder and renamed into place
only once complete, so an interrupted build never leaves a folder that loads as an index, and a
previous complete index in the same place survives until the new one is ready.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import FromageError
from ..files import write_error, write_json

FORMAT = "fromage-mini-index"
FORMAT_VERSION = 1
INFO_FILE = "index.json"
VECTORS_FILE = "vectors.npy"
METADATA_FILE = "metadata.jsonl"
OFFSETS_FILE = "metadata_offsets.npy"
INDEX_FILES = frozenset({INFO_FILE, VECTORS_FILE, METADATA_FILE, OFFSETS_FILE})

_REBUILD_HINT = "rebuild it with `fromage-mini index build ...`"
_NPY_HEADER_BYTES = 128  # fixed .npy header size, so the header can be rewritten once N is known
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
