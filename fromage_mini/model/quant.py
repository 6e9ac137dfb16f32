"""Scaling the frozen LM down: 8-bit / 4-bit weights (bitsandbytes) and activation checkpointing.

Both leave the trained adapters in full precision: quantization only changes how the *frozen*
weights are stored (the LM is run with bf16 compute), and checkpointing only changes which
activations are kept for the backward pass through the frozen LM.

    FromageConfig(lm="facebook/opt-6.7b", lm_dtype="nf4")   # Fromage loads with lm_load_args, then
                                                              # place_beside_quantized_lm puts the rest
    enable_gradient_checkpointing(model)                      # before training
"""
from __future__ import annotations

import functools
import importlib.util
import inspect

import torch
from torch.utils.checkpoint import checkpoint

from ..config import QUANTIZED_DTYPES
from ..errors import FromageError
from .backbones import pick_dtype

INSTALL = "pip install 'bitsandbytes>=0.46.1' 'accelerate>=1.1'"  # transformers 5 loads bnb through accelerate


def bnb_config(kind: str):
    """A ``transformers.BitsAndBytesConfig`` for the frozen LM.

    ``"nf4"``: 4-bit NormalFloat weights with double quantization (the absmax scales are
    themselves quantized) and bf16 compute, as QLoRA. ``"int8"``: LLM.int8() weights.
    Raises :class:`FromageError` when bitsandbytes (or accelerate, which transformers needs to load
    quantized weights) is not installed, or there is no CUDA GPU.
    """
    if kind not in ("int8", "nf4"):
        raise FromageError(f"unknown quantization {kind!r}; use 'int8' or 'nf4'")
    missing = [m for m in ("bitsandbytes", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise FromageError(f"lm_dtype={kind!r} needs {' and '.join(missing)}, not installed: {INSTALL}")
    if not torch.cuda.is_available():
        raise FromageError(f"lm_dtype={kind!r} needs a CUDA GPU (bitsandbytes' quantized weights); "
                           "use lm_dtype='bfloat16' or 'float32' on this machine")
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def lm_load_args(lm_dtype: str, device) -> tuple[torch.dtype, object]:
    """(compute dtype, ``BitsAndBytesConfig`` or None) to load the frozen LM with for ``lm_dtype``:
    a quantised kind computes in bf16; any other is :func:`~.backbones.pick_dtype`'s choice."""
    if lm_dtype in QUANTIZED_DTYPES:
        return torch.bfloat16, bnb_config(lm_dtype)
    return pick_dtype(lm_dtype, device), None


def place_beside_quantized_lm(model, device) -> None:
    """Move everything of a Fromage ``model`` but its LM to ``device``: a bitsandbytes-quantised LM
    was placed on the GPU by its loader (and cannot be moved with ``.to``)."""
    for name, child in model.named_children():
        if name != "lm":
            child.to(device)
    for _, p in model.named_parameters(recurse=False):  # the adapters held directly ([RET] rows, cells, scale)
        p.data = p.data.to(device)


# ----------------------------------------------------------------------------------------------
# activation checkpointing through the frozen LM
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")  # 5.24 calls it `cache`


def enable_gradient_checkpointing(model) -> int:
    """Recompute each decoder layer's activations in the backward pass instead of storing them.

    ``model`` is a Fromage (its ``lm`` is used) or a bare Hugging Face causal LM. Returns the
    number of layers wrapped. Losses and gradients are unchanged; memory for the backward through
    the LM drops from every layer's internals to its inputs (plus one layer's internals at a time).

    Why not just ``lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant":
    False})``: Hugging Face checkpoints a layer only when the LM is in *training* mode, and then
    also turns the KV cache off. Our frozen LM stays in eval mode (training mode would switch its
    dropout on), and ``fast_ret_pass`` needs the cache. So each decoder layer (every
    ``GradientCheckpointingLayer``) gets a forward that uses non-reentrant
    ``torch.utils.checkpoint`` when gradients are enabled and no cache is passed - the captioning
    pass and the plain retrieval pass - and runs normally otherwise (no-grad passes, and the
    one-position [RET] step of the fast retrieval pass, which has almost nothing to store).
    Non-reentrant checkpointing propagates gradients to ``inputs_embeds`` whether or not the
    layer's weights need any, so the adapters behind the visual prefix and [RET] get theirs.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    lm = getattr(model, "lm", model)
    n = 0
    for layer in lm.modules():
        if isinstance(layer, GradientCheckpointingLayer) and "forward" not in layer.__dict__:
            forward = type(layer).forward.__get__(layer)
            layer.forward = functools.partial(_checkpointed_forward, forward, _cache_slots(forward))
            n += 1
    if n == 0:
        raise FromageError(f"{type(lm).__name__} has no decoder layers that can be checkpointed")
    return n


def disable_gradient_checkpointing(model) -> None:
    """Undo :func:`enable_gradient_checkpointing`."""
    for layer in getattr(model, "lm", model).modules():
        fwd = layer.__dict__.get("forward")
        if isinstance(fwd, functools.partial) and fwd.func is _checkpointed_forward:
            del layer.forward


def _cache_slots(forward) -> list[tuple[int | None, str]]:
    """(positional index or None, name) of a layer forward's KV-cache parameters (GPT-2 passes
    its cache positionally, OPT and Llama by keyword)."""
    names = list(inspect.signature(forward).parameters)
    return [(names.index(k), k) if k in names else (None, k) for k in _CACHE_KWARGS]


def _checkpointed_forward(forward, slots, *args, **kwargs):
    cache = any(kwargs.get(k) is not None or (i is not None and i < len(args) and args[i] is not None)
                for i, k in slots)
    if torch.is_grad_enabled() and not cache:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)
