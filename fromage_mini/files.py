"""Small, safe file helpers shared by the whole package.

Every file we write goes through :func:`atomic_write` (write to a temporary file in the same
folder, fsync, then ``os.replace``), so a crash or SIGKILL leaves either the old or the new
version on disk, never a torn one. Every file we read uses a loader that cannot execute code
(JSON, safetensors, ``np.load(allow_pickle=False)``, ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import FromageError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success make its files durable (fsync) with the
    usual permissions and rename it to ``path``, replacing any folder there. On failure it is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"  # a sibling: same filesystem, atomic rename
    remove_stale_siblings(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~_umask())  # safetensors and mkstemp write 0600 files
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
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
