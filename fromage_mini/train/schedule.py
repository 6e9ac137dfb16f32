"""The learning-rate schedule: linear warm-up, then constant (the original) or a cosine to 0."""
from __future__ import annotations

import math


def lr_at(cfg, step: int) -> float:
    """lr for ``step`` (0-based) under ``cfg`` (a TrainConfig: lr, warmup_steps, lr_decay, max_steps).

    warm-up:  lr · (step + 1) / warmup_steps            for step < warmup_steps
    constant: lr                                         lr_decay = "none" (the original)
    cosine:   lr · ½ (1 + cos(π · min(1, progress)))     lr_decay = "cosine", progress over the rest
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "cosine":  # TrainConfig has checked it is "none" or "cosine"
        frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr
