"""Write the ShapesWorld sample in CC3M's on-disk formats (what ``data_samples/shapesworld`` holds).

* ``train.tsv`` / ``val.tsv``: FROMAGe's TSV, header ``caption<TAB>image``, image paths relative to this
  folder (``images/train/00000017.jpg``).
* ``shards/{split}/00000.tar …``: the same pairs as webdataset shards laid out as img2dataset writes them:
  members ``{key}.jpg``, ``{key}.txt`` (caption), ``{key}.json``, plus ``00000_stats.json``. Keys are
  ``shard * 10**3 + row`` zero-padded to 8 digits (img2dataset's rule for 1000 samples per shard).
* ``scenes_{split}.json``: one record per pair: key, image, caption, a caption in another style, and the
  scene record (objects with shape/colour/size/cell and the render details).
* ``dialogues_val.json``: Q/A turns with answer options for every val image.
* ``stories_{split}.json``: five-scene stories for contextual retrieval; the val stories' images are in
  ``images/stories_val/`` (train stories ship as records only: ``world.render(scene)`` redraws them).

Everything is a deterministic function of the seed; tar members carry fixed metadata so a rebuild is
byte-identical.
"""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..files import atomic_write, write_json
from .captions import STYLES, canonical_caption, styled_caption
from .dialogue import make_dialogue
from .stories import make_story
from .world import IMAGE_SIZE, SPLIT_IDS, jpeg_bytes, make_scene, render

PER_SHARD = 1000
KEY_DIGITS = 5 + 3            # img2dataset: oom_shard_count (5) + ceil(log10(PER_SHARD))


def sample_key(i: int) -> str:
    """img2dataset key of the i-th row: shard * 10**3 + row within the shard, 8 digits."""
    shard, row = divmod(i, PER_SHARD)
    return f"{shard * 10**3 + row:0{KEY_DIGITS}d}"


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_split(root: Path, split: str, n: int, seed: int, progress: bool = True) -> list[dict]:
    """Render ``n`` scenes of ``split``; write images, TSV, shards and the scenes file; return the records."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "shards" / split).mkdir(parents=True, exist_ok=True)
    records, blobs = [], []
    for i in tqdm(range(n), desc=f"{split} images", disable=not progress):
        scene = make_scene(seed, split, i)
        rng = np.random.default_rng([seed, 303, SPLIT_IDS[split], i])
        style = STYLES[1 + rng.integers(len(STYLES) - 1)]
        key = sample_key(i)
        rec = {"key": key, "image": f"images/{split}/{key}.jpg", "caption": canonical_caption(scene),
               "styled_caption": styled_caption(scene, style, rng), "style": style, "scene": scene}
        data = jpeg_bytes(render(scene))
        with atomic_write(root / rec["image"]) as f:
            f.write(data)
        records.append(rec)
        blobs.append(data)
    with atomic_write(root / f"{split}.tsv", "w") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["caption", "image"])
        w.writerows([r["caption"], r["image"]] for r in records)
    for s in range(0, n, PER_SHARD):
        shard = s // PER_SHARD
        with atomic_write(root / "shards" / split / f"{shard:05d}.tar") as f, \
                tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for rec, data in zip(records[s:s + PER_SHARD], blobs[s:s + PER_SHARD]):
                meta = {"caption": rec["caption"], "url": rec["image"], "key": rec["key"], "status": "success",
                        "error_message": None, "width": IMAGE_SIZE, "height": IMAGE_SIZE,
                        "original_width": IMAGE_SIZE, "original_height": IMAGE_SIZE}
                _tar_add(tar, f"{rec['key']}.jpg", data)
                _tar_add(tar, f"{rec['key']}.txt", rec["caption"].encode())
                _tar_add(tar, f"{rec['key']}.json", json.dumps(meta).encode())
        count = len(records[s:s + PER_SHARD])
        write_json(root / "shards" / split / f"{shard:05d}_stats.json",
                   {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
                    "status_dict": {"success": count}})
    _write_compact_json(root / f"scenes_{split}.json", records)
    return records


def write_dialogues(root: Path, records: list[dict], seed: int, n_turns: int = 4) -> None:
    """Q/A dialogues (with answer options) about each image of ``records``."""
    out = []
    for r in records:
        rng = np.random.default_rng([seed, 404, r["scene"]["index"]])
        out.append({"key": r["key"], "image": r["image"], "caption": r["caption"],
                    "turns": make_dialogue(r["scene"], rng, n_turns)})
    _write_compact_json(root / "dialogues_val.json", out)


def write_stories(root: Path, split: str, n: int, seed: int, images: bool = True) -> None:
    """``n`` stories of ``story_{split}``, with their 5 images each under ``images/stories_{split}/``."""
    if images:
        (root / "images" / f"stories_{split}").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        story = make_story(seed, f"story_{split}", i)
        for j, s in enumerate(story["scenes"]):
            s["image"] = f"images/stories_{split}/{i:04d}_{j}.jpg" if images else None
            if images:
                with atomic_write(root / s["image"]) as f:
                    f.write(jpeg_bytes(render(s["scene"])))
        out.append(story)
    _write_compact_json(root / f"stories_{split}.json", out)


def _write_compact_json(path: Path, obj) -> None:
    """One record per line: small on disk, still diff- and grep-friendly."""
    with atomic_write(path, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r, separators=(",", ":")) for r in obj) + "\n]\n")


def write_shapesworld(root: str | Path, seed: int = 0, n_train: int = 2000, n_val: int = 500,
                      n_stories_train: int = 100, n_stories_val: int = 100, progress: bool = True) -> dict:
    """Write the whole ShapesWorld sample under ``root``; return counts."""
    root = Path(root)
    write_split(root, "train", n_train, seed, progress)
    val = write_split(root, "val", n_val, seed, progress)
    write_dialogues(root, val, seed)
    write_stories(root, "train", n_stories_train, seed, images=False)   # text for training; re-render if needed
    write_stories(root, "val", n_stories_val, seed)
    return {"train_pairs": n_train, "val_pairs": n_val, "stories_train": n_stories_train,
            "stories_val": n_stories_val, "seed": seed}
