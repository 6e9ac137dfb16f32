"""Caption text for ShapesWorld scenes: the canonical style, varied styles, a parser and a scorer.

Canonical style (what the trainer and :func:`caption_scores` measure against)::

    a small blue circle at the top left and a large red square on the right.

Objects in reading order of their cells, ``a {size} {colour} {shape} {position}``, joined by ", " and
" and ", ending in ".". :func:`styled_caption` writes the same content in other words (synonyms, other
word orders, alt-text-like phrasing, relations between objects), for variety in the LM corpus and for
users who want noisier captions.
"""
from __future__ import annotations

import re

import numpy as np

from .world import COLOURS, SHAPES, SIZES

POSITIONS = ("at the top left", "at the top", "at the top right", "on the left", "in the center",
             "on the right", "at the bottom left", "at the bottom", "at the bottom right")
WHERE = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
NUMBERS = ("zero", "one", "two", "three")


def object_phrase(o: dict) -> str:
    """``a small blue circle at the top left``."""
    return f"a {o['size']} {o['colour']} {o['shape']} {POSITIONS[o['cell']]}"


def join_list(parts: list[str]) -> str:
    """``x``, ``x and y``, ``x, y and z``."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def canonical_caption(scene: dict) -> str:
    """The canonical caption of a scene (deterministic)."""
    return join_list([object_phrase(o) for o in scene["objects"]]) + "."


def compound(o: dict) -> str:
    """The one-word summary token of an object, e.g. ``smallbluecircle``."""
    return f"{o['size']}{o['colour']}{o['shape']}"


# ---------------------------------------------------------------- parsing and scoring

_OBJ_RE = re.compile(r"\ba ({}) ({}) ({}) ({})(?=[ ,.]|$)".format(
    "|".join(SIZES), "|".join(COLOURS), "|".join(SHAPES),
    "|".join(sorted((re.escape(p) for p in POSITIONS), key=len, reverse=True))))


def parse_caption(text: str) -> list[dict]:
    """Parse a canonical-style caption into objects ``{"size", "colour", "shape", "cell"}``.

    Tolerant: it returns every well-formed ``a {size} {colour} {shape} {position}`` phrase it finds, in
    order, and ignores the rest (useful on imperfect generated captions).
    """
    return [{"size": m[1], "colour": m[2], "shape": m[3], "cell": POSITIONS.index(m[4])}
            for m in _OBJ_RE.finditer(text.lower())]


def caption_scores(text: str, objects: list[dict]) -> dict:
    """Score a (generated) caption against a scene's objects.

    Returns ``count_ok`` (the caption names as many well-formed objects as the scene has), ``object_acc``
    (fraction of the scene's objects matched by a parsed object with the same size, colour, shape AND
    cell, each parsed object used at most once) and ``exact`` (the caption equals the canonical one).
    """
    pred = [(p["size"], p["colour"], p["shape"], p["cell"]) for p in parse_caption(text)]
    hits = 0
    for o in objects:
        key = (o["size"], o["colour"], o["shape"], o["cell"])
        if key in pred:
            pred.remove(key)
            hits += 1
    canon = join_list([object_phrase(o) for o in objects]) + "."
    return {"count_ok": len(parse_caption(text)) == len(objects), "object_acc": hits / len(objects),
            "exact": text.strip() == canon}


# ---------------------------------------------------------------- varied styles

SYNONYMS = {
    "small": ("small", "little", "tiny"), "large": ("large", "big", "huge"),
    "circle": ("circle", "disc", "round dot"), "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangle", "pyramid"), "diamond": ("diamond", "rhombus", "diamond"),
    "cross": ("cross", "plus sign", "plus"), "star": ("star", "star", "five-pointed star"),
    "purple": ("purple", "violet", "purple"), "cyan": ("cyan", "turquoise", "light blue"),
}
WHERE_ALT = ("in the top left corner", "near the top", "in the top right corner", "at the left side",
             "in the middle", "at the right side", "in the bottom left corner", "near the bottom",
             "in the bottom right corner")
COUNT_WORD = {1: "one shape", 2: "two shapes", 3: "three shapes"}
STYLES = ("canonical", "synonyms", "where_first", "alt_text", "count_first", "relations", "background")


def _syn(word: str, rng: np.random.Generator) -> str:
    options = SYNONYMS.get(word, (word,))
    return options[rng.integers(len(options))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _relation(a: dict, b: dict) -> str:
    """Spatial relation of object a to object b, from their cells."""
    ra, ca = divmod(a["cell"], 3)
    rb, cb = divmod(b["cell"], 3)
    if ra == rb:
        return "to the left of" if ca < cb else "to the right of"
    if ca == cb:
        return "above" if ra < rb else "below"
    return ("above and to the left of" if ca < cb else "above and to the right of") if ra < rb else \
        ("below and to the left of" if ca < cb else "below and to the right of")


def styled_caption(scene: dict, style: str, rng: np.random.Generator) -> str:
    """The scene's content in one of :data:`STYLES` (random choices drawn from ``rng``)."""
    objs = scene["objects"]
    if style == "canonical":
        return canonical_caption(scene)
    if style == "synonyms":
        ph = [_article(f"{_syn(o['size'], rng)} {_syn(o['colour'], rng)} {_syn(o['shape'], rng)}") + " "
              + (WHERE_ALT if rng.random() < 0.5 else POSITIONS)[o["cell"]] for o in objs]
        return join_list(ph) + "."
    if style == "where_first":
        ph = [f"{POSITIONS[o['cell']]}, a {o['size']} {o['colour']} {o['shape']}" for o in objs]
        return "; ".join(ph) + "."
    if style == "alt_text":
        lead = ("image of ", "a picture showing ", "photo: ", "an illustration of ")[rng.integers(4)]
        ph = [_article(f"{o['colour']} {o['shape']} ({o['size']}, {WHERE[o['cell']]})") for o in objs]
        return lead + join_list(ph) + "."
    if style == "count_first":
        ph = [f"a {o['size']} {o['colour']} {o['shape']} {POSITIONS[o['cell']]}" for o in objs]
        return f"{COUNT_WORD[len(objs)]}: " + join_list(ph) + "."
    if style == "relations":
        if len(objs) == 1:
            o = objs[0]
            return f"a single {o['size']} {o['colour']} {o['shape']} {POSITIONS[o['cell']]}."
        order = [int(i) for i in rng.permutation(len(objs))]
        a = objs[order[0]]
        ph = f"a {a['size']} {a['colour']} {a['shape']} {POSITIONS[a['cell']]}"
        parts = [ph]
        for i in order[1:]:
            b = objs[i]
            parts.append(f"a {b['size']} {b['colour']} {b['shape']} {_relation(b, a)} it")
        return join_list(parts) + "."
    if style == "background":
        bg = {"black": "a black", "grey": "a grey", "gradient": "a dark gradient", "noise": "a noisy grey"}
        return canonical_caption(scene)[:-1] + f" on {bg[scene['background']]} background."
    raise ValueError(f"unknown style {style!r}")


def random_styled_caption(scene: dict, rng: np.random.Generator) -> str:
    """A caption in a random non-canonical style."""
    return styled_caption(scene, STYLES[1 + rng.integers(len(STYLES) - 1)], rng)
