"""How much GPU memory a FROMAGe run needs, estimated from configs (no weights loaded).

    from fromage_mini.tools.memory import plan_memory, memory_table
    plan_memory("6.7b", "vit-l/14", lm_dtype="nf4", batch=180, mode="train")
    # {'lm_weights': 3.5, 'vision_weights': 0.0, 'adapters': 0.08, 'activations': ..., 'total': ...}
    print(memory_table(measured="benchmarks/results/memory_gpu.json"))   # the README table, measured rows beside

Parameter counts come from building the model on PyTorch's ``meta`` device (exact for any
architecture, instant, no weights). The rest is a model of what autograd keeps, written out
below so it can be checked; ``benchmarks/bench_memory_gpu.py`` measures the same rows on a GPU
and ``memory_table`` shows both side by side.

What each item assumes (B batch, T tokens, L layers, h hidden, f FFN width, V vocabulary):

* ``lm_weights`` - fp32 4 B/param, bf16 2 B/param. int8 (LLM.int8): every decoder ``Linear``
  weight 1 B/param plus one fp32 scale per output row. nf4 (QLoRA-style, double quant): 0.5
  B/param plus the absmax of each 64-block as 1 byte and a second-level fp32 absmax per 256
  blocks (≈ 0.016 B/param). bitsandbytes keeps the embeddings, the output head (tied or not),
  norms, positional embeddings and biases in 16-bit: counted at 2 B/param.
* ``vision_weights`` - the vision tower in fp32 (as ``backbones.load_vision`` loads it); 0 in
  training with cached features.
* ``adapters`` - fp32: weights 4 B/param at inference; in training + gradient + AdamW's two
  moments = 16 B/param.
* ``activations`` - training: what autograd saves for the backward through the frozen LM. A
  ``Linear`` whose weight needs no gradient saves nothing of its input, so an OPT-style block
  keeps per token the input of each LayerNorm (2h), q, k, v and the attention output of the
  fused attention kernel (4h) and the ReLU output (f): 6h + f elements (gated-SiLU MLPs: 6h +
  3f; int8 adds 3h because bitsandbytes' int8 matmul keeps its input) in the LM's compute dtype
  (2 B; 4 B for fp32). Captioning pass: T = k + max_len tokens. Retrieval pass: the same over
  max_len tokens, or with ``fast_ret_pass`` only [RET]'s one position plus the K/V of the
  caption that its attention keeps (2h per token). Gradient checkpointing keeps each layer's
  input (h per token) and one layer's internals at a time. Plus one layer's worth of scratch
  for the backward, with ``fast_ret_pass`` the hidden states of its no-grad caption pass (alive
  while the [RET] step runs), and for nf4 one dequantized weight. Inference: one no-grad captioning
  forward with every layer's hidden state (``output_hidden_states``), the KV cache, one
  layer's transients, and the vision tower's largest layer when it runs.
* ``logits`` - B·T·V per pass: the LM's 16-bit head output (2 B), our fp32 copy with the [RET]
  column spliced in (4 B) and the fp32 log-softmax cross-entropy keeps (4 B); the retrieval pass
  peaks with one more fp32 masked copy (4 B). Inference: the caption forward's 2 + 4 + 4 B.
* ``cuda_context`` - the CUDA context and library workspaces, outside PyTorch's allocator.

All values are GiB (2**30 bytes).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import FromageError

GIB = 2 ** 30
OPT_SIZES = {  # hidden, layers, heads, ffn (vocabulary 50272, 2048 positions, as facebook/opt-*)
    "125m": (768, 12, 12, 3072),
    "1.3b": (2048, 24, 32, 8192),
    "6.7b": (4096, 32, 32, 16384),
}
VISION_SIZES = {  # CLIP vision towers: hidden, layers, heads, ffn, image size, patch size
    "vit-b/32": (768, 12, 12, 3072, 224, 32),
    "vit-l/14": (1024, 24, 16, 4096, 224, 14),
}
_VISION_ALIASES = {"openai/clip-vit-base-patch32": "vit-b/32", "openai/clip-vit-large-patch14": "vit-l/14"}
LM_DTYPES = ("fp32", "bf16", "int8", "nf4")
NF4_BYTES = 0.5 + (1 + 4 / 256) / 64  # packed 4-bit + double-quantized absmax per 64-block


# ----------------------------------------------------------------------------------------------
# configs
def lm_config(lm):
    """A causal-LM config from a config, a loaded model, a size ("6.7b"), an OPT name or a path."""
    if hasattr(lm, "to_json_string"):
        return lm
    if hasattr(lm, "config"):
        return lm.config
    name = str(lm)
    size = name.lower().removeprefix("facebook/").removeprefix("opt-")
    if size in OPT_SIZES:
        from transformers import OPTConfig

        h, n, a, f = OPT_SIZES[size]
        return OPTConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=a, ffn_dim=f,
                         word_embed_proj_dim=h, vocab_size=50272, max_position_embeddings=2048)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise FromageError(f"no config for LM {name!r} ({e}); use one of {', '.join(OPT_SIZES)} or a "
                           "local model folder") from None


def vision_config(vision):
    """A vision-tower config from a config, a size ("vit-l/14"), a CLIP hub name or a path."""
    if vision is None or hasattr(vision, "to_json_string"):
        return getattr(vision, "vision_config", vision)
    if hasattr(vision, "config"):
        return getattr(vision.config, "vision_config", vision.config)
    name = _VISION_ALIASES.get(str(vision), str(vision).lower())
    if name in VISION_SIZES:
        from transformers import CLIPVisionConfig

        h, n, a, f, img, patch = VISION_SIZES[name]
        return CLIPVisionConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                                intermediate_size=f, image_size=img, patch_size=patch)
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(vision))
    except (OSError, ValueError) as e:
        raise FromageError(f"no config for vision tower {vision!r} ({e})") from None
    return getattr(cfg, "vision_config", cfg)


_COUNTS: dict[str, dict] = {}  # config JSON -> counts


def lm_counts(lm) -> dict:
    """Parameter counts and sizes of a causal LM, from its config on the meta device."""
    cfg = lm_config(lm)
    key = cfg.to_json_string(use_diff=False)
    if key not in _COUNTS:
        _COUNTS[key] = _lm_counts(cfg)
    return _COUNTS[key]


def _lm_counts(cfg) -> dict:
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(cfg)
    head = lm.get_output_embeddings()
    total = sum(p.numel() for p in lm.parameters())  # tied matrices are counted once
    n_lin = rows = 0
    for m in lm.modules():
        if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head:
            n_lin += m.weight.numel()
            rows += m.weight.shape[0] if isinstance(m, torch.nn.Linear) else m.weight.shape[1]
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    h = text.hidden_size
    ffn = next((getattr(text, k) for k in ("ffn_dim", "intermediate_size", "n_inner") if getattr(text, k, None)), 4 * h)
    emb = lm.get_input_embeddings()
    return dict(total=total, linear=n_lin, linear_rows=rows, hidden=h, ffn=ffn, layers=text.num_hidden_layers,
                vocab=emb.num_embeddings, d_embed=emb.embedding_dim, tied=head.weight is emb.weight,
                d_out=head.weight.shape[1], gated=any(n.endswith("gate_proj") for n, _ in lm.named_modules()))


def vision_counts(vision) -> dict:
    """Parameters, width, tokens per image and FFN width of a vision tower (from its config)."""
    cfg = vision_config(vision)
    if cfg is None:
        return dict(total=0, hidden=1024, tokens=0, ffn=0)
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return dict(total=sum(p.numel() for p in model.parameters()), hidden=cfg.hidden_size, tokens=tokens,
                ffn=cfg.intermediate_size)


def lm_weight_bytes(counts: dict, lm_dtype: str) -> float:
    """Bytes of the frozen LM's weights in ``lm_dtype`` (see the module docstring)."""
    if lm_dtype not in LM_DTYPES:
        raise FromageError(f"lm_dtype must be one of {LM_DTYPES}, got {lm_dtype!r}")
    if lm_dtype in ("fp32", "bf16"):
        return counts["total"] * (4 if lm_dtype == "fp32" else 2)
    rest = 2 * (counts["total"] - counts["linear"])
    if lm_dtype == "int8":
        return rest + counts["linear"] + 4 * counts["linear_rows"]
    return rest + NF4_BYTES * counts["linear"]


