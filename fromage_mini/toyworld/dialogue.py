"""Question/answer lines about a ShapesWorld scene (colour, shape, size, count, position, existence).

Each turn is ``{"type", "question", "answer", "options"}``; ``options`` lists every plausible answer of
that type (the right one included), so a model can be scored by ranking them (VisDial-style). The
text form of a turn is ``Q: what colour is the circle?\\nA: blue``.
"""
from __future__ import annotations

import numpy as np

from .captions import NUMBERS, WHERE, canonical_caption
from .world import COLOURS, SHAPES, SIZES


def _unique(objs: list[dict], key: str) -> list[dict]:
    """Objects whose value of ``key`` occurs once in the scene (so a question about it is unambiguous)."""
    vals = [o[key] for o in objs]
    return [o for o in objs if vals.count(o[key]) == 1]


def candidate_turns(scene: dict, rng: np.random.Generator) -> list[dict]:
    """All question types that are answerable for this scene, one random instance of each."""
    objs = scene["objects"]
    turns = [{"type": "count", "question": "how many shapes are there?", "answer": NUMBERS[len(objs)],
              "options": list(NUMBERS[1:])}]
    by_shape = _unique(objs, "shape")
    if by_shape:
        o = by_shape[rng.integers(len(by_shape))]
        turns.append({"type": "colour", "question": f"what colour is the {o['shape']}?", "answer": o["colour"],
                      "options": list(COLOURS)})
        turns.append({"type": "size", "question": f"is the {o['shape']} small or large?", "answer": o["size"],
                      "options": list(SIZES)})
    by_colour = _unique(objs, "colour")
    if by_colour:
        o = by_colour[rng.integers(len(by_colour))]
        turns.append({"type": "shape", "question": f"what shape is the {o['colour']} one?", "answer": o["shape"],
                      "options": list(SHAPES)})
        turns.append({"type": "where", "question": f"where is the {o['colour']} {o['shape']}?",
                      "answer": WHERE[o["cell"]], "options": list(WHERE)})
    cell = int(rng.integers(9))
    at = [o for o in objs if o["cell"] == cell]
    turns.append({"type": "what_at", "question": f"what is at the {WHERE[cell]}?",
                  "answer": f"a {at[0]['size']} {at[0]['colour']} {at[0]['shape']}" if at else "nothing",
                  "options": None})
    # existence: half the time ask about an object that is there (colour+shape), else a random one
    if rng.random() < 0.5:
        o = objs[rng.integers(len(objs))]
        colour, shape = o["colour"], o["shape"]
    else:
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
    present = any(o["colour"] == colour and o["shape"] == shape for o in objs)
    turns.append({"type": "exists", "question": f"is there a {colour} {shape}?", "answer": "yes" if present else "no",
                  "options": ["yes", "no"]})
    # fill the free-form options of what_at: the answer plus distractors of the same form
    for t in turns:
        if t["options"] is None:
            opts = {t["answer"], "nothing"}
            while len(opts) < 8:
                opts.add(f"a {SIZES[rng.integers(2)]} {COLOURS[rng.integers(8)]} {SHAPES[rng.integers(6)]}")
            t["options"] = sorted(opts)
    return turns


def make_dialogue(scene: dict, rng: np.random.Generator, n_turns: int = 4) -> list[dict]:
    """Up to ``n_turns`` distinct question types about the scene, in random order."""
    turns = candidate_turns(scene, rng)
    order = rng.permutation(len(turns))[:n_turns]
    return [turns[i] for i in order]


def turn_text(turn: dict) -> str:
    """``Q: …?\\nA: …``."""
    return f"Q: {turn['question']}\nA: {turn['answer']}"


def dialogue_text(scene: dict, turns: list[dict]) -> str:
    """A whole dialogue document: the canonical caption, then one Q/A pair per line."""
    return canonical_caption(scene) + "\n" + "\n".join(turn_text(t) for t in turns)
