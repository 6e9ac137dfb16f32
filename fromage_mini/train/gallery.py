"""A picture of what the trained model does: ``gallery.png`` in the run folder, at the end of training.

    top      the first few validation images, each with its reference caption and the model's greedy one
    bottom   text->image retrieval among all N validation images for a few validation captions spread
             through the split: the top k images with their cosine scores, the caption's own image
             framed in green with a ✓, and that image's rank among all N

Everything is computed from the validation split's feature cache, as the trainer's validation does
(``validate.retrieval_vectors``, ``infer.caption.caption``, ``TensorIndex``); the images themselves
are read only to be drawn (:func:`~fromage_mini.data.readers.read_images`). A TSV gives any row's image
cheaply; shards and datasets are streamed, and only for their first ``max_scan`` rows: a tile whose
image is not found shows its caption instead.
"""
from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..data.cache import FeatureCache

GALLERY = "gallery.png"
HIT = "#1a9641"  # the frame of a query's own image
WIDTH = 12.0  # inches


@dataclass
class Gallery:
    """What :func:`write_gallery` drew; rows are rows of the validation cache."""

    path: Path
    rows: list[int]  # the captioned images
    captions: list[str]  # the model's greedy captions of them
    queries: list[int]  # the rows whose captions are the retrieval queries
    ids: torch.Tensor  # (queries, k) retrieved rows, best first
    scores: torch.Tensor  # (queries, k) their cosine scores
    ranks: list[int]  # each query's own image's rank among all rows (1 = retrieved first)
    missing: list[int]  # drawn rows that had no image to show (their caption stands in)


def spread(n: int, m: int) -> list[int]:
    """``m`` indices spread evenly through ``range(n)`` (the middles of m equal parts)."""
    return [int((j + 0.5) * n / m) for j in range(min(m, n))]


@torch.no_grad()
def write_gallery(model, cache: FeatureCache, out_path, *, images=None, n_images: int = 6, queries: int = 3,
                  k: int = 4, title: str = "") -> Gallery:
    """Draw ``model``'s captions and retrievals on a validation split into the PNG ``out_path``.

    ``cache``: the split's features, captions and keys. ``images``: a function from a list of cache
    keys to ``{key: PIL image}`` (e.g. ``functools.partial(read_images, spec)``); rows it gives no image
    for (all rows, when ``images`` is None) are drawn as their caption. The first ``n_images`` rows are
    captioned greedily; the captions of ``queries`` rows spread through the split search all N images
    (rows whose vectors are not finite are left out, as in validation). Returns what was drawn.
    """
    from ..infer.caption import caption
    from ..infer.modes import eval_mode
    from ..infer.tensor_index import TensorIndex
    from .validate import retrieval_vectors

    with eval_mode(model):
        rows = list(range(min(n_images, len(cache))))
        preds = caption(model, cache.features(rows).to(model.device)) if rows else []
        t, v = retrieval_vectors(model, cache)  # (N, q), (N, q)
    ok = torch.isfinite(t).all(1) & torch.isfinite(v).all(1)  # (N,)
    good = ok.nonzero()[:, 0].tolist()
    qrows = [good[j] for j in spread(len(good), queries)]
    index = TensorIndex(torch.nan_to_num(v))
    scores, ids = index.search(t[qrows], len(index), exclude=(~ok).nonzero()[:, 0].tolist())  # (Q, N) ranked
    ranks = [int((ids[j] == r).nonzero()[0, 0]) + 1 for j, r in enumerate(qrows)]
    k = min(k, len(good))  # an excluded row never fills a slot (its id is -1)
    scores, ids = scores[:, :k], ids[:, :k]

    shown = list(dict.fromkeys(rows + ids.flatten().tolist()))
    pics = images([cache.keys[i] for i in shown]) if images is not None and shown else {}
    pics = {i: pics[cache.keys[i]] for i in shown if cache.keys[i] in pics}
    g = Gallery(Path(out_path), rows, preds, qrows, ids, scores, ranks, [i for i in shown if i not in pics])
    _draw(g, cache, pics, good_rows=len(good), title=title)
    return g


