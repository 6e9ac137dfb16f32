"""Caption↔image recall@k over a set of (caption, image) pairs, and the pairs file reader."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.readers import SkipLog, is_inside, read_table
from ..errors import FromageError
from ..files import read_json
from ..infer.modes import inference
from ..infer.scoring import image_vectors, text_vectors
from ..metrics import recall_at_k
from .images import compute_features, skip_counts, trivial_cutoffs, usable_images


@inference
def recall_at_k_dataset(model, pairs, ks=(1, 5, 10), *, batch_size: int = 32,
                        progress: bool = False, skip_log: SkipLog | None = None) -> dict[str, float]:
    """Recall@k over a set of (caption, image) pairs, both directions, among the set's own items.

    Text side: ``</s> caption [RET]`` (as in training); image side: the image head. Cosine scores.
    Returns ``{"n", "t2i_R@k", "i2t_R@k"}``, plus ``"trivial"`` naming the R@k with k >= n (1 whatever
    the model does) and ``"skips"`` (reason -> count) for pairs whose image file does not decode, which
    are left out. ``progress``: a bar over the images (the slow part).
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    pairs = list(pairs)
    usable = usable_images({str(i): im for i, (_, im) in enumerate(pairs)}, skip_log)
    pairs = [pr for i, pr in enumerate(pairs) if str(i) in usable]
    if not pairs:
        raise FromageError("no (caption, image) pairs to evaluate")
    feats = compute_features(model, {str(i): im for i, (_, im) in enumerate(pairs)}, batch_size=batch_size,
                             progress=progress)
    t = F.normalize(text_vectors(model, [c for c, _ in pairs], batch_size=batch_size), dim=-1)
    v = F.normalize(image_vectors(model, torch.stack(list(feats.values())), batch_size=batch_size), dim=-1)
    scores = (t @ v.T).cpu()  # (N, N): caption i against image j
    ks = [k for k in ks if k <= len(pairs)]
    out: dict[str, float] = {"n": len(pairs)}
    out |= {f"t2i_{name}": val for name, val in recall_at_k(scores, ks).items()}
    out |= {f"i2t_{name}": val for name, val in recall_at_k(scores.T, ks).items()}
    return out | trivial_cutoffs(ks, len(pairs)) | skip_counts(skip_log)


def read_pairs(path, image_root=None, *, skip_log=None, allow_outside_root: bool = False) -> list[tuple[str, Path]]:
    """(caption, image path) pairs from a JSON list (``{"caption", "image"}`` objects or 2-lists)
    or a TSV/CSV with ``caption`` and ``image`` columns, read by the training reader's row parser
    (:func:`~fromage_mini.data.readers.read_table`). Relative image paths are resolved against
    ``image_root`` (default: the file's folder). Bad rows are skipped and counted in ``skip_log``
    (``non_utf8``, ``malformed_row``, ``empty_caption``, and ``outside_root`` for a path leading outside
    the root unless ``allow_outside_root``); images are not opened here (see :func:`~.images.usable_images`)."""
    from ..paths import resolve

    skip_log = SkipLog() if skip_log is None else skip_log
    path = Path(resolve(str(path)))
    root = Path(resolve(str(image_root))) if image_root else path.parent
    rows = enumerate(read_json(path)) if path.suffix == ".json" else read_table(path, skip_log=skip_log)
    pairs = []
    for key, r in rows:
        try:
            caption, image = (r["caption"], r["image"]) if isinstance(r, dict) else (r[0], r[1])
        except (KeyError, IndexError, TypeError):
            skip_log.add("malformed_row", str(key), repr(r)[:80])
            continue
        if caption is None or not str(caption).strip():  # JSON null is no caption, not the word "None"
            skip_log.add("empty_caption", str(key))
        elif image is None or isinstance(image, (dict, list)):
            skip_log.add("malformed_row", str(key), repr(r)[:80])
        elif not (allow_outside_root or is_inside(root / str(image), root)):
            skip_log.add("outside_root", str(key), str(image))
        else:
            pairs.append((str(caption).strip(), root / str(image)))
    return pairs
