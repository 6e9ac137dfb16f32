"""Adapter checkpoints: our own format (safetensors + JSON) and import of the released FROMAGe one.

Our format is a folder with
    adapters.safetensors   only the trained tensors (a few MB for OPT-6.7B)
    fromage_config.json    the FromageConfig, which names the backbones to load
The backbones are loaded by name/path, never stored.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import FromageConfig
from ..errors import FromageError
from ..files import atomic_write, read_json, write_json

WEIGHTS = "adapters.safetensors"
CONFIG = "fromage_config.json"


def save_adapters(model, folder) -> None:
    """Atomically write ``model``'s trained tensors and config to ``folder``."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {n: t.detach().float().cpu().contiguous() for n, t in model.adapter_state_dict().items()}
    with atomic_write(folder / WEIGHTS) as f:
        f.write(save(tensors, metadata={"format": "fromage_mini", "ret_id": str(model.ret_id)}))
    write_json(folder / CONFIG, model.config.to_dict())


def read_adapters(path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning corruption into a one-line error."""
    from safetensors.torch import load

    path = Path(path)
    if not path.exists():
        raise FromageError(f"{path}: checkpoint file not found")
    try:
        return load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types for bad headers/truncation
        raise FromageError(f"{path}: not a readable safetensors file ({e}); re-save or re-download it") from None


def load_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into the model's adapters, checking names and shapes with clear errors."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise FromageError(f"{source}: tensors do not match this model (missing {missing}, unexpected {unexpected})")
    bad = [f"{n} is {tuple(state[n].shape)} but needs {tuple(p.shape)}"
           for n, p in params.items() if n in state and tuple(state[n].shape) != tuple(p.shape)]
    if bad:
        raise FromageError(
            f"{source}: the checkpoint was made for other backbones or sizes than the loaded ones "
            f"({model.config.lm}, d_lm={model.dims.d_embed}; {model.config.vision}, d_vision={model.vis_dim}): "
            + "; ".join(bad)
        )
    check_finite(state, source)
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t.to(params[name].dtype))


def read_pointer(f) -> Path:
    """The checkpoint folder a run's ``last.json``/``best.json`` names (``{"checkpoint": "checkpoints/step_N"}``,
    relative to the run folder); a file of another shape is a one-line :class:`FromageError`."""
    f = Path(f)
    obj = read_json(f)
    if not (isinstance(obj, dict) and isinstance(obj.get("checkpoint"), str) and obj["checkpoint"]):
        raise FromageError(f'{f}: not a checkpoint pointer (expected {{"checkpoint": "checkpoints/step_N"}}); '
                           "fix it to name a checkpoint folder of this run, or delete it")
    return f.parent / obj["checkpoint"]


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors holding NaN or infinity (a damaged file, or one saved from a diverged run)."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise FromageError(f"{source}: {', '.join(sorted(bad))} hold NaN or infinite values (a damaged file, or "
                           "saved from a run whose loss diverged); refusing to load it")


def load_adapters(cls, folder, **overrides):
    """Build the model named by ``folder``'s config (with optional overrides) and load its tensors."""
    from ..paths import resolve

    folder = Path(resolve(str(folder)))
    if not folder.is_dir():
        raise FromageError(f"{folder}: not a checkpoint folder (expected {CONFIG} and {WEIGHTS} inside)")
    try:
        config = FromageConfig.from_dict(read_json(folder / CONFIG))
    except (TypeError, ValueError) as e:
        raise FromageError(f"{folder / CONFIG}: invalid config ({e})") from None
    if overrides:
        config = config.replace(**{k: v for k, v in overrides.items() if k in config.to_dict()})
    backbone_kw = {k: v for k, v in overrides.items() if k not in config.to_dict()}
    model = cls(config, **backbone_kw)
    load_state(model, read_adapters(folder / WEIGHTS), str(folder / WEIGHTS))
    return model


# --------------------------------------------------------------------------------------------------
# the released FROMAGe checkpoint (kohjingyu/fromage: pretrained_ckpt.pth.tar + model_args.json)
RELEASED_KEYS = {
    "model.visual_embeddings.weight": "visual_prefix.weight",
    "model.visual_embeddings.bias": "visual_prefix.bias",
    "model.text_hidden_fcs.0.0.weight": "text_heads.0.0.weight",
    "model.text_hidden_fcs.0.0.bias": "text_heads.0.0.bias",
    "model.visual_fc.weight": "image_head.weight",
    "model.visual_fc.bias": "image_head.bias",
    "model.logit_scale": "logit_scale",
    "ret_input_embeddings.weight": "ret_embedding",
}


