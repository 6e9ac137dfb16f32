"""Sequence packing: run a right-padded batch as fewer, fuller rows, so the frozen LM skips padding.

A batch of B rows of width T, row i holding n_i real tokens at its start, is re-laid into R <= B
rows of width C = max n_i. First-fit decreasing places whole sequences one after another; a
block-diagonal causal mask stops them seeing each other, and position ids restart at 0 for each, so
every token gets the same hidden state as in its own row (up to float rounding). The LM then costs
R·C token-positions instead of B·T:

    row 0: [a a a a a b b b . .]      a, b, c: three captions
    row 1: [c c c c c c c . . .]      .: padding (masked, never read)

Captions vary in length (the original padded every one to 24 tokens), so this is where a step's
time goes when it is not spent on real tokens. Works for any Hugging Face causal LM that accepts a
4-D boolean ``attention_mask`` and ``position_ids`` (OPT, GPT-2, Llama family are tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import IGNORE


@dataclass
class Packing:
    """Where each token of a (B, T) batch goes in the packed (R, C) batch."""

    src: torch.Tensor  # (R, C) index into the flattened (B*T) batch (0 where invalid)
    valid: torch.Tensor  # (R, C) bool, a real token sits here
    position_ids: torch.Tensor  # (R, C) position of the token inside its own sequence
    segment: torch.Tensor  # (R, C) which batch row the token came from (-1 = padding)
    row_of: torch.Tensor  # (B,) packed row of each batch row
    slot_of: torch.Tensor  # (B,) how many sequences precede it in its packed row
    B: int
    T: int

    @property
    def n_rows(self) -> int:
        return self.src.shape[0]

    def attention_mask(self) -> torch.Tensor:
        """(R, 1, C, C) bool: causal inside a sequence, nothing across sequences or into padding."""
        C = self.src.shape[1]
        causal = torch.ones(C, C, dtype=torch.bool, device=self.src.device).tril()
        same = self.segment[:, :, None] == self.segment[:, None, :]
        keep = causal & same & self.valid[:, None, :]
        # padding queries see only themselves (their output is never read; avoids all -inf rows)
        keep |= torch.eye(C, dtype=torch.bool, device=self.src.device) & ~self.valid[:, :, None]
        return keep[:, None]


def plan_packing(lengths: torch.Tensor, T: int) -> Packing:
    """First-fit decreasing packing of sequences with ``lengths`` (B,) into rows of width max(lengths)."""
    device = lengths.device
    n = [int(v) for v in lengths.tolist()]
    C = max(n)
    rows: list[list[int]] = []  # batch rows per packed row
    free: list[int] = []
    for i in sorted(range(len(n)), key=lambda i: -n[i]):
        for r, f in enumerate(free):
            if n[i] <= f:
                rows[r].append(i)
                free[r] -= n[i]
                break
        else:
            rows.append([i])
            free.append(C - n[i])
    R = len(rows)
    src = torch.zeros(R, C, dtype=torch.long)
    pos = torch.zeros(R, C, dtype=torch.long)
    seg = torch.full((R, C), -1, dtype=torch.long)
    row_of = torch.zeros(len(n), dtype=torch.long)
    slot_of = torch.zeros(len(n), dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for slot, i in enumerate(members):
            src[r, col:col + n[i]] = i * T + torch.arange(n[i])
            pos[r, col:col + n[i]] = torch.arange(n[i])
            seg[r, col:col + n[i]] = i
            row_of[i], slot_of[i] = r, slot
            col += n[i]
    return Packing(src.to(device), (seg >= 0).to(device), pos.to(device), seg.to(device), row_of.to(device),
                   slot_of.to(device), len(n), T)


def pack(x: torch.Tensor, p: Packing) -> torch.Tensor:
    """(B, T, ...) -> (R, C, ...); padding slots hold zeros."""
    flat = x.reshape(p.B * p.T, *x.shape[2:])
    out = flat[p.src.reshape(-1)].reshape(*p.src.shape, *x.shape[2:])
    mask = p.valid.reshape(*p.valid.shape, *([1] * (x.dim() - 2)))
    return out * mask.to(out.dtype) if out.is_floating_point() else out.masked_fill(~mask, 0)


def unpack(y: torch.Tensor, p: Packing) -> torch.Tensor:
    """(R, C, ...) -> (B, T, ...); positions that were padding come back as zeros."""
    rest = y.shape[2:]
    out = y.new_zeros(p.B * p.T, *rest)
    keep = p.valid.reshape(-1)
    out = out.index_copy(0, p.src.reshape(-1)[keep], y.reshape(-1, *rest)[keep])
    return out.reshape(p.B, p.T, *rest)


def prefix_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """Real-token counts (B,) if every row's real tokens form a prefix (right padding), else None."""
    n = mask.sum(1)
    ar = torch.arange(mask.shape[1], device=mask.device)
    return n if bool(((ar[None] < n[:, None]) == mask.bool()).all()) else None


def worth_packing(lengths: torch.Tensor) -> bool:
    """Pack only when it removes at least one row's worth of work (otherwise the mask costs for nothing)."""
    return int(lengths.sum()) <= (len(lengths) - 1) * int(lengths.max())


def packable(mask: torch.Tensor, shrink: int = 0) -> torch.Tensor | None:
    """Lengths (B,) to pack a (B, T) batch by, or None when packing does not apply (the real tokens do not
    form a prefix of each row) or would not save work. ``shrink``: tokens left off each row's end (the
    fast retrieval pass packs the captions without their final [RET]: ``shrink=1``)."""
    n = prefix_lengths(mask)
    return n - shrink if n is not None and worth_packing(n - shrink) else None


def concat_pairs(x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, bos_at: int | None):
    """Rows (2i, 2i+1) of (B, T, ...) inputs, mask and labels -> one row [a, b] of their real positions each,
    leaving out b's position ``bos_at`` (its BOS; None: no BOS to leave out). An odd last row stays alone."""
    keep = mask == 1
    xs, ls = [], []
    for i in range(0, x.shape[0] - 1, 2):
        a, b = keep[i].clone(), keep[i + 1].clone()
        if bos_at is not None:
            b[bos_at] = False  # drop the second BOS
        xs.append(torch.cat([x[i][a], x[i + 1][b]]))
        ls.append(torch.cat([labels[i][a], labels[i + 1][b]]))
    if x.shape[0] % 2:
        xs.append(x[-1][keep[-1]])
        ls.append(labels[-1][keep[-1]])
    new_x, new_mask = right_pad(xs, 0)
    new_labels, _ = right_pad(ls, IGNORE)
    return new_x, new_mask.to(mask.dtype), new_labels


def right_pad(rows, value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths (each (n_i, ...), one dtype/device) -> (B, T, ...) and a (B, T) mask.

    Row i fills positions 0..n_i-1; the rest hold ``value`` and mask 0. The one padding routine of
    the package: token ids, embeddings, labels and candidate answers all go through it.
    """
    rows = [torch.as_tensor(r) for r in rows]
    T = max(len(r) for r in rows)
    ref = rows[0]
    out = ref.new_full((len(rows), T, *ref.shape[1:]), value)
    mask = torch.zeros(len(rows), T, dtype=torch.long, device=ref.device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return out, mask
