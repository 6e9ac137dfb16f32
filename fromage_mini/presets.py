"""Named presets: a model config plus a training config, overridable from the command line.

| preset      | LM                             | vision                        | data                | runs on      |
|-------------|--------------------------------|-------------------------------|---------------------|--------------|
| toy         | toy OPT (data_samples)         | toy CLIP (data_samples)       | ShapesWorld sample  | CPU, seconds |
| toy-grid    | toy OPT, 3x3 grid prefix       | toy CLIP (patch tokens)       | ShapesWorld sample  | CPU, seconds |
| toy-grid-lm | toy OPT taught the grid layout | toy CLIP (patch tokens)       | ShapesWorld sample  | CPU, minutes |
| smollm2     | SmolLM2-135M-Instruct          | toy CLIP                      | ShapesWorld sample  | CPU, minutes |
| opt-125m    | facebook/opt-125m              | openai/clip-vit-base-patch32  | CC3M sample (yours) | laptop GPU   |
| opt-6.7b    | facebook/opt-6.7b              | openai/clip-vit-large-patch14 | full CC3M (yours)   | one GPU      |
"""
from __future__ import annotations

import dataclasses

from .config import FromageConfig, TrainConfig

SAMPLES = "data_samples"  # resolved by fromage_mini.paths.resolve from any working directory
SMOLLM2 = "cache:backbones/smollm2-135m-instruct"  # written by `fromage-mini backbones smollm2`


PRESETS: dict[str, tuple[dict, dict]] = {
    "toy": (
        dict(lm=f"{SAMPLES}/toy_lm", vision=f"{SAMPLES}/toy_clip", n_visual_tokens=8,
             image_layout="after_bos", ret_init_text=" summary", ret_dim=256, max_len=48, concat_prob=0.0),
        dict(train_data=f"{SAMPLES}/shapesworld/train.tsv", val_data=f"{SAMPLES}/shapesworld/val.tsv",
             batch_size=128, lr=2e-3, warmup_steps=100, lr_decay="cosine", max_steps=300, max_seconds=100,
             val_every=1000,
             caption_eval=500, caption_metric="shapesworld", log_every=25, ckpt_every=200, center_heads=True),
    ),
    "smollm2": (
        dict(lm=SMOLLM2, vision=f"{SAMPLES}/toy_clip",
             n_visual_tokens=4, image_layout="after_bos", ret_dim=256, max_len=48, concat_prob=0.0),
        dict(train_data=f"{SAMPLES}/shapesworld/train.tsv", val_data=f"{SAMPLES}/shapesworld/val.tsv",
             batch_size=32, lr=1e-3, max_steps=400, val_every=200, caption_eval=100,
             caption_metric="shapesworld", log_every=20, ckpt_every=100),
    ),
    "opt-125m": (
        dict(lm="facebook/opt-125m", vision="openai/clip-vit-base-patch32", n_visual_tokens=1, ret_dim=256),
        dict(train_data="data/cc3m_sample/shards", val_data="data/cc3m_val/shards", batch_size=64,
             lr=3e-4, max_steps=3000, val_every=500, caption_eval=100),
    ),
    "opt-6.7b": (
        dict(lm="facebook/opt-6.7b", vision="openai/clip-vit-large-patch14", n_visual_tokens=1, ret_dim=256),
        dict(train_data="data/cc3m/shards", val_data="data/cc3m_val/shards", batch_size=180,
             lr=3e-4, max_steps=20_000, val_every=2000, caption_eval=100),
    ),
}
# smollm2-grid: the smollm2 preset with the grid prefix, its cells named in words (" top left: <cell> ...")
GRID3_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
PRESETS["smollm2-grid"] = ({**PRESETS["smollm2"][0], "visual_prefix": "grid", "grid_size": 3, "projector": "mlp",
                            "cell_names": GRID3_NAMES}, dict(PRESETS["smollm2"][1]))
# toy-grid: the toy preset with the grid visual prefix (3x3 cells of the toy CLIP's patch tokens, MLP projector)
PRESETS["toy-grid"] = ({**PRESETS["toy"][0], "visual_prefix": "grid", "grid_size": 3, "projector": "mlp"},
                       dict(PRESETS["toy"][1]))
# toy-grid-lm: a toy LM pretrained on text that also writes scenes in the named-cell grid layout
# (" topleft: smallbluecircle top: empty ...", toyworld.corpus.GRID_MIX), read through that same layout;
# each cell's 2x2 patch tokens side by side (the shape inside a cell survives, an average loses most of it)
CELL_WORDS = ("topleft", "top", "topright", "left", "center", "right", "bottomleft", "bottom", "bottomright")
PRESETS["toy-grid-lm"] = ({**PRESETS["toy-grid"][0], "lm": f"{SAMPLES}/toy_lm_grid", "cell_names": CELL_WORDS,
                           "cell_pool": "concat"}, dict(PRESETS["toy"][1]))


# each preset's reference curves: the log.csv of a documented run (data_samples/reference_curves/README.md);
# `fromage-mini train --preset NAME` draws its total loss beside the new run's in curves.png
REFERENCE_CURVES = {"toy": f"{SAMPLES}/reference_curves/toy.csv",
                    "smollm2": f"{SAMPLES}/reference_curves/smollm2.csv",
                    "smollm2-grid": f"{SAMPLES}/reference_curves/smollm2_grid.csv"}


def resolve(preset: str, overrides: dict | None = None) -> tuple[FromageConfig, TrainConfig]:
    """Preset name + ``{field: value}`` overrides -> (FromageConfig, TrainConfig)."""
    from .errors import FromageError

    if preset not in PRESETS:
        raise FromageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    m, t = (dict(x) for x in PRESETS[preset])
    mfields = {f.name for f in dataclasses.fields(FromageConfig)}
    tfields = {f.name for f in dataclasses.fields(TrainConfig)}
    for k, v in (overrides or {}).items():
        if k in mfields:
            m[k] = v
        elif k in tfields:
            t[k] = v
        else:
            raise FromageError(f"unknown setting {k!r}; settings are the fields of FromageConfig and TrainConfig")
    return FromageConfig(**m), TrainConfig(**t)


def parse_overrides(pairs) -> dict:
    """``["batch_size=32", "lr=1e-3"]`` (the CLI's ``--set``) -> ``{"batch_size": 32, "lr": 0.001}``."""
    from .errors import FromageError

    out = {}
    for kv in pairs or ():
        if "=" not in kv:
            raise FromageError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        out[k.strip().replace("-", "_")] = parse_value(v.strip())
    return out


def parse_value(text: str):
    """Command-line value -> Python value (ints, floats, bools, None, tuples, else str)."""
    import ast

    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() == "none":
        return None
    try:
        v = ast.literal_eval(text)
        return tuple(v) if isinstance(v, list) else v
    except (ValueError, SyntaxError):
        return text
