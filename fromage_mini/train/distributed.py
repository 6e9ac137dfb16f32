"""Data-parallel training helpers for ``torchrun`` + ``DistributedDataParallel`` (DDP).

    torchrun --nproc_per_node 8 -m fromage_mini.cli train --preset opt-6.7b --out runs/ddp

Every rank holds the whole frozen LM and the (small) adapters; each rank runs the forward and
backward on its shard of the global batch and DDP averages the adapters' gradients. Nothing here
does anything when the program was not launched distributed (no ``WORLD_SIZE`` > 1 in the
environment): ``world() == 1``, ``is_main()`` is true and ``barrier()`` returns at once, so the
single-process trainer calls the same functions.

The contrastive loss needs negatives from every rank: :func:`all_gather_with_grad` collects the
(B_local, q) vectors into (B_global, q), and ``losses.info_nce`` uses it automatically (it lives in
``model/gather.py``, below the trainer, with the process-group queries it needs) (see its
docstring for why the gathered gradient is scaled by the world size).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ..errors import FromageError
from ..model.gather import active, all_gather_with_grad, rank, scale_grad, world  # noqa: F401 (re-exported)


# ----------------------------------------------------------------------------------------------
# process group
def init_from_env(backend: str | None = None, timeout_s: float = 1800) -> bool:
    """Join the process group that ``torchrun`` (or any launcher) describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through the
    default ``env://`` rendezvous). The backend is NCCL when CUDA is available (and this rank's GPU
    ``cuda:LOCAL_RANK`` becomes the current device), gloo otherwise. Returns True when a group with
    more than one process is active, False (doing nothing) for a plain ``python`` launch or
    ``WORLD_SIZE=1``. Calling it again once initialised is harmless.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise FromageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if "RANK" not in os.environ:
        raise FromageError("WORLD_SIZE is set but RANK is not: launch with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (call once at the end of a distributed run)."""
    if active():
        dist.destroy_process_group()


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that logs and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if active():
        dist.barrier()


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (any picklable value). Use it for decisions that must agree,
    such as stopping on ``max_seconds``, whose clock differs slightly from rank to rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# data and model
def shard_indices(indices, rank: int | None = None, world: int | None = None) -> list:
    """This rank's contiguous slice of a global batch: rank r gets ``indices[r·n : (r+1)·n]``.

    Every rank draws the *same* global batch (same seed, same permutation) and keeps its slice, so
    slot r of an all-gather holds rank r's samples in global-batch order. The global batch must
    divide evenly: with equal local batches DDP's average of per-rank means is the global mean.
    (The CE losses are means over tokens; when the ranks' shards hold different numbers of
    caption tokens, each rank's tokens get slightly different weights than in one process - the
    same approximation as gradient accumulation.)
    """
    here = _rank_world()
    r = here[0] if rank is None else rank
    w = here[1] if world is None else world
    indices = list(indices)
    if w < 1 or not 0 <= r < w:
        raise FromageError(f"rank {r} is outside a world of {w}")
    if len(indices) % w:
        raise FromageError(f"a global batch of {len(indices)} does not split evenly over {w} ranks; "
                           f"use a batch size divisible by {w}")
    n = len(indices) // w
    return indices[r * n: (r + 1) * n]


def _rank_world() -> tuple[int, int]:  # shard_indices' arguments shadow rank() and world()
    return rank(), world()


def wrap_ddp(model: torch.nn.Module, device: torch.device | None = None, **kw):
    """Wrap a Fromage in DDP so that only the adapters take part.

    The frozen backbones are registered as ignored, so DDP neither broadcasts their weights at
    construction (13 GB for OPT-6.7B in bf16) nor syncs their buffers every forward; every rank
    loads the same frozen weights itself. ``find_unused_parameters`` stays False: every adapter
    gets a gradient each step (``ret_output`` exists only for untied LMs, and is then used); pass
    ``find_unused_parameters=True`` if a loss weight is set to 0.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in model.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, frozen)
    device = device or next(p for p in model.parameters() if p.requires_grad).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    kw.setdefault("find_unused_parameters", False)
    kw.setdefault("broadcast_buffers", False)
    return DDP(model, device_ids=ids, **kw)
