"""Training throughput: our trainer's step versus the original's scheme, same run, same hardware.

    python benchmarks/bench_train.py --lm opt-125m --vision vit-b/32 --batch 32          # CPU
    python benchmarks/bench_train.py --lm opt-6.7b --vision vit-l/14 --batch 180 --device cuda
    python benchmarks/bench_train.py --modes ours,grid --grid 3                          # pooled vs grid prefix

Mode ``grid`` is ours with the grid visual prefix (G x G cell tokens from ``--grid``, MLP projector),
reading cached (1 + G², D) features; interleaved with ``ours`` (the pooled prefix) its step time is
compared under the same load. The result records each mode's feature-cache size per image (fp16, as
the trainer caches).

Random-weight backbones built from configs (nothing downloaded). Repetitions are interleaved
(ours, original, ours, original, ...) so drift in machine load hits both; the ratio is reported
with its spread. Ours reads cached pooled features (as the trainer does); the original runs the
vision tower on pixels twice per step. FLOPs are counted for the work each
scheme actually does: ours = captioning pass forward + activation backward (4·N per token) +
retrieval pass forward (2·N per token); the original = both passes forward + backward, the tied
head's weight gradient, and two vision forwards.

Caption lengths: by default every caption is L = 24 tokens (no padding anywhere). ``--len-mean M``
draws lengths instead (BOS + Poisson(M) words-as-tokens + [RET], clipped to [3, 24]); the original
pads every caption to 24 (its tokenizer call used padding="max_length"), ours packs real tokens
(``FromageConfig.pack_sequences``). CC3M captions are short (about 10 words on average by the
dataset paper's count), so M = 12 is a plausible stand-in; the lengths here are synthetic, not CC3M's.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_backbones, spread, write_result  # noqa: E402
from original_scheme import OriginalScheme  # noqa: E402

from fromage_mini import Fromage, FromageConfig  # noqa: E402
from fromage_mini.train.loop import PEAK_FLOPS, autocast_for  # noqa: E402

L = 24  # caption length incl. BOS and [RET], as the original's max_len


def lm_flops_per_token(lm) -> float:
    n = sum(p.numel() for n_, p in lm.named_parameters() if "embed" not in n_)
    n += lm.get_input_embeddings().weight.numel()  # output head matmul
    return 2.0 * n


def vision_flops(vision) -> float:
    c = vision.config
    tokens = (c.image_size // c.patch_size) ** 2 + 1
    n = sum(p.numel() for p in vision.parameters())
    return 2.0 * n * tokens


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lm", default="opt-125m")
    ap.add_argument("--vision", default="vit-b/32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per repetition")
    ap.add_argument("--modes", default="ours,original", help="comma list of ours, original, live, grid")
    ap.add_argument("--grid", type=int, default=3, help="cells per side for mode grid")
    ap.add_argument("--name", default=None)
    ap.add_argument("--len-mean", type=float, default=None, help="draw caption lengths (see module doc)")
    ap.add_argument("--no-pack", action="store_true", help="ours without sequence packing")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    gpu = dev.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    torch.manual_seed(0)
    lm, vis = build_backbones(a.lm, a.vision, dev, dtype)
    V = lm.get_input_embeddings().num_embeddings
    B = a.batch
    ids = torch.randint(3, V - 2, (B, L), device=dev)
    ids[:, 0] = 2
    if a.len_mean:
        g = torch.Generator().manual_seed(1)
        n = (torch.poisson(torch.full((B,), a.len_mean), generator=g).long() + 2).clamp(3, L).to(dev)
    else:
        n = torch.full((B,), L, device=dev)
    mask = (torch.arange(L, device=dev)[None] < n[:, None]).long()
    ids = ids.masked_fill(mask == 0, 1)  # OPT's pad id
    last = n - 1  # where [RET] goes
    rows = torch.arange(B, device=dev)
    mean_len = float(n.float().mean())
    px = torch.randn(B, 3, vis.config.image_size, vis.config.image_size, device=dev, dtype=dtype)
    D = vis.config.hidden_size
    feats = torch.randn(B, D, device=dev)
    grid_feats = torch.randn(B, 1 + a.grid ** 2, D, device=dev)  # pooled row + G² cells
    sync = torch.cuda.synchronize if gpu else None

    modes = a.modes.split(",")

    def our_step(prefix=None, **inputs):
        """One optimizer step of our trainer on this batch; ``inputs``: features= or pixel_values=."""
        prefix = prefix or dict(n_visual_tokens=a.k)
        model = Fromage(FromageConfig(lm="random", vision="random", concat_prob=0.0,
                                      pack_sequences=not a.no_pack, **prefix), lm=lm, vision=vis).to(dev)
        our_ids = ids.clone()
        our_ids[rows, last] = model.ret_id
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95))
        ac = autocast_for(dev, "auto")
        model.train()

        def step():
            with ac:
                loss = model(our_ids, mask, **inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    # captioning pass: forward + activation backward (2 + 2 per token per param); retrieval pass:
    # forward only (its backward covers one position, see model/fast_ret.py)
    our_flops = lm_flops_per_token(lm) * (2 * (mean_len + a.k) + mean_len)
    runners = {}
    if "ours" in modes:
        runners["ours"] = (our_step(features=feats), our_flops)
    if "grid" in modes:  # the same step with G² cell tokens as the visual prefix
        g2 = a.grid ** 2
        runners["grid"] = (our_step(dict(visual_prefix="grid", grid_size=a.grid, projector="mlp"), features=grid_feats),
                           lm_flops_per_token(lm) * (2 * (mean_len + g2) + mean_len))
    if "live" in modes:  # ours, but the vision tower runs on pixels every step (no feature cache)
        runners["live"] = (our_step(pixel_values=px), our_flops + vision_flops(vis))
    if "original" in modes:
        orig = OriginalScheme(lm, vis, a.k)
        o_ids = ids.clone()
        o_ids[rows, last] = orig.ret_id
        oparams = orig.trainable()
        oopt = torch.optim.AdamW(oparams, lr=3e-4, betas=(0.9, 0.95))

        def step_orig():
            loss = orig.loss(px, o_ids, last)
            loss.backward()
            orig.after_backward()
            torch.nn.utils.clip_grad_norm_(oparams, 1.0)
            oopt.step()
            oopt.zero_grad(set_to_none=True)
            orig.after_step()

        # two passes with full backward, plus the tied head's weight gradient, plus two vision forwards
        head = 2.0 * lm.get_input_embeddings().weight.numel()
        runners["original"] = (step_orig, lm_flops_per_token(lm) * 2 * (2 * L + a.k) + head * (2 * L + a.k)
                               + 2 * vision_flops(vis))

    # the original's scheme must not have changed the shared LM (ours relies on it being frozen)
    assert not any(p.requires_grad for p in lm.parameters()), "shared LM was unfrozen"
    peak = next((v for k, v in PEAK_FLOPS.items() if gpu and k in torch.cuda.get_device_name()), None)
    times = {m: [] for m in runners}
    mem = {}
    for m, (fn, _) in runners.items():  # warm-up (and peak memory)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        fn()
        if gpu:
            torch.cuda.synchronize()
            mem[m] = torch.cuda.max_memory_allocated() / 2**30
    for r in range(a.reps):
        for m, (fn, _) in runners.items():
            dt = timed_steps(fn, a.steps, sync)
            times[m].append(dt)
            print(f"rep {r} {m:9s} {dt * 1000:8.1f} ms/step  {B / dt:8.1f} samples/s", flush=True)
    res = {"lm": a.lm, "vision": a.vision, "batch": B, "k": a.k, "device": str(dev), "dtype": str(dtype),
           "caption_tokens_mean": mean_len, "len_mean": a.len_mean, "packing": not a.no_pack, "modes": {}}
    for m, (_fn, flops) in runners.items():
        ms = [t * 1000 for t in times[m]]
        sps = [B / t for t in times[m]]
        tflops = [s * flops / 1e12 for s in sps]
        res["modes"][m] = {"ms_per_step": spread(ms), "samples_per_s": spread(sps),
                           "tflops": spread(tflops),
                           "mfu": (spread([t * 1e12 / peak for t in tflops]) if peak else None),
                           "peak_gpu_mem_gib": mem.get(m),
                           "feature_cache_bytes_per_image": 2 * (grid_feats if m == "grid" else feats)[0].numel()}
        res["modes"][m]["cc3m_epoch_hours"] = 3.3e6 / res["modes"][m]["samples_per_s"]["median"] / 3600
    if "ours" in times and "original" in times:
        res["speedup_ours_over_original"] = spread([o / u for o, u in zip(times["original"], times["ours"])])
    if "ours" in times and "grid" in times:
        res["grid_step_over_pooled"] = spread([g / u for g, u in zip(times["grid"], times["ours"])])
    if "ours" in times and "live" in times:
        res["speedup_cached_over_live"] = spread([v / u for v, u in zip(times["live"], times["ours"])])
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    name = a.name or (f"train_{a.lm}_{a.vision.replace('/', '')}_b{B}_{dev.type}"
                      + (f"_len{a.len_mean:g}" if a.len_mean else "") + ("_nopack" if a.no_pack else "")
                      + ("_" + a.modes.replace(",", "-") if a.modes != "ours,original" else "")
                      + (f"{a.grid}" if "grid" in modes else ""))
    path = write_result(name, res)
    print_table(res)
    print(f"wrote {path}")
    return res


def timed_steps(fn, n, sync) -> float:
    if sync:
        sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - t) / n


def print_table(res):
    print("\n| mode | ms/step | samples/s | TFLOP/s | MFU | peak GPU GiB | CC3M epoch (h) | cache KiB/image |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in res["modes"].items():
        mfu = f"{r['mfu']['median']:.1%}" if r["mfu"] else "n/a"
        memg = f"{r['peak_gpu_mem_gib']:.1f}" if r["peak_gpu_mem_gib"] else "n/a"
        print(f"| {m} | {r['ms_per_step']['median']:.0f} | {r['samples_per_s']['median']:.1f} | "
              f"{r['tflops']['median']:.3f} | {mfu} | {memg} | {r['cc3m_epoch_hours']:.1f} | "
              f"{r['feature_cache_bytes_per_image'] / 1024:.1f} |")
    if "speedup_ours_over_original" in res:
        s = res["speedup_ours_over_original"]
        print(f"\nspeed-up ours/original: median {s['median']:.2f}x "
              f"(min {s['min']:.2f}, max {s['max']:.2f}, n={s['n']})")
    if "grid_step_over_pooled" in res:
        s = res["grid_step_over_pooled"]
        print(f"\ngrid step / pooled step: median {s['median']:.2f}x "
              f"(min {s['min']:.2f}, max {s['max']:.2f}, n={s['n']})")
    if "speedup_cached_over_live" in res:
        s = res["speedup_cached_over_live"]
        print(f"\ncached features vs live vision tower: median {s['median']:.2f}x "
              f"(min {s['min']:.2f}, max {s['max']:.2f}, n={s['n']})")


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
