"""Frozen-feature cache: each image's vision feature computed once, stored memory-mapped.

With a frozen vision tower the image side of FROMAGe only ever needs one feature per image (the
pooled vector; with a grid prefix, the pooled vector and the grid cells), so we compute it once and
train from the cache (the original ran CLIP twice per step and decoded every JPEG every epoch).
Layout of a cache folder:

    index.json            fingerprint, dim, feature shape, shard list, skip counts, complete flag
    feat_00000.npy        (n, *F) float16 features of shard 0: F = the model's ``feature_shape``
    meta_00000.json       {"keys": [...], "captions": [...]} for the same rows

A shard is listed in ``index.json`` only after both its files are on disk (each written
atomically), so an interrupted build resumes at the first missing shard and never reads a torn
file. :func:`source_fingerprint` keys a split's cache on the data it was read from.

The cache sits below the model layer: it uses a model only through :class:`FeatureSource`, the
members listed there (a :class:`~fromage_mini.model.fromage.Fromage` has them all).
"""
from __future__ import annotations

import glob as _glob
import hashlib
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..config import FromageConfig
from ..errors import FromageError
from ..files import WriteError, load_numpy, os_errors, read_json, save_numpy, write_error, write_json

FORMAT = 1


class NoSamplesError(FromageError):
    """A cache build found no usable sample; nothing was cached."""


@runtime_checkable
class FeatureSource(Protocol):
    """What the feature cache uses of a model, all of it (nothing else of the model is read here).

    ``config.vision`` and ``config.feature_kind`` (the tower's name, what one image's feature is),
    ``vision`` and ``image_processor`` (the frozen tower and its preprocessing) make the cache's
    fingerprint; ``vis_dim`` (D) and ``feature_shape`` (F, one image's feature, the model's own notion
    of it) are recorded and checked; ``preprocess`` and ``image_features`` turn images into (B, *F)
    features on ``device``.
    """

    config: FromageConfig
    vision: torch.nn.Module
    image_processor: Any
    vis_dim: int
    device: torch.device

    @property
    def feature_shape(self) -> tuple[int, ...]: ...

    def preprocess(self, images) -> torch.Tensor: ...

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor: ...


def vision_fingerprint(vision, image_processor, name: str = "") -> str:
    """A short hash of (tower name, tower config, weights summary, preprocessing)."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(vision.config.to_json_string(use_diff=True).encode())
    if image_processor is not None:
        h.update(image_processor.to_json_string().encode())
    with torch.no_grad():
        for n, p in vision.named_parameters():
            if not p.is_meta:
                h.update(n.encode())
                h.update(np.float64(p.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def feature_fingerprint(model: FeatureSource) -> str:
    """:func:`vision_fingerprint` of the model's tower plus what is cached per image (pooled, or
    pooled + grid of a given size and layer), so a pooled cache is never read as a grid one."""
    cfg = model.config
    name = cfg.vision if cfg.feature_kind == "pooled" else f"{cfg.vision}|{cfg.feature_kind}"
    return vision_fingerprint(model.vision, model.image_processor, name)


class FeatureCache:
    """Read access to a finished (or partial) cache: ``features[i]`` and ``captions[i]``."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.info = read_json(self.folder / "index.json")
        if self.info.get("format") != FORMAT:
            raise FromageError(f"{self.folder}/index.json: unknown cache format; rebuild the cache")
        self._feats, self.captions, self.keys = [], [], []
        for s in self.info["shards"]:
            arr = load_numpy(self.folder / s["features"])
            meta = read_json(self.folder / s["meta"])
            if arr.shape != (s["n"], *self.shape) or len(meta["captions"]) != s["n"]:
                raise FromageError(f"{self.folder / s['features']}: shape {arr.shape} does not match the index; "
                                   "delete the cache folder to rebuild it")
            self._feats.append(arr)
            self.captions += meta["captions"]
            self.keys += meta["keys"]
        sizes = [len(a) for a in self._feats]
        self._starts = np.cumsum([0] + sizes)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def shape(self) -> tuple[int, ...]:
        """One row's feature shape F, as stored: the building model's ``feature_shape`` ((D,) in caches
        older than the record)."""
        return tuple(self.info.get("shape", [self.dim]))

    def features(self, idx) -> torch.Tensor:
        """Rows ``idx`` (ints) -> (n, *shape) float32 tensor, read from the memory-mapped shards."""
        idx = np.asarray(idx, dtype=np.int64)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._feats[s][idx[sel] - self._starts[s]]
        return torch.from_numpy(out)

    def all_features(self) -> torch.Tensor:
        return self.features(np.arange(len(self)))

    def non_finite_rows(self, chunk: int = 65536) -> int:
        """How many rows hold NaN or inf. A build never stores one, so any is a damaged file."""
        bad = 0
        for arr in self._feats:
            for i in range(0, len(arr), chunk):
                part = np.asarray(arr[i: i + chunk]).reshape(min(chunk, len(arr) - i), -1)
                bad += int((~np.isfinite(part).all(axis=1)).sum())
        return bad