def _draw(g: Gallery, cache: FeatureCache, pics: dict, good_rows: int, title: str) -> None:
    """Lay the gallery out on a bare ``Figure`` (no pyplot, as ``RunDir.plot_curves``) and save it."""
    from matplotlib.figure import Figure

    k = g.ids.shape[1]
    head, img_h, text_h, query_h, gap = 0.45, 1.75, 1.6, 2.05, 0.4  # inches
    H = head + gap + img_h + text_h + gap + query_h * len(g.queries) + 0.1
    fig = Figure(figsize=(WIDTH, H))

    def y(inches_from_top: float) -> float:  # a height measured from the top -> figure fraction
        return 1 - inches_from_top / H

    if title:
        fig.text(0.5, y(0.12), title, ha="center", va="top", fontsize=12, weight="bold")
    top = head
    if g.rows:
        fig.text(0.015, y(top + 0.1), f"Greedy captions of the first {len(g.rows)} validation images",
                 ha="left", va="top", fontsize=10, weight="bold")
        grid = fig.add_gridspec(2, len(g.rows), left=0.015, right=0.985, top=y(top + gap),
                                bottom=y(top + gap + img_h + text_h), height_ratios=[img_h, text_h],
                                wspace=0.12, hspace=0.06)
        width = max(16, int(195 / len(g.rows)))  # characters per line of 7-point text in a column
        for c, (row, pred) in enumerate(zip(g.rows, g.captions)):
            _tile(fig.add_subplot(grid[0, c]), pics.get(row), cache.captions[row], frame=None)
            ax = fig.add_subplot(grid[1, c])
            ax.axis("off")
            ref = ax.text(0, 1, f"reference:\n{_wrap(cache.captions[row], width, 5)}", ha="left", va="top",
                          fontsize=7, transform=ax.transAxes)
            ax.annotate(f"model:\n{_wrap(pred or '(empty)', width, 5)}", (0, 0), xycoords=ref, xytext=(0, -4),
                        textcoords="offset points", ha="left", va="top", fontsize=7, color="#08519c")
        top += gap + img_h + text_h
    if not g.queries:
        fig.savefig(g.path, dpi=110)
        return
    fig.text(0.015, y(top + 0.1), f"Text → image retrieval among all {good_rows} validation images: top {k} "
             f"for {len(g.queries)} validation captions (✓ and green frame: the caption's own image)",
             ha="left", va="top", fontsize=10, weight="bold")
    grid = fig.add_gridspec(len(g.queries), 1 + k, left=0.015, right=0.985, top=y(top + gap),
                            bottom=y(top + gap + query_h * len(g.queries) - 0.25),
                            width_ratios=[1.9] + [1] * k, wspace=0.12, hspace=0.3)
    for j, row in enumerate(g.queries):
        ax = fig.add_subplot(grid[j, 0])
        ax.axis("off")
        ax.text(0, 0.95, f"query {j + 1} (row {row}):", ha="left", va="top", fontsize=8, weight="bold",
                transform=ax.transAxes)
        ax.text(0, 0.8, _wrap(f"“{cache.captions[row]}”", 56), ha="left", va="top", fontsize=8,
                transform=ax.transAxes)
        ax.text(0, 0.05, f"its own image: rank {g.ranks[j]} of {good_rows}", ha="left", va="bottom", fontsize=8,
                color=HIT if g.ranks[j] <= k else "#b2182b", transform=ax.transAxes)
        for c in range(k):
            hit = int(g.ids[j, c]) == row
            ax = fig.add_subplot(grid[j, 1 + c])
            _tile(ax, pics.get(int(g.ids[j, c])), cache.captions[int(g.ids[j, c])], frame=HIT if hit else "#bbbbbb")
            ax.set_title(f"{c + 1}. cos {float(g.scores[j, c]):.2f}" + (" ✓" if hit else ""), fontsize=8,
                         color=HIT if hit else "black", weight="bold" if hit else "normal", pad=3)
    fig.savefig(g.path, dpi=110)


def _tile(ax, image, caption: str, frame: str | None) -> None:
    """One square tile: the image (centre-cropped) or, without one, its caption on grey."""
    from PIL import ImageOps

    ax.set_xticks([]), ax.set_yticks([]), ax.set_box_aspect(1)
    if image is not None:
        side = min(224, *image.size)
        ax.imshow(ImageOps.fit(image, (side, side)))
    else:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, "(image not read)\n" + _wrap(caption, 24, lines=6), ha="center", va="center",
                fontsize=6.5, transform=ax.transAxes)
    for s in ax.spines.values():
        s.set_edgecolor(frame or "#bbbbbb")
        s.set_linewidth(3 if frame == HIT else 0.8)


def _wrap(text: str, width: int, lines: int = 6) -> str:
    return textwrap.fill(text, width, max_lines=lines, placeholder=" …")


def gallery_for_run(model, run_path, cache: FeatureCache, cfg, log=print, title: str = "") -> Path | None:
    """At the end of training: the best checkpoint's :func:`write_gallery` -> ``<run>/gallery.png``.

    The best checkpoint's adapters are loaded into ``model`` first (the one in memory is the last
    step's); ``cfg`` (the TrainConfig) says where the validation images are. Never raises: a picture
    must not undo a finished run, so any error is one log line and None is returned (also when
    ``cfg.gallery`` is off). An older run's gallery.png in the folder is removed either way.
    """
    from ..data.readers import read_images
    from ..model.checkpoint import WEIGHTS, load_state, read_adapters
    from ..paths import resolve
    from .run_dir import RunDir

    out = Path(run_path) / GALLERY
    t0 = time.time()
    try:
        out.unlink(missing_ok=True)
        if not cfg.gallery:
            return None
        best = RunDir(run_path).pointer("best")
        if best is not None:
            load_state(model, read_adapters(best / WEIGHTS), str(best))
        root = resolve(cfg.image_root) if cfg.image_root else None
        images = partial(read_images, resolve(cfg.val_data), image_root=root,
                         allow_outside_root=cfg.allow_outside_root)
        g = write_gallery(model, cache, out, images=images, title=title)
    except Exception as e:  # noqa: BLE001 - whatever fails here, training's results stand
        why = (str(e).splitlines() or [""])[0]
        log(f"gallery: not written ({type(e).__name__}: {why})")
        return None
    note = f"; {len(g.missing)} tiles without their image" if g.missing else ""
    log(f"gallery: {len(g.rows)} captions, {len(g.queries)} queries, {time.time() - t0:.1f}s{note}")
    return out
