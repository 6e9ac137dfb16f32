"""The text-only corpus the toy LM is pretrained on.

A tiny LM trained on captions alone keeps almost nothing of a caption in its final hidden state (nothing
later in the text needs it), and FROMAGe's [RET] head, which reads that state, then fails. So most
documents make later words depend on the whole caption:

* ``caption``  (16 %): ``a small blue circle at the top left.``
* ``summary``  (48 %): ``<caption> summary smallbluecircle topleft, largeredsquare right.`` The objects
  come in *random order* as one-word ``{size}{colour}{shape}`` compounds, so the very first word after
  " summary" depends on every object: the end-of-caption state must hold the bag of objects.
* ``summary_first`` (16 %): ``smallbluecircle topleft, largeredsquare right: <caption>`` (canonical order;
  gives a "compact context → caption" habit a visual prefix can use).
* ``qa`` (10 %): the caption, then Q/A lines about the scene (answers must be read back from the caption).
* ``story`` (5 %): a five-scene story whose narration refers back to earlier scenes.
* ``styled`` (5 %): a caption in another style (synonyms, relations, alt text…), followed by a summary
  half of the time.

:data:`GRID_MIX` adds two kinds for an LM meant to read the grid prefix with named cells: the scene
written in that prefix's fixed layout, ``" topleft: smallbluecircle top: empty … bottomright: empty"``
(every cell, in reading order), then the caption (``grid``) or Q/A lines (``grid_qa``). Such a document
is a tuple (layout, rest): the two parts are tokenized separately, so the rest starts exactly as a
caption or question does after a visual prefix.

The first three are the prototype's "v4" mix (20/60/20) scaled to 80 %. The word " summary" is also the
initial embedding of FROMAGe's [RET] token.
"""
from __future__ import annotations

import numpy as np

from .captions import canonical_caption, compound, random_styled_caption
from .dialogue import dialogue_text, make_dialogue, turn_text
from .stories import make_story, story_text
from .world import CELLS, make_scene

MIX = {"caption": 0.16, "summary": 0.48, "summary_first": 0.16, "qa": 0.10, "story": 0.05, "styled": 0.05}
GRID_MIX = {"caption": 0.10, "summary": 0.30, "summary_first": 0.06, "qa": 0.08, "story": 0.03, "styled": 0.03,
            "grid": 0.25, "grid_qa": 0.15}
SUMMARY_WORD = "summary"
EMPTY_WORD = "empty"


def summary(objects: list[dict], order=None) -> str:
    """``smallbluecircle topleft, largeredsquare right`` (objects in the given index order)."""
    order = range(len(objects)) if order is None else order
    return ", ".join(f"{compound(objects[i])} {CELLS[objects[i]['cell']]}" for i in order)


def grid_layout(objects: list[dict]) -> str:
    """``" topleft: smallbluecircle top: empty …"``: every cell's name and content, in reading order."""
    content = [EMPTY_WORD] * len(CELLS)
    for o in objects:
        content[o["cell"]] = compound(o)
    return "".join(f" {name}: {c}" for name, c in zip(CELLS, content))


def document(kind: str, scene: dict, rng: np.random.Generator, story: dict | None = None) -> str | tuple[str, str]:
    """One corpus document of the given kind about ``scene`` (or ``story`` for kind "story"); the grid
    kinds give a (layout, rest) tuple."""
    cap = canonical_caption(scene)
    objs = scene["objects"]
    if kind == "caption":
        return cap
    if kind == "summary":
        return f"{cap} {SUMMARY_WORD} {summary(objs, rng.permutation(len(objs)))}."
    if kind == "summary_first":
        return f"{summary(objs)}: {cap}"
    if kind == "qa":
        return dialogue_text(scene, make_dialogue(scene, rng, n_turns=int(rng.integers(2, 5))))
    if kind == "grid":
        return grid_layout(objs), cap
    if kind == "grid_qa":
        turns = make_dialogue(scene, rng, n_turns=int(rng.integers(2, 5)))
        return grid_layout(objs), "\n".join(turn_text(t) for t in turns)
    if kind == "story":
        return story_text(story)
    if kind == "styled":
        text = random_styled_caption(scene, rng)
        if rng.random() < 0.5:
            text += f" {SUMMARY_WORD} {summary(objs, rng.permutation(len(objs)))}."
        return text
    raise ValueError(f"unknown document kind {kind!r}")


def build_corpus(seed: int, n_docs: int, mix: dict | None = None, start: int = 0) -> list[str | tuple[str, str]]:
    """``n_docs`` documents from train-split scenes ``start…start+n_docs-1`` (and train stories).

    Only the ``train`` and ``story_train`` splits are used, so validation scenes never leak into
    pretraining. Deterministic in ``seed``.
    """
    mix = MIX if mix is None else mix
    kinds, p = list(mix), np.array(list(mix.values()), float)
    rng = np.random.default_rng([seed, 101])
    choice = rng.choice(len(kinds), size=n_docs, p=p / p.sum())
    docs, n_story = [], 0
    for i, k in enumerate(choice):
        kind = kinds[k]
        story = None
        if kind == "story":
            story = make_story(seed, "story_train", n_story)
            n_story += 1
        docs.append(document(kind, make_scene(seed, "train", start + i), rng, story))
    return docs


def caption_corpus(seed: int, split: str, n: int, start: int = 0) -> list[str]:
    """Plain canonical captions of ``n`` scenes of a split (held-out perplexity uses ``val``)."""
    return [canonical_caption(make_scene(seed, split, i)) for i in range(start, start + n)]
