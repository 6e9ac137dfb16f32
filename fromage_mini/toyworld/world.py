"""ShapesWorld scenes: a deterministic generator and a PIL renderer.

A *scene* is a plain JSON-able dict (the "scene record")::

    {"split": "train", "index": 17, "background": "grey", "bg_seed": 123,
     "objects": [{"shape": "circle", "colour": "blue", "size": "small", "cell": 0,
                  "x": 9.5, "y": 11.0, "rgb": [52, 80, 231]}, ...]}

Objects are kept in reading order of their cell (0 = top left … 8 = bottom right), one object per
cell. ``x, y`` (the centre in pixels of the 64×64 image) and ``rgb`` (the jittered colour) are the only
render details, so a record re-renders to the same pixels, and :func:`variant` can change one attribute
while everything else stays put. Every scene is a pure function of ``(seed, split, index)``.
"""
from __future__ import annotations

import copy
import io
import math

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "cyan", "white")
SIZES = ("small", "large")
# Cells in reading order; the names double as the summary words of the LM corpus.
CELLS = ("topleft", "top", "topright", "left", "center", "right", "bottomleft", "bottom", "bottomright")
BACKGROUNDS = ("black", "grey", "gradient", "noise")

RGB = {
    "red": (220, 35, 35), "orange": (250, 140, 20), "yellow": (235, 225, 40), "green": (40, 185, 60),
    "blue": (45, 85, 240), "purple": (150, 55, 205), "cyan": (40, 215, 220), "white": (235, 235, 235),
}
DIAMETER = {"small": 9.0, "large": 17.0}          # pixels across, in the 64-px image
COLOUR_JITTER = 20                                  # ± per channel
N_OBJECTS_P = (0.2, 0.4, 0.4)                       # P(1), P(2), P(3) objects
SPLIT_IDS = {"train": 0, "val": 1, "story_train": 2, "story_val": 3, "test": 4}
_SUPERSAMPLE = 4                                    # draw at 4× and downsample: anti-aliased edges
JPEG = {"format": "JPEG", "quality": 85, "subsampling": 0, "optimize": True}  # shipped images; 4:4:4 keeps colours


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def cell_box(cell: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a grid cell in pixels; the 3×3 grid splits the image in equal thirds."""
    w = IMAGE_SIZE / 3
    r, c = divmod(cell, 3)
    return c * w, r * w, (c + 1) * w, (r + 1) * w


def place(rng: np.random.Generator, shape: str, colour: str, size: str, cell: int) -> dict:
    """One object record: random centre inside its cell (fully inside, 1 px margin) and jittered colour."""
    x0, y0, x1, y1 = cell_box(cell)
    slack = max((x1 - x0 - DIAMETER[size]) / 2 - 1, 0.0)
    x = (x0 + x1) / 2 + rng.uniform(-slack, slack)
    y = (y0 + y1) / 2 + rng.uniform(-slack, slack)
    rgb = np.clip(np.array(RGB[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
    return {"shape": shape, "colour": colour, "size": size, "cell": int(cell),
            "x": round(float(x), 2), "y": round(float(y), 2), "rgb": [int(v) for v in rgb]}


def random_object(rng: np.random.Generator, cell: int) -> dict:
    """An object with uniformly random shape, colour and size in ``cell``."""
    return place(rng, SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))],
                 SIZES[rng.integers(len(SIZES))], cell)


def make_scene(seed: int, split: str, index: int) -> dict:
    """The scene record for ``(seed, split, index)``: 1–3 objects in distinct cells, a background."""
    rng = _rng(seed, split, index)
    n = int(rng.choice(3, p=N_OBJECTS_P)) + 1
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg_seed = int(rng.integers(2**31))
    objects = [random_object(rng, c) for c in cells]
    return {"split": split, "index": index, "background": background, "bg_seed": bg_seed, "objects": objects}


def make_scenes(seed: int, split: str, n: int, start: int = 0) -> list[dict]:
    """Scenes ``start … start+n-1`` of a split (any slice is reproducible on its own)."""
    return [make_scene(seed, split, i) for i in range(start, start + n)]


# ---------------------------------------------------------------- rendering

def _background(name: str, bg_seed: int) -> np.ndarray:
    s = IMAGE_SIZE
    if name == "black":
        return np.zeros((s, s, 3), np.float32)
    if name == "grey":
        return np.full((s, s, 3), 50.0, np.float32)
    if name == "gradient":  # dark blue-grey at the top to black at the bottom
        ramp = np.linspace(60.0, 0.0, s, dtype=np.float32)[:, None, None]
        return np.broadcast_to(ramp * np.array([0.6, 0.7, 1.0], np.float32), (s, s, 3)).copy()
    if name == "noise":     # dark grey with mild pixel noise
        rng = np.random.default_rng(bg_seed)
        return 30.0 + rng.uniform(-6, 6, (s, s, 1)).astype(np.float32).repeat(3, axis=2)
    raise ValueError(f"unknown background {name!r}")


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)]
    if shape == "diamond":
        return [(x, y - r), (x + 0.8 * r, y), (x, y + r), (x - 0.8 * r, y)]
    if shape == "cross":
        w = 0.36 * r
        return [(x - w, y - r), (x + w, y - r), (x + w, y - w), (x + r, y - w), (x + r, y + w), (x + w, y + w),
                (x + w, y + r), (x - w, y + r), (x - w, y + w), (x - r, y + w), (x - r, y - w), (x - w, y - w)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((x + rad * math.cos(a), y + 0.08 * r + rad * math.sin(a)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: dict) -> Image.Image:
    """Draw a scene record as a 64×64 RGB PIL image (anti-aliased by supersampling)."""
    k = _SUPERSAMPLE
    bg = _background(scene["background"], scene["bg_seed"])
    mask_img = Image.new("L", (IMAGE_SIZE * k, IMAGE_SIZE * k), 0)
    colour_img = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), (0, 0, 0))
    dm, dc = ImageDraw.Draw(mask_img), ImageDraw.Draw(colour_img)
    for o in scene["objects"]:
        x, y, r = o["x"] * k, o["y"] * k, DIAMETER[o["size"]] * k / 2
        if o["shape"] == "circle":
            box = [x - r, y - r, x + r, y + r]
            dm.ellipse(box, fill=255)
            dc.ellipse(box, fill=tuple(o["rgb"]))
        else:
            poly = _polygon(o["shape"], x, y, r)
            dm.polygon(poly, fill=255)
            dc.polygon(poly, fill=tuple(o["rgb"]))
    small = (IMAGE_SIZE, IMAGE_SIZE)
    alpha = np.asarray(mask_img.resize(small, Image.BOX), np.float32)[..., None] / 255.0
    # colour drawn on black, box-filtered: premultiplied by coverage, so divide it back out
    col = np.asarray(colour_img.resize(small, Image.BOX), np.float32) / np.maximum(alpha, 1e-6)
    out = bg * (1 - alpha) + np.clip(col, 0, 255) * alpha
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(im: Image.Image) -> bytes:
    """JPEG-encode an image with the shipped settings."""
    buf = io.BytesIO()
    im.save(buf, **JPEG)
    return buf.getvalue()


def jpeg_roundtrip(im: Image.Image) -> Image.Image:
    """Encode and decode as the shipped JPEGs are, so in-memory images match the files users load."""
    return Image.open(io.BytesIO(jpeg_bytes(im))).convert("RGB")


# ---------------------------------------------------------------- variants

def variant(scene: dict, obj: int = 0, **changes) -> dict:
    """The same scene with one object's attributes changed, e.g. ``variant(s, 0, colour="blue")``.

    Accepted keys: ``colour``, ``shape``, ``size``, ``cell`` (moves the object to the centre-relative
    spot of the new cell; the target cell must be free). The colour jitter and every other object are
    kept, so the rendered image differs only where the change is ("the same, but blue").
    """
    new = copy.deepcopy(scene)
    o = new["objects"][obj]
    for key, value in changes.items():
        if key == "colour":
            offset = np.array(o["rgb"]) - np.array(RGB[o["colour"]])
            o["rgb"] = [int(v) for v in np.clip(np.array(RGB[value]) + offset, 0, 255)]
        elif key == "cell":
            if any(p["cell"] == value for i, p in enumerate(new["objects"]) if i != obj):
                raise ValueError(f"cell {value} is occupied")
            ox0, oy0, _ox1, _oy1 = cell_box(o["cell"])
            nx0, ny0, _, _ = cell_box(value)
            o["x"], o["y"] = round(o["x"] - ox0 + nx0, 2), round(o["y"] - oy0 + ny0, 2)
        elif key not in ("shape", "size"):
            raise ValueError(f"cannot change {key!r}")
        o[key] = value
    if "size" in changes:  # keep the (possibly larger) shape inside its cell
        x0, y0, x1, y1 = cell_box(o["cell"])
        m = DIAMETER[o["size"]] / 2 + 1
        o["x"] = round(min(max(o["x"], x0 + m), x1 - m), 2)
        o["y"] = round(min(max(o["y"], y0 + m), y1 - m), 2)
    new["objects"].sort(key=lambda p: p["cell"])
    return new
