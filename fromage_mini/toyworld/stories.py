"""Five-scene ShapesWorld stories with a common thread, for contextual retrieval.

One *main* object persists through the five scenes and, at each step, either moves to another cell,
changes colour, changes shape, or stays put while the other objects around it change. Each scene has
its canonical caption and a short *narration* that only makes sense in context::

    scene 1: "first, a small blue circle at the top left."    (+ caption of the whole scene)
    scene 2: "then the blue circle moves to the bottom right."
    scene 3: "then the circle turns red."   ...

Retrieving scene 5's image from its narration alone is ambiguous; with the four earlier scenes as
context it is not (the FROMAGe/VIST contextual-retrieval setting).
"""
from __future__ import annotations

import numpy as np

from .captions import POSITIONS, WHERE, canonical_caption
from .world import BACKGROUNDS, COLOURS, SHAPES, _rng, random_object, variant

THREADS = ("moves", "recolour", "reshape", "stays")
N_SCENES = 5


def _others(rng: np.random.Generator, main: dict) -> list[dict]:
    """0–2 background objects in free cells, never sharing the main object's shape (keeps it unambiguous)."""
    n = int(rng.integers(3))
    free = [c for c in range(9) if c != main["cell"]]
    cells = rng.choice(free, size=n, replace=False)
    out = []
    for c in cells:
        o = random_object(rng, int(c))
        while o["shape"] == main["shape"]:
            o = random_object(rng, int(c))
        out.append(o)
    return out


def _step(rng: np.random.Generator, thread: str, main: dict) -> tuple[dict, str]:
    """The main object's next state and the narration of the change."""
    single = {"objects": [main]}
    if thread == "moves":
        cell = int(rng.choice([c for c in range(9) if c != main["cell"]]))
        new = variant(single, 0, cell=cell)["objects"][0]
        return new, f"then the {main['colour']} {main['shape']} moves to the {WHERE[cell]}."
    if thread == "recolour":
        colour = str(rng.choice([c for c in COLOURS if c != main["colour"]]))
        new = variant(single, 0, colour=colour)["objects"][0]
        return new, f"then the {main['shape']} turns {colour}."
    if thread == "reshape":
        shape = str(rng.choice([s for s in SHAPES if s != main["shape"]]))
        new = variant(single, 0, shape=shape)["objects"][0]
        return new, f"then the {main['colour']} {main['shape']} becomes a {shape}."
    return dict(main), f"then the {main['colour']} {main['shape']} is still {POSITIONS[main['cell']]}."


def make_story(seed: int, split: str, index: int) -> dict:
    """Story ``index`` of a story split (``story_train`` / ``story_val``): thread + five scene records."""
    rng = _rng(seed, split, index)
    thread = THREADS[rng.integers(len(THREADS))]
    main = random_object(rng, int(rng.integers(9)))
    scenes = []
    narration = f"first, a {main['size']} {main['colour']} {main['shape']} {POSITIONS[main['cell']]}."
    for j in range(N_SCENES):
        if j:
            main, narration = _step(rng, thread, main)
        objects = sorted([main] + _others(rng, main), key=lambda o: o["cell"])
        scene = {"split": split, "index": index * N_SCENES + j, "background": BACKGROUNDS[rng.integers(4)],
                 "bg_seed": int(rng.integers(2**31)), "objects": objects}
        scenes.append({"scene": scene, "caption": canonical_caption(scene), "narration": narration})
    return {"id": index, "thread": thread, "scenes": scenes}


def story_text(story: dict) -> str:
    """The story as one LM document: each scene's narration followed by its caption."""
    return " ".join(f"{s['narration']} {s['caption']}" for s in story["scenes"])