# ----------------------------------------------------------------------------------------------
def plan_memory(lm, vision=None, *, lm_dtype: str = "bf16", batch: int = 32, mode: str = "train",
                seq_len: int | None = None, k: int = 1, cached_features: bool = True,
                grad_checkpointing: bool = False, fast_ret_pass: bool = True, ret_dim: int = 256,
                grid: int | None = None, projector: str = "linear",
                cuda_context_gib: float = 0.5) -> dict[str, float]:
    """Estimated peak GPU memory in GiB per item, and their ``total``.

    lm: an LM config, size ("125m", "1.3b", "6.7b"), OPT hub name or local model folder.
    vision: a vision config, "vit-b/32" / "vit-l/14", a CLIP hub name, a folder, or None.
    mode: "train" (one adapter-training step) or "inference" (one no-grad captioning forward).
    seq_len: tokens in the captioning pass, k image tokens + the caption (default 24 + k); the
    retrieval pass has ``seq_len - k``.
    grid: g for the grid visual prefix (k = g² tokens, one projector shared by the cells,
    ``projector`` "linear" or "mlp"); None = FROMAGe's pooled prefix with ``k`` tokens.
    """
    from ..model.fromage import expected_adapter_count

    if mode not in ("train", "inference"):
        raise FromageError(f"mode must be 'train' or 'inference', got {mode!r}")
    c, v = lm_counts(lm), vision_counts(vision)
    if grid is not None:
        k = grid * grid
    B, L, h, f, V = batch, c["layers"], c["hidden"], c["ffn"], c["vocab"]
    t_cap = seq_len or 24 + k
    t_ret = t_cap - k
    act = 4 if lm_dtype == "fp32" else 2  # compute dtype bytes (quantized LMs compute in bf16)
    per_tok = 6 * h + (3 * f if c["gated"] else f) + (3 * h if lm_dtype == "int8" else 0)  # one layer
    scratch = c["ffn"] * h * 2 if lm_dtype == "nf4" else 0  # one dequantized weight

    n_adapters = expected_adapter_count(c["d_embed"], c["d_out"], [c["d_out"]], v["hidden"], k, ret_dim, c["tied"])
    if grid is not None:  # one projector for every cell instead of FROMAGe's D -> k·d map
        d, D = c["d_embed"], v["hidden"]
        n_adapters += (D * d + d + (d * d + d if projector == "mlp" else 0)) - (D * d * k + d * k)
    out = {"lm_weights": lm_weight_bytes(c, lm_dtype)}
    if mode == "train":
        out["vision_weights"] = 0 if cached_features else 4 * v["total"]
        out["adapters"] = 16 * n_adapters
        if grad_checkpointing:
            cap = B * t_cap * (L * h + per_tok)
            ret = B * (L * 2 * h * t_ret + per_tok) if fast_ret_pass else B * t_ret * (L * h + per_tok)
        else:
            cap = B * t_cap * L * per_tok
            ret = B * L * (2 * h * t_ret + per_tok) if fast_ret_pass else B * t_ret * L * per_tok
        transient = B * t_cap * per_tok  # the backward's scratch: about one layer's worth
        if fast_ret_pass:  # the no-grad caption pass's hidden states live while [RET]'s step runs
            transient += B * (t_ret - 1) * (L + 1) * h
        out["activations"] = act * (cap + ret + transient) + scratch
        out["logits"] = B * V * (10 * t_cap + 14 * (t_ret - 1))
    else:
        out["vision_weights"] = 4 * v["total"]
        out["adapters"] = 4 * n_adapters
        lm_act = B * t_cap * ((L + 1) * h + 2 * L * h + 4 * h + f)  # hidden states, KV cache, one layer
        vis_act = 4 * B * v["tokens"] * (5 * v["hidden"] + v["ffn"])  # fp32, one layer
        out["activations"] = act * lm_act + vis_act + scratch
        out["logits"] = B * V * t_cap * 10
    out = {key: val / GIB for key, val in out.items()}
    out["cuda_context"] = cuda_context_gib
    out["total"] = sum(out.values())
    return out


