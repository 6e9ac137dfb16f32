"""What the trainer watches besides the loss curve: setups that are legal but suspicious (one warning
line each), a loss or adapters turning NaN/inf (training stops with one line, before anything
non-finite is saved), and how the run ended (all planned steps, or stopped by ``max_seconds``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import FromageError

RECALL_KS = (1, 5, 10)


def meaningful_ks(n_candidates: int, ks=RECALL_KS) -> list[int]:
    """The cut-offs of ``ks`` that say something among ``n_candidates``: R@k with k >= the number of
    candidates is 1 whatever the model does, so it is left out (R@1 is always kept: it picks the best
    checkpoint)."""
    return [k for k in ks if k == 1 or k < n_candidates]


def warn_suspicious(cfg, train_cache, val_cache, log=print) -> None:
    """One ``warning:`` line for each legal but suspicious setup: warm-up as long as the whole run,
    validation data that is the training data, a validation split too small for R@5/R@10."""
    if cfg.warmup_steps >= cfg.max_steps:
        log(f"warning: warmup_steps={cfg.warmup_steps} >= max_steps={cfg.max_steps}: the learning rate never "
            f"reaches lr={cfg.lr:g} (it ends at {cfg.lr * cfg.max_steps / cfg.warmup_steps:.3g}); "
            "lower warmup_steps or raise max_steps")
    if _same_data(cfg.train_data, cfg.val_data, train_cache, val_cache):
        log(f"warning: the validation data is the training data ({cfg.val_data}): validation recall then "
            "measures memorisation, not generalisation; give val_data a held-out split")
    left_out = [k for k in RECALL_KS if k not in meaningful_ks(len(val_cache))]
    if left_out:
        log(f"warning: the validation split has only {len(val_cache)} rows: "
            f"{', '.join(f'R@{k}' for k in left_out)} left out (with k >= {len(val_cache)} candidates every "
            "image is found); use a larger validation split")


def _same_data(train_spec: str, val_spec: str, train_cache, val_cache) -> bool:
    """Same path, or the same captions with the same features (a copy of the training file)."""
    from ..files import real_path
    from ..paths import resolve

    if real_path(resolve(str(train_spec))) == real_path(resolve(str(val_spec))):
        return True
    if len(train_cache) != len(val_cache) or train_cache.captions != val_cache.captions:
        return False
    return bool(torch.equal(train_cache.all_features(), val_cache.all_features()))


class NonFiniteWatch:
    """Remembers, on the device and without a host sync, the first step whose loss was NaN or inf;
    :meth:`check` (called where the trainer syncs anyway: logging, validation, checkpoints) reads it
    back and also checks the adapters themselves, so nothing non-finite is ever logged or saved."""

    def __init__(self, device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record ``step`` if ``loss`` is not finite and no earlier step was."""
        bad = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(bad, torch.full_like(self.first, step), self.first)

    def first_bad(self, params, step: int) -> int | None:
        """The first step with a non-finite loss, or ``step`` if only the adapters are non-finite, or None."""
        first = int(self.first.item())
        if first >= 0:
            return first
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()
        return None if bool(finite) else step

    @staticmethod
    def stop(step: int, cfg, last: Path | None) -> FromageError:
        """The one-line error that ends a diverged run, naming the step and the likely setting."""
        then = (f"or --resume from the last good checkpoint ({last})" if last is not None
                else "(no checkpoint was saved)")
        return FromageError(
            f"step {step}: the training loss became NaN or infinite, so training stopped and nothing from "
            f"this step on was saved; the learning rate is the likely cause (lr={cfg.lr:g}): lower it, e.g. "
            f"--set lr={cfg.lr / 10:g}, and start again with --overwrite {then}")


def ending(state: dict, cfg) -> dict:
    """How the run ended, for metrics.json: steps done of planned, and whether ``max_seconds`` stopped it."""
    return {"steps_done": state["step"], "steps_planned": cfg.max_steps,
            "stopped_by_time": state["step"] < cfg.max_steps}


def ending_lines(metrics: dict, cfg) -> list[str]:
    """The CLI's closing note when ``max_seconds`` stopped the run early (none otherwise)."""
    if not metrics.get("stopped_by_time"):
        return []
    return [f"note: max_seconds={cfg.max_seconds:g} stopped training after {metrics['steps_done']} of "
            f"{metrics['steps_planned']} planned steps (a slow or busy machine), so these metrics are below "
            "what the full run reaches; finish it with --resume --set max_seconds=None"]
