"""Peak GPU memory and throughput of adapter training and inference, bf16 vs. nf4 frozen LM.

    python benchmarks/bench_memory_gpu.py                 # OPT-6.7B-sized LM, ViT-L/14, on one GPU
    python benchmarks/bench_memory_gpu.py --tiny          # toy sizes on the CPU, bf16 only (a dry run)

Random weights, nothing downloaded: an OPT LM of the named size is built from its config in
bf16, saved with ``save_pretrained`` to a local temp folder (with a small tokenizer) and loaded
back through ``Fromage(FromageConfig(lm=folder, lm_dtype=...))`` - the code path a user's
``facebook/opt-6.7b`` takes, including ``quant.bnb_config("nf4")`` for the 4-bit run. The vision
tower stays on the CPU for training (features are cached, as the trainer does) and joins on the
GPU for inference.

Per lm_dtype and batch: peak ``torch.cuda.max_memory_allocated`` (and reserved) over a warm-up
step plus ``--steps`` timed steps, samples/s, and the planner's estimate
(``fromage_mini.tools.memory.plan_memory``) for the same row. Writes
``benchmarks/results/memory_gpu.json``, which ``memory.memory_table`` reads.

nf4 needs bitsandbytes and accelerate. If they are missing, every wheel in ``.whl/`` at the repo
root is installed first (``pip install --no-deps --no-index .whl/*.whl``); the wheels that work
with Python 3.12, torch 2.x and CUDA 13 are ``bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl``
(ships libbitsandbytes_cuda130/132.so) and ``accelerate-1.15.0-py3-none-any.whl``:

    pip download --no-deps --python-version 3.12 --platform manylinux_2_24_x86_64 \\
        --only-binary=:all: bitsandbytes==0.50.2 accelerate==1.15.0 -d .whl
"""
from __future__ import annotations

import argparse
import gc
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import build_backbones, write_result  # noqa: E402

from fromage_mini import Fromage, FromageConfig  # noqa: E402
from fromage_mini.tools.memory import GIB, plan_memory  # noqa: E402
from fromage_mini.toyworld.tiny import make_tokenizer  # noqa: E402
from fromage_mini.train.loop import autocast_for  # noqa: E402

L = 24  # caption tokens incl. BOS and [RET]
DTYPE_NAMES = {"bf16": "bfloat16", "nf4": "nf4", "int8": "int8"}


def ensure_bitsandbytes() -> str | None:
    """Install ``.whl/*.whl`` if bitsandbytes/accelerate are missing; return None or why not."""
    need = [m for m in ("bitsandbytes", "accelerate") if importlib.util.find_spec(m) is None]
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
    if need and wheels:
        print(f"installing {', '.join(Path(w).name for w in wheels)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", *wheels],
                       check=False)
        importlib.invalidate_caches()
        need = [m for m in need if importlib.util.find_spec(m) is None]
    return f"{' and '.join(need)} not installed (put the wheels in .whl/)" if need else None


def save_random_lm(size: str, folder: Path, device) -> Path:
    """A random bf16 OPT of ``size`` and a small tokenizer, saved as a Hugging Face folder."""
    lm, vis = build_backbones(size, "toy", device, torch.bfloat16)
    make_tokenizer(folder)  # writes itself to the folder
    lm.save_pretrained(folder, max_shard_size="4GB")
    del lm, vis
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def cuda_context_gib(dev) -> float:
    """Device memory in use outside PyTorch's allocator (context, cuBLAS/cuDNN workspaces)."""
    if dev.type != "cuda":
        return 0.0
    torch.ones(1, device=dev) @ torch.ones(1, 1, device=dev)  # create the context and a cuBLAS handle
    free, total = torch.cuda.mem_get_info(dev)
    return (total - free - torch.cuda.memory_reserved(dev)) / GIB


def place(model: Fromage, dev, vision_on_device: bool) -> None:
    """Adapters (and the LM, unless bitsandbytes already put it there) on ``dev``; the vision
    tower on ``dev`` only for inference."""
    vision, lm = model.vision, model.lm
    model.vision = None
    model.lm = None
    model.to(dev)
    model.lm, model.vision = lm, vision
    if next(lm.parameters()).device.type != dev.type:  # bitsandbytes loads straight onto the GPU
        lm.to(dev)
    vision.to(dev if vision_on_device else "cpu")


def reset(dev) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak(dev, context: float) -> dict:
    if dev.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None, "total_gib": None}
    torch.cuda.synchronize()
    a, r = torch.cuda.max_memory_allocated(dev) / GIB, torch.cuda.max_memory_reserved(dev) / GIB
    return {"peak_allocated_gib": round(a, 3), "peak_reserved_gib": round(r, 3), "total_gib": round(a + context, 3)}


def random_batch(model: Fromage, B: int, dev):
    V = model.lm.get_input_embeddings().num_embeddings
    ids = torch.randint(3, V, (B, L), device=dev)
    ids[ids == model.ret_id] = 3
    ids[:, 0], ids[:, -1] = 2, model.ret_id
    return ids, torch.ones_like(ids)