def build_cache(folder, samples, model: FeatureSource, *, batch_size: int = 64, shard_size: int = 4096,
                skip_log=None, progress: bool = True, total: int | None = None,
                device: str | torch.device | None = None) -> FeatureCache:
    """Compute each sample's image feature (``model.image_features``, of shape ``model.feature_shape``)
    with ``model``'s frozen vision tower, and store them in ``folder``. ``samples``: an iterable of
    records with ``.key``, ``.caption``, ``.image``.

    Resumable: shards already listed in ``folder/index.json`` are skipped (their samples are
    still read from ``samples`` to keep the order). A finished cache is returned as is.
    Features with NaN or inf (a broken image or tower) are skipped and counted, never stored.
    A build that stored no row is never marked complete: ``folder`` is removed and
    :class:`NoSamplesError` raised, so fixing the data and building again gives the right cache.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    fp = feature_fingerprint(model)
    info = {"format": FORMAT, "fingerprint": fp, "vision": model.config.vision, "dim": model.vis_dim,
            "features": model.config.feature_kind, "shards": [], "complete": False,
            "skips": {}}
    if (folder / "index.json").exists():
        old = read_json(folder / "index.json")
        if old.get("fingerprint") != fp:
            raise FromageError(f"{folder}: cache was built with another vision model or preprocessing "
                               f"({old.get('vision')}); use a new cache folder or delete this one")
        if old.get("complete"):
            return FeatureCache(folder)
        info = old
    done_rows = info.get("consumed", 0)  # samples read up to the end of the last stored shard
    bar = tqdm(total=total, desc="caching features", unit="img", disable=not progress, smoothing=0.1)
    bar.update(done_rows)
    w = _ShardWriter(folder, info, model, device or model.device, bar)
    t0 = time.time()
    for s in samples:
        w.seen += 1
        if w.seen <= done_rows:  # already cached in an earlier, interrupted run
            continue
        w.imgs.append(s.image)
        w.pending_meta.append((s.key, s.caption))
        if len(w.imgs) == batch_size:
            w.flush_batch()
            if sum(len(x) for x in w.feats) >= shard_size:
                w.flush_shard()
    w.flush_batch()
    w.flush_shard()
    bar.close()
    return _finish(folder, info, skip_log, w.bad_feature, t0)


class _ShardWriter:
    """Images -> features a batch at a time, buffered into shards that land on disk one at a time."""

    def __init__(self, folder: Path, info: dict, model, device, bar):
        self.folder, self.info, self.model, self.device, self.bar = folder, info, model, device, bar
        self.feats, self.keys, self.caps = [], [], []  # the shard being filled: (b, *F) arrays, its rows' meta
        self.imgs, self.pending_meta = [], []  # the batch being filled: images, (key, caption)
        self.bad_feature = 0  # rows whose feature held NaN or inf (never stored)
        self.seen = 0  # samples read so far, stored or not

    def flush_batch(self) -> None:
        if not self.imgs:
            return
        px = self.model.preprocess(self.imgs).to(self.device)
        f = self.model.image_features(px).cpu()  # (B, *F)
        shape = tuple(self.model.feature_shape)
        if tuple(f.shape[1:]) != shape:
            raise FromageError(f"image_features gave {tuple(f.shape[1:])} per image, the model's feature_shape "
                               f"says {shape}")
        self.info["shape"] = list(shape)
        ok = torch.isfinite(f.flatten(1)).all(dim=1)
        self.bad_feature += int((~ok).sum())
        self.feats.append(f[ok].half().numpy())
        for (k, c), good in zip(self.pending_meta, ok.tolist()):
            if good:
                self.keys.append(k)
                self.caps.append(c)
        self.bar.update(len(self.imgs))
        self.imgs.clear()
        self.pending_meta.clear()

    def flush_shard(self) -> None:
        if not self.keys:
            return
        arr = np.concatenate(self.feats)  # (n, *F)
        info, i = self.info, len(self.info["shards"])
        save_numpy(self.folder / f"feat_{i:05d}.npy", arr)
        write_json(self.folder / f"meta_{i:05d}.json", {"keys": list(self.keys), "captions": list(self.caps)})
        info["shards"].append({"features": f"feat_{i:05d}.npy", "meta": f"meta_{i:05d}.json", "n": len(self.keys)})
        info["consumed"] = self.seen
        write_json(self.folder / "index.json", info)  # the shard counts only once this lands
        self.feats.clear(), self.keys.clear(), self.caps.clear()


def _finish(folder: Path, info: dict, skip_log, bad_feature: int, t0: float) -> FeatureCache:
    """Record the skips and mark the cache complete; a build that stored no row removes ``folder``."""
    summary = skip_log.summary() if skip_log is not None else {"counts": {}, "examples": {}}
    skips = dict(summary["counts"])  # reason -> count, e.g. {"corrupt_image": 3}
    if bad_feature:
        skips["non_finite_feature"] = skips.get("non_finite_feature", 0) + bad_feature
    if not info["shards"]:
        shutil.rmtree(folder, ignore_errors=True)
        why = ", ".join(f"{r}={n}" for r, n in sorted(skips.items())) or "the data has no rows"
        raise NoSamplesError(f"no usable samples ({why}); nothing was cached")
    info["skips"] = skips
    info["skip_examples"] = summary.get("examples", {})
    info["complete"] = True
    info["build_seconds"] = round(time.time() - t0, 2)
    write_json(folder / "index.json", info)
    return FeatureCache(folder)


def cached_split(model: FeatureSource, spec: str, cache_root, split: str, log=print, *,
                 allow_outside_root: bool = False, image_root=None) -> FeatureCache:
    """Features for one split, computed on first use and reused while the data is unchanged.

    The cache folder is keyed on the vision fingerprint and on the data's content
    (:func:`source_fingerprint`: file bytes, sizes and mtimes, and those of
    every image a TSV names), so an edited caption, an added row or a replaced image builds a new
    cache. ``allow_outside_root`` and ``image_root`` (the folder a TSV's image paths are relative to;
    default the TSV's own) go to the TSV reader. No usable sample, or a cache folder that
    cannot be written, is a one-line :class:`FromageError`; a failed write (a full disk) removes the
    half-built cache. NaN or inf rows in a finished cache (a damaged file: a build never stores one)
    are said in one log line; the trainer leaves them out and counts them, never uses them.
    """
    from ..paths import resolve
    from .readers import SkipLog, open_reader

    if not spec:
        raise FromageError(f"no {split} data given (set {split}_data)")
    spec = resolve(spec)
    fp = feature_fingerprint(model)
    image_root = resolve(str(image_root)) if image_root else None  # one resolved folder for the key and the reader
    data_key = source_fingerprint(spec, allow_outside_root=allow_outside_root, image_root=image_root)
    folder = Path(resolve(str(cache_root))) / fp / f"{split}-{Path(spec.rstrip('/')).stem[:40]}-{data_key}"
    skips = SkipLog()
    with os_errors("build the feature cache"):
        if (folder / "index.json").exists() and read_json(folder / "index.json").get("complete"):
            cache = FeatureCache(folder)
            if cache.shape != tuple(model.feature_shape):
                raise FromageError(f"{folder}: holds features of shape {cache.shape}, the model reads "
                                   f"{tuple(model.feature_shape)}; delete that folder to rebuild it")
            bad = cache.non_finite_rows()
            if bad:
                log(f"[{split}] {bad} rows of the feature cache {folder} hold NaN or inf (a damaged file): they are "
                    "left out and counted; delete that folder to rebuild it")
            return cache
        extra = {"image_root": image_root} if image_root else {}
        samples = open_reader(spec, skip_log=skips, allow_outside_root=allow_outside_root, **extra)
        try:
            cache = build_cache(folder, samples, model, skip_log=skips, progress=True)
        except NoSamplesError as e:
            raise NoSamplesError(f"{spec}: {e}; fix the data and run again") from None
        except (WriteError, OSError) as e:  # a full disk or no permission: leave no half-built cache behind
            shutil.rmtree(folder, ignore_errors=True)
            raise write_error(e, folder, "build the feature cache") from None
    if cache.info.get("skips"):
        log(f"[{split}] skipped {sum(cache.info['skips'].values())} samples: {cache.info['skips']}")
    return cache


def source_fingerprint(spec, *, allow_outside_root: bool = False, image_root=None) -> str:
    """A short hash of what :func:`~.readers.open_reader` would read from ``spec``; it changes with the data.

    A TSV: its path, size, mtime and bytes, and the path, size and mtime of every image it names. A
    folder, a glob, a shard or a parquet file: the path, size and mtime of each file. ``hf:NAME``: the
    name only. Used to key caches, so an edited caption, an added row or a replaced image is never
    served from an old cache.
    """
    from .readers.folder import _cannot_list, _check_listable
    from .readers.tsv import read_table

    s = str(spec)
    root = None if image_root is None else os.path.abspath(image_root)
    h = hashlib.sha256(repr((os.path.abspath(s), allow_outside_root) + ((root,) if root else ())).encode())
    if s.startswith("hf:"):
        return h.hexdigest()[:16]
    p = Path(s)
    if p.is_dir():
        _check_listable(p)
        files = sorted(Path(d, f) for d, _, fs in os.walk(p, onerror=_cannot_list) for f in fs)
    else:
        files = sorted(Path(f) for f in _glob.glob(s)) if _glob.has_magic(s) else [p]
    for f in files:
        h.update(_identity(f))
    if p.suffix == ".tsv" and p.is_file():
        with os_errors("read it"), open(p, "rb") as f:
            for block in iter(partial(f.read, 1 << 20), b""):
                h.update(block)
        for _, row in read_table(p):
            h.update(_identity(Path(root or p.parent) / row["image"]))
    return h.hexdigest()[:16]


def _identity(path: Path) -> bytes:
    """Path, size and mtime of a file (or why it cannot be stat'ed), as bytes to hash."""
    try:
        st = path.stat()
        return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
    except OSError as e:
        return f"{path}\0{e.errno}\n".encode()
