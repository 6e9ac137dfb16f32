"""ShapesWorld: the synthetic offline world of fromage_mini, and its toy pretrained backbones.

``DATA_SAMPLES`` is the shipped ``data_samples/`` folder (see ``fromage_mini.paths``); ``TOY_LM``
and ``TOY_CLIP`` are the shipped Hugging Face checkpoints (load with ``AutoModelForCausalLM``/``AutoTokenizer`` and
``CLIPVisionModel``/``AutoImageProcessor``); ``SHAPESWORLD`` holds the image–caption sample.
Rebuild everything with ``python -m fromage_mini.toyworld.build``.
"""
from ..paths import DATA_SAMPLES
from .captions import POSITIONS, STYLES, canonical_caption, caption_scores, compound, parse_caption, styled_caption
from .dialogue import make_dialogue, turn_text
from .stories import make_story, story_text
from .world import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    SIZES,
    jpeg_roundtrip,
    make_scene,
    make_scenes,
    render,
    variant,
)

SHAPESWORLD = DATA_SAMPLES / "shapesworld"
TOY_LM = DATA_SAMPLES / "toy_lm"
TOY_CLIP = DATA_SAMPLES / "toy_clip"
SEED = 0  # the seed data_samples was built with

__all__ = [
    "BACKGROUNDS",
    "CELLS",
    "COLOURS",
    "DATA_SAMPLES",
    "IMAGE_SIZE",
    "POSITIONS",
    "SEED",
    "SHAPES",
    "SHAPESWORLD",
    "SIZES",
    "STYLES",
    "TOY_CLIP",
    "TOY_LM",
    "canonical_caption",
    "caption_scores",
    "compound",
    "jpeg_roundtrip",
    "make_dialogue",
    "make_scene",
    "make_scenes",
    "make_story",
    "parse_caption",
    "render",
    "story_text",
    "styled_caption",
    "turn_text",
    "variant",
]
