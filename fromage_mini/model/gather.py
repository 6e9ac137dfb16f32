"""The process-group queries and the two collectives the contrastive loss needs.

They live below the trainer so that ``losses.info_nce`` can gather negatives from every rank
without importing training code. Without a process group they are identities (world 1, rank 0).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def active() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B_local, ...) on every rank -> (B_global, ...) in rank order; only the local slot has grad.

    As open_clip's ``ClipLoss(gather_with_grad=False, local_loss=False)``: a plain all-gather of
    detached copies, then this rank's own tensor is put back at its slot so the autograd graph
    runs through it (and only it). All ranks must pass the same shape. Identity when not
    distributed.
    """
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by a constant in the backward."""

    @staticmethod
    def forward(ctx, x, factor: float):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, but gradients flowing back through it are multiplied by ``factor``."""
    return x if factor == 1 else _ScaleGrad.apply(x, factor)