def feature_cache_gib(vision, grid: int | None = None, images: int = 1_000_000) -> float:
    """Disk size (GiB) of the frozen-feature cache for ``images`` images, fp16: one pooled vector of
    width D per image, plus g² cell vectors for the grid prefix (``grid=None``: pooled only)."""
    D = vision_counts(vision)["hidden"]
    return images * 2 * D * (1 + (grid * grid if grid else 0)) / GIB


def patch_grid_gib(vision, images: int = 1_000_000) -> float:
    """What caching the tower's full patch grid (every patch token, fp16) would take instead, GiB."""
    v = vision_counts(vision)
    return images * 2 * v["hidden"] * (v["tokens"] - 1) / GIB


# ----------------------------------------------------------------------------------------------
def default_rows() -> list[tuple[str, str, str, int]]:
    """(LM size, lm_dtype, mode, batch) for the README table."""
    return [(size, dtype, mode, b) for size in OPT_SIZES for dtype in ("bf16", "int8", "nf4")
            for mode in ("inference", "train") for b in (32, 180)]


def load_measured(path) -> dict:
    """Rows of ``bench_memory_gpu.py``'s JSON keyed by (lm, lm_dtype, mode, batch); {} if absent.

    Only rows with a measured total and without gradient checkpointing (the table's setting).
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    gpu = data.get("machine", {}).get("gpu", "GPU")
    return {(r["lm"], r["lm_dtype"], r["mode"], int(r["batch"])): {**r, "gpu": gpu} for r in data.get("rows", [])
            if r.get("total_gib") is not None and not r.get("grad_checkpointing")}


def memory_table(rows=None, vision: str = "vit-l/14", measured=None, **kw) -> str:
    """The README's Markdown table: estimates per row, measured GPU peaks beside them where known.

    ``measured``: the JSON ``benchmarks/bench_memory_gpu.py`` writes (none: estimates only).
    ``rows``: (LM size, lm_dtype, mode, batch) tuples (default :func:`default_rows`); ``kw`` goes to
    :func:`plan_memory`. Measured = peak memory PyTorch allocated + the CUDA context, in GiB.
    """
    meas = load_measured(measured) if measured else {}
    lines = ["| LM | weights | mode | batch | LM weights | activations | logits | total (est.) | measured |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for size, dtype, mode, b in rows or default_rows():
        est = plan_memory(size, vision, lm_dtype=dtype, batch=b, mode=mode, **kw)
        m = meas.get((size, dtype, mode, b))
        got = f"**{m['total_gib']:.1f}** measured ({m['gpu']})" if m else ""
        lines.append(f"| OPT-{size} | {dtype} | {mode} | {b} | {est['lm_weights']:.2f} | {est['activations']:.2f} | "
                     f"{est['logits']:.2f} | {est['total']:.1f} | {got} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m fromage_mini.tools.memory [benchmarks/results/memory_gpu.json]
    import sys

    print(memory_table(measured=sys.argv[1] if len(sys.argv) > 1 else None))