def config_from_model_args(args: dict, **overrides) -> FromageConfig:
    """Translate the original ``model_args.json`` into a FromageConfig (unknown fields ignored)."""
    cfg = FromageConfig(
        lm=args.get("opt_version", "facebook/opt-6.7b"),
        vision=args.get("visual_encoder", "openai/clip-vit-large-patch14"),
        n_visual_tokens=int(args.get("n_visual_tokens", 1)),
        ret_dim=int(args.get("shared_emb_dim", 256)),
        ret_layers=tuple(args.get("text_emb_layers", [-1])),
        image_dropout=float(args.get("image_embed_dropout_prob", 0.0)),
        text_dropout=float(args.get("text_embed_dropout_prob", 0.0)),
        max_logit_scale=None,  # the original never clamped
    )
    return cfg.replace(**{k: v for k, v in overrides.items() if k in cfg.to_dict()})


def read_released_state(ckpt_path) -> dict[str, torch.Tensor]:
    """Read the released ``.pth.tar`` safely (weights_only) and map its keys to ours."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.exists():
        raise FromageError(f"{ckpt_path}: released checkpoint not found")
    try:
        blob = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FromageError(f"{ckpt_path}: cannot be read as a plain-tensor checkpoint ({type(e).__name__}); "
                           "refusing to unpickle arbitrary objects") from None
    sd = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(sd, dict):
        raise FromageError(f"{ckpt_path}: no 'state_dict' found")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    missing = sorted(set(RELEASED_KEYS) - set(sd))
    if missing:
        raise FromageError(f"{ckpt_path}: not a released FROMAGe checkpoint (missing {missing})")
    out = {ours: sd[theirs].float() for theirs, ours in RELEASED_KEYS.items()}
    out["ret_embedding"] = out["ret_embedding"].reshape(-1)  # stored as (1, d) or (d,)
    out["logit_scale"] = out["logit_scale"].reshape(())
    return out


def load_released(cls, ckpt_path, model_args_path=None, **overrides):
    """Build the backbones named in ``model_args.json`` (or overrides) and load the released adapters."""
    ckpt_path = Path(ckpt_path)
    model_args_path = Path(model_args_path) if model_args_path else ckpt_path.parent / "model_args.json"
    config = config_from_model_args(read_json(model_args_path), **overrides)
    if len(config.ret_layers) != 1:
        raise FromageError(f"{model_args_path}: only one text_emb_layers entry is supported for import")
    backbone_kw = {k: v for k, v in overrides.items() if k not in config.to_dict()}
    model = cls(config, **backbone_kw)
    state = read_released_state(ckpt_path)
    if model.ret_output is not None:
        raise FromageError(f"{ckpt_path}: the released checkpoint is for a tied LM (OPT); "
                           f"{config.lm} has an untied output head")
    load_state(model, state, str(ckpt_path))
    return model


def write_released_format(model, ckpt_path, model_args_path=None) -> None:
    """Write ``model``'s adapters in the released FROMAGe layout (for stand-ins and round-trip tests)."""
    sd = model.adapter_state_dict()
    theirs = {t: sd[o].to(torch.bfloat16).clone() for t, o in RELEASED_KEYS.items()}
    theirs["ret_input_embeddings.weight"] = theirs["ret_input_embeddings.weight"].reshape(1, -1)
    with atomic_write(ckpt_path) as f:
        torch.save({"state_dict": theirs}, f)
    args = {
        "opt_version": model.config.lm, "freeze_lm": True, "visual_encoder": model.config.vision,
        "freeze_vm": True, "n_visual_tokens": model.config.n_visual_tokens,
        "image_embed_dropout_prob": model.config.image_dropout,
        "text_embed_dropout_prob": model.config.text_dropout, "shared_emb_dim": model.config.ret_dim,
        "text_emb_layers": list(model.config.ret_layers), "retrieval_token_idx": model.ret_id,
    }
    write_json(model_args_path or Path(ckpt_path).parent / "model_args.json", args)
