"""Small, safe file helpers shared by the whole package.

Every file we write goes through :func:`atomic_write` (write to a temporary file in the same
folder, fsync, then ``os.replace``), so a crash or SIGKILL leaves either the old or the new
version on disk, never a torn one; a failed write (a full disk, no permission) removes its
temporary file and is one line (:func:`write_error`), with the old version left in place.
Every file we read uses a loader that cannot execute code (JSON, safetensors,
``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import FromageError


class WriteError(FromageError):
    """A file or folder could not be written (a full disk, no permission); nothing was left half-written.
    ``os_error``: the OSError behind it."""

    def __init__(self, message: str, os_error: OSError):
        super().__init__(message)
        self.os_error = os_error


def write_error(e: OSError | WriteError, path, action: str = "write it") -> WriteError:
    """The one-line error for a failed write: ``PATH: cannot ACTION (No space left on device); nothing
    was written there``, with a hint for the usual causes (a full disk, no permission).

    ``e``: the OSError, or the :class:`WriteError` of a file written inside the folder ``path`` (the
    folder is then named, not the file inside its temporary copy)."""
    inner = isinstance(e, WriteError)
    e = e.os_error if inner else e
    hint = {errno.ENOSPC: "; free some space and run again", errno.EDQUOT: "; free some space and run again",
            errno.EACCES: "; choose a folder you can write to", errno.EPERM: "; choose a folder you can write to",
            errno.EROFS: "; choose a folder you can write to"}.get(e.errno, "")
    tmp = f".{Path(path).name}."  # our temporary file or folder beside ``path``, and what is inside it
    ours = not e.filename or any(part.startswith(tmp) for part in Path(e.filename).parts)
    where = path if inner or ours else e.filename
    return WriteError(f"{where}: cannot {action} ({e.strerror or e}); nothing was written there{hint}", e)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any failure the temporary file is removed and ``path`` keeps its old version (or stays
    absent); an :class:`OSError` (``ENOSPC``, ``EACCES``, ...) becomes :func:`write_error`'s one line."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path) from None
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` (:func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success make its files durable (fsync) with the
    usual permissions and rename it to ``path``, replacing any folder there. On failure it is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"  # a sibling: same filesystem, atomic rename
    try:
        remove_stale_siblings(path, "tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~_umask())  # safetensors and mkstemp write 0600 files
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except (OSError, WriteError) as e:
        raise write_error(e, path) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_siblings(path: str | os.PathLike, kind: str) -> None:
    """Remove the hidden ``.<name>.<kind>-<pid>...`` siblings of ``path`` whose process is gone.

    A build killed by SIGKILL cannot clean up its temporary folder; the next build calls this first.
    Folders of a live process (any user's) are kept.
    """
    path = Path(path)
    prefix = f".{path.name}.{kind}-"
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        pid = p.name[len(prefix):].split("-")[0]
        if p.name.startswith(prefix) and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():  # os.kill(pid, 0) is not a probe on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def os_errors(action: str, path: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn an OSError raised in the block (permissions, a full disk, ...) into a one-line
    :class:`FromageError` naming the path and the cause: ``PATH: cannot ACTION (Permission denied)``."""
    try:
        yield
    except OSError as e:
        where = e.filename or path
        prefix = f"{where}: " if where else ""
        raise FromageError(f"{prefix}cannot {action} ({e.strerror or e})") from None


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with ``..`` and symlinks followed, as far as they lead. Unlike ``Path.resolve()`` on
    Python < 3.13 it never raises for a symlink loop (the loop's own path is returned; opening it then
    fails with ``ELOOP``, which readers count as ``unreadable``)."""
    return Path(os.path.realpath(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a missing or malformed file into a one-line :class:`FromageError`."""
    path = Path(path)
    if not path.exists():
        raise FromageError(f"{path}: file not found")
    try:
        with os_errors("read it", path):
            return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FromageError(f"{path}: not valid JSON ({e}); regenerate or fix the file") from None


def save_numpy(path: str | os.PathLike, array) -> None:
    """Atomically save an array as ``.npy`` (no pickling)."""
    import numpy as np

    with atomic_write(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def load_numpy(path: str | os.PathLike, mmap: bool = True):
    """Load an ``.npy`` file memory-mapped, refusing pickled object arrays."""
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise FromageError(f"{path}: file not found")
    try:
        with os_errors("read it", path):
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise FromageError(f"{path}: not a plain .npy array ({e})") from None
