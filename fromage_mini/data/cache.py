"""Frozen-feature cache: pooled vision features computed once, stored memory-mapped.

With a frozen vision tower the image side of FROMAGe only ever needs one pooled vector per
image, so we compute it once and train from the cache (the original ran CLIP twice per step and
decoded every JPEG every epoch). Layout of a cache folder:

    index.json            fingerprint, dim, shard list, skip counts, complete flag
    feat_00000.npy        (n, D) float16 features of shard 0
    meta_00000.json       {"keys": [...], "captions": [...]} for the same rows

A shard is listed in ``index.json`` only after both its files are on disk (each written
atomically), so an interrupted build resumes at the first missing shard and never reads a torn
file.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import FromageError
from ..files import load_numpy, read_json, save_numpy, write_json

FORMAT = 1


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
            if arr.shape != (s["n"], self.info["dim"]) or len(meta["captions"]) != s["n"]:
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

    def features(self, idx) -> torch.Tensor:
        """Rows ``idx`` (ints) -> (n, D) float32 tensor, read from the memory-mapped shards."""
        idx = np.asarray(idx, dtype=np.int64)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._feats[s][idx[sel] - self._starts[s]]
        return torch.from_numpy(out)

    def all_features(self) -> torch.Tensor:
        return self.features(np.arange(len(self)))


def build_cache(folder, samples, model, *, batch_size: int = 64, shard_size: int = 4096,
                skip_log=None, progress: bool = True, total: int | None = None,
                device: str | torch.device | None = None) -> FeatureCache:
    """Compute pooled features for ``samples`` (an iterable of records with ``.key``, ``.caption``,
    ``.image``) with ``model``'s frozen vision tower, and store them in ``folder``.

    Resumable: shards already listed in ``folder/index.json`` are skipped (their samples are
    still read from ``samples`` to keep the order). A finished cache is returned as is.
    Features with NaN or inf (a broken image or tower) are skipped and counted, never stored.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    fp = vision_fingerprint(model.vision, model.image_processor, model.config.vision)
    info = {"format": FORMAT, "fingerprint": fp, "vision": model.config.vision, "dim": model.vis_dim,
            "shards": [], "complete": False, "skips": {}}
    if (folder / "index.json").exists():
        old = read_json(folder / "index.json")
        if old.get("fingerprint") != fp:
            raise FromageError(f"{folder}: cache was built with another vision model or preprocessing "
                               f"({old.get('vision')}); use a new cache folder or delete this one")
        if old.get("complete"):
            return FeatureCache(folder)
        info = old
    done_rows = info.get("consumed", 0)  # samples read up to the end of the last stored shard
    device = device or model.device
    bar = tqdm(total=total, desc="caching features", unit="img", disable=not progress, smoothing=0.1)
    bar.update(done_rows)

    feats, keys, caps, imgs, pending_meta = [], [], [], [], []
    bad_feature = 0
    seen = 0

    def flush_batch():
        nonlocal bad_feature
        if not imgs:
            return
        px = model.preprocess(imgs).to(device)
        f = model.image_features(px).cpu()
        ok = torch.isfinite(f).all(dim=1)
        bad_feature += int((~ok).sum())
        feats.append(f[ok].half().numpy())
        for (k, c), good in zip(pending_meta, ok.tolist()):
            if good:
                keys.append(k)
                caps.append(c)
        bar.update(len(imgs))
        imgs.clear()
        pending_meta.clear()

    def flush_shard():
        if not keys:
            return
        arr = np.concatenate(feats)
        i = len(info["shards"])
        save_numpy(folder / f"feat_{i:05d}.npy", arr)
        write_json(folder / f"meta_{i:05d}.json", {"keys": list(keys), "captions": list(caps)})
        info["shards"].append({"features": f"feat_{i:05d}.npy", "meta": f"meta_{i:05d}.json", "n": len(keys)})
        info["consumed"] = seen
        write_json(folder / "index.json", info)  # the shard counts only once this lands
        feats.clear(), keys.clear(), caps.clear()

    t0 = time.time()
    for s in samples:
        seen += 1
        if seen <= done_rows:  # already cached in an earlier, interrupted run
            continue
        imgs.append(s.image)
        pending_meta.append((s.key, s.caption))
        if len(imgs) == batch_size:
            flush_batch()
            if sum(len(x) for x in feats) >= shard_size:
                flush_shard()
    flush_batch()
    flush_shard()
    bar.close()
    summary = skip_log.summary() if skip_log is not None else {"counts": {}, "examples": {}}
    skips = dict(summary["counts"])  # reason -> count, e.g. {"corrupt_image": 3}
    if bad_feature:
        skips["non_finite_feature"] = skips.get("non_finite_feature", 0) + bad_feature
    info["skips"] = skips
    info["skip_examples"] = summary.get("examples", {})
    info["complete"] = True
    info["build_seconds"] = round(time.time() - t0, 2)
    write_json(folder / "index.json", info)
    return FeatureCache(folder)


def cached_split(model, spec: str, cache_root, split: str, log=print) -> FeatureCache:
    """Features for one split, computed on first use and reused afterwards."""
    from .readers import SkipLog, open_reader
    from ..paths import resolve

    if not spec:
        raise FromageError(f"no {split} data given (set {split}_data)")
    spec = resolve(spec)
    fp = vision_fingerprint(model.vision, model.image_processor, model.config.vision)
    folder = Path(resolve(str(cache_root))) / fp / f"{split}-{_slug(spec)}"
    if (folder / "index.json").exists() and read_json(folder / "index.json").get("complete"):
        return FeatureCache(folder)
    skips = SkipLog()
    cache = build_cache(folder, open_reader(spec, skip_log=skips), model, skip_log=skips, progress=True)
    if cache.info.get("skips"):
        log(f"[{split}] skipped {sum(cache.info['skips'].values())} samples: {cache.info['skips']}")
    return cache


def _slug(spec: str) -> str:
    import hashlib

    return Path(spec.rstrip("/")).stem[:40] + "-" + hashlib.sha256(str(Path(spec).resolve()).encode()).hexdigest()[:8]
