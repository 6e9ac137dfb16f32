"""Contextual image retrieval (VIST protocol, and ShapesWorld stories): retrieve each story's last
image from its earlier captions and images. See the package docstring for the two protocols."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.readers import SkipLog, is_inside
from ..errors import FromageError
from ..files import read_json
from ..infer.modes import inference
from ..infer.scoring import image_vectors, text_vectors
from ..metrics import rank_metrics, target_ranks
from .images import compute_features, skip_counts, trivial_cutoffs, usable_images


@dataclass
class Story:
    """Captions and image ids of one story. ``order``: each entry's position as the worker arranged it."""

    id: str
    captions: list[str]
    images: list[str]
    order: list[int] | None = None

    def in_order(self) -> Story:
        """The story sorted by ``order`` (the original kept the file order)."""
        if self.order is None:
            return self
        idx = sorted(range(len(self.order)), key=lambda i: self.order[i])
        return Story(self.id, [self.captions[i] for i in idx], [self.images[i] for i in idx],
                     sorted(self.order))


def read_vist(path) -> tuple[list[Story], dict[str, str]]:
    """The official VIST story-in-sequence JSON -> (stories in file order, {image id: url}).

    ``annotations`` is a list of one-element lists ``[{story_id, photo_flickr_id, text,
    worker_arranged_photo_order, ...}]``; entries are grouped by ``story_id`` (first-seen order).
    ``images`` entries give ``id`` and ``url_o`` (``url_m`` as a fallback).
    """
    raw = read_json(path)
    try:
        stories: dict[str, Story] = {}
        for ann in raw["annotations"]:
            a = ann[0] if isinstance(ann, list) else ann
            sid = str(a["story_id"])
            s = stories.setdefault(sid, Story(sid, [], [], []))
            s.captions.append(a["text"])
            s.images.append(str(a["photo_flickr_id"]))
            s.order.append(int(a["worker_arranged_photo_order"]))
        urls = {str(im["id"]): im.get("url_o") or im.get("url_m") for im in raw.get("images", [])}
    except (KeyError, TypeError, IndexError) as e:
        raise FromageError(f"{path}: not a VIST story-in-sequence file (missing {e})") from None
    return list(stories.values()), {k: u for k, u in urls.items() if u}


def read_story_list(path, caption_key: str = "caption", image_key: str = "image", image_root=None, *,
                    skip_log=None, allow_outside_root: bool = False) -> tuple[list[Story], dict[str, Path]]:
    """ShapesWorld-style stories: a JSON list of stories, each a list of ``{"caption", "image"}``
    entries (or a dict holding that list under ``"scenes"``/``"entries"``, with an optional ``"id"``).

    Returns (stories, {image id: path}); an image value is a path relative to ``image_root``
    (default: the JSON file's folder) and is its own id. Change the keys for other layouts. An image
    path leading outside the root is left out of the paths (its story is then skipped) and counted as
    ``outside_root`` in ``skip_log``, unless ``allow_outside_root``.
    """
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    stories, paths = [], {}
    for n, st in enumerate(read_json(path)):
        sid = str(n)
        if isinstance(st, dict):
            sid = str(st.get("id", n))
            st = st.get("scenes") or st.get("entries") or []
        try:
            caps = [e[caption_key] for e in st]
            ims = [str(e[image_key]) for e in st]
        except (KeyError, TypeError) as e:
            raise FromageError(f"{path}: story {sid} has an entry without {e}") from None
        stories.append(Story(sid, caps, ims))
        for im in ims:
            if allow_outside_root or is_inside(root / im, root):
                paths[im] = root / im
            elif skip_log is not None:
                skip_log.add("outside_root", im)
    return stories, paths


def story_prompt(story: Story, images: Mapping[str, Any], n_captions: int = 5, n_images: int = 4) -> list:
    """``[caption_1, image_1, ..., image_{L-1}, caption_L]`` keeping the last ``n_captions``
    captions and the last ``n_images`` context images (the paper's Table 1 settings)."""
    L = len(story.captions)
    prompt = []
    for j in range(L - 1):
        if j >= L - n_captions:
            prompt.append(story.captions[j])
        if j >= L - 1 - n_images:
            prompt.append(images[story.images[j]])
    prompt.append(story.captions[-1])
    return prompt


@inference
def contextual_retrieval(model, stories: list[Story], images: Mapping[str, Any], *, n_captions: int = 5,
                         n_images: int = 4, ks=(1, 5, 10), faithful_to_original: bool = False,
                         batch_size: int = 16, skip_log: SkipLog | None = None) -> dict[str, float]:
    """Retrieve each story's last image from its earlier captions and images (VIST protocol).

    The prompt is :func:`story_prompt` followed by [RET]; candidates are all of ``images``
    (id -> PIL / path / feature), minus the story's earlier images; stories with an image missing
    from ``images``, or given as a file that does not decode (counted by reason in ``skip_log``, as the
    CLI does), are skipped. Scores are cosine similarities. See the package docstring for what
    ``faithful_to_original`` changes (its 224×224 squash applies to images given as PIL or paths;
    precomputed features are used as given). Returns ``{"n", "skipped", "candidates", "R@k"...}``, plus
    ``"trivial"`` (R@k with k >= every story's candidates) and ``"skips"`` when there are any.
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    feats = compute_features(model, usable_images(images, skip_log), squash=faithful_to_original)
    ids = list(feats)
    col = {k: i for i, k in enumerate(ids)}
    kept = [s if faithful_to_original else s.in_order() for s in stories]
    kept = [s for s in kept if all(i in col for i in s.images)]
    if not kept:
        raise FromageError("no story has all of its images available")
    prompts = [story_prompt(s, feats, n_captions, n_images) for s in kept]
    t = text_vectors(model, prompts, batch_size=batch_size, bos="per_text" if faithful_to_original else "once")
    v = image_vectors(model, torch.stack([feats[k] for k in ids]))
    scores = (F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).T).cpu()  # (n_stories, n_candidates)
    for row, s in enumerate(kept):
        scores[row, [col[i] for i in s.images[:-1]]] = float("-inf")
    target = torch.tensor([col[s.images[-1]] for s in kept])
    ranks = target_ranks(scores, target)
    out = {"n": len(kept), "skipped": len(stories) - len(kept), "candidates": len(ids)}
    out |= {name: val for name, val in rank_metrics(ranks, ks).items() if name.startswith("R@")}
    most = max(len(ids) - len(set(s.images[:-1])) for s in kept)  # candidates left to the richest story
    return out | trivial_cutoffs(ks, most) | skip_counts(skip_log)
