"""Shared helpers for the benchmarks: random-weight backbones at real sizes, machine description."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

LM_SIZES = {  # OPT configs (hidden, layers, heads, ffn)
    "toy": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, ffn_dim=512, vocab_size=512),
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192),
    "opt-6.7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384),
}
VISION_SIZES = {  # CLIP vision configs
    "toy": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                image_size=48, patch_size=8),
    "vit-b/32": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     image_size=224, patch_size=32),
    "vit-l/14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                     image_size=224, patch_size=14),
}


def build_backbones(lm_size: str, vision_size: str, device, lm_dtype=torch.float32):
    """Random-weight OPT LM and CLIP vision tower of the named sizes (nothing downloaded)."""
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, OPTConfig

    kw = dict(LM_SIZES[lm_size])
    kw.setdefault("vocab_size", 50272)
    cfg = OPTConfig(word_embed_proj_dim=kw["hidden_size"], max_position_embeddings=2048, **kw)
    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(cfg, dtype=lm_dtype)
        vis = CLIPVisionModel(CLIPVisionConfig(**VISION_SIZES[vision_size])).to(lm_dtype)
    return lm.eval(), vis.eval()


def machine() -> dict:
    """CPU model, threads, GPU if any, library versions."""
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def timed(fn, sync=None) -> float:
    if sync:
        sync()
    t = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