def measure_train(model, B, dev, steps, context) -> dict:
    ids, mask = random_batch(model, B, dev)
    feats = torch.randn(B, model.vis_dim, device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    ac = autocast_for(dev, "auto")
    model.train()

    def step():
        with ac:
            loss = model(ids, mask, features=feats, concat=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    reset(dev)
    step()  # warm-up (allocates the optimizer state, which the peak includes)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / steps
    return {**peak(dev, context), "samples_per_s": round(B / dt, 2), "ms_per_step": round(dt * 1000, 1)}


@torch.no_grad()
def measure_inference(model, B, dev, steps, context) -> dict:
    """Encode B images, then one captioning-mode forward with hidden states and the KV cache."""
    ids, mask = random_batch(model, B, dev)
    size = model.vision.config.image_size
    px = torch.randn(B, 3, size, size, device=dev)
    ac = autocast_for(dev, "auto")
    model.eval()

    def step():
        with ac:
            prefix = model.visual_embeds(model.image_features(px))
            x, m, _ = model.caption_inputs(prefix, model.embed_tokens(ids), ids, mask)
            model.lm_forward(x, m, use_cache=True)

    reset(dev)
    step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / steps
    return {**peak(dev, context), "samples_per_s": round(B / dt, 2), "ms_per_step": round(dt * 1000, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU, bf16 only (a dry run)")
    ap.add_argument("--lm", default="opt-6.7b")
    ap.add_argument("--vision", default="vit-l/14")
    ap.add_argument("--dtypes", default="bf16,nf4")
    ap.add_argument("--batches", default="32,64,128,180", help="training batch sizes")
    ap.add_argument("--infer-batches", default="32,180")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up)")
    ap.add_argument("--grad-ckpt", action="store_true", help="also measure training with gradient checkpointing")
    ap.add_argument("--workdir", default=None, help="where the random LM is saved (local disk; default: a temp dir)")
    ap.add_argument("--name", default=None, help="result name (default memory_gpu, or memory_tiny_cpu with --tiny)")
    a = ap.parse_args(argv)
    if a.tiny:
        a.lm, a.vision, a.dtypes, a.steps = "toy", "toy", "bf16", min(a.steps, 1)
        a.batches = a.infer_batches = "2,4"
        dev = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run with --tiny for a CPU dry run")
        dev = torch.device("cuda", torch.cuda.current_device())
    name = a.name or ("memory_tiny_cpu" if a.tiny else "memory_gpu")
    dtypes = a.dtypes.split(",")
    batches = [int(b) for b in a.batches.split(",")]
    infer_batches = [int(b) for b in a.infer_batches.split(",")]
    skipped = {}
    if any(d in ("nf4", "int8") for d in dtypes):
        why = ensure_bitsandbytes()
        if why:
            print(f"skipping {[d for d in dtypes if d != 'bf16']}: {why}", flush=True)
            skipped = {d: why for d in dtypes if d != "bf16"}
            dtypes = [d for d in dtypes if d == "bf16"]

    work = Path(tempfile.mkdtemp(prefix="fromage-mem-", dir=a.workdir))
    rows = []
    try:
        context = cuda_context_gib(dev)
        t0 = time.time()
        lm_dir = save_random_lm(a.lm, work / "lm", dev)
        _, vis = build_backbones("toy", a.vision, "cpu", torch.float32)
        print(f"random {a.lm} saved in {time.time() - t0:.0f}s; CUDA context {context:.2f} GiB", flush=True)
        size = a.lm.removeprefix("opt-")
        for dtype in dtypes:
            t0 = time.time()
            torch.manual_seed(0)
            cfg = FromageConfig(lm=str(lm_dir), vision=a.vision, lm_dtype=DTYPE_NAMES[dtype], concat_prob=0.0)
            model = Fromage(cfg, vision=vis)
            print(f"[{dtype}] loaded in {time.time() - t0:.0f}s", flush=True)
            plan = dict(lm=str(lm_dir), vision=vis.config, lm_dtype=dtype, seq_len=L + 1)
            for mode, bs in (("inference", infer_batches), ("train", batches)):
                place(model, dev, vision_on_device=mode == "inference")
                for ckpt in (False, True) if mode == "train" and a.grad_ckpt else (False,):
                    if ckpt:
                        from fromage_mini.model.quant import enable_gradient_checkpointing

                        enable_gradient_checkpointing(model)
                    for B in bs:
                        row = {"lm": size, "lm_dtype": dtype, "mode": mode, "batch": B, "grad_checkpointing": ckpt}
                        try:
                            fn = measure_train if mode == "train" else measure_inference
                            row |= fn(model, B, dev, a.steps, context)
                        except torch.cuda.OutOfMemoryError:
                            row["oom"] = True
                        est = plan_memory(batch=B, mode=mode, grad_checkpointing=ckpt, **plan)
                        row["estimate_gib"] = {k: round(v, 3) for k, v in est.items()}
                        rows.append(row)
                        print(fmt(row), flush=True)
                        reset(dev)
            del model
            reset(dev)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"lm_size": a.lm, "vision": a.vision, "caption_tokens": L, "k": 1, "device": str(dev),
           "note": "total_gib = peak allocated + CUDA context; training reads cached features "
                   "(vision tower on the CPU); inference encodes images on the GPU",
           "skipped": skipped, "rows": rows}
    path = write_result(name, res)
    print(f"wrote {path}")
    return res


def fmt(r: dict) -> str:
    got = "OOM" if r.get("oom") else ("n/a" if r.get("total_gib") is None else f"{r['total_gib']:.2f} GiB")
    ck = " +ckpt" if r["grad_checkpointing"] else ""
    return (f"{r['lm']} {r['lm_dtype']:5s} {r['mode']:9s}{ck} B={r['batch']:4d}: measured {got}, "
            f"estimate {r['estimate_gib']['total']:.2f} GiB, {r.get('samples_per_s', 0):.1f} samples/s")


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
