"""Measuring tools for attribute binding in ShapesWorld: per-cell probes and "perfect token" prefixes.

Two questions decide whether a visual prefix can make the frozen toy LM name each object right:

1. Is each cell's colour, shape and size *in* the features? :func:`cell_labels` gives per-cell
   targets, :func:`linear_probe` a logistic probe scored on the occupied cells only (an "empty"
   answer everywhere would otherwise score about 0.75).
2. Can the frozen LM *read* it in that layout? :class:`PerfectTokens` writes a scene as the toy LM's
   pretraining summary (``smallbluecircle topleft, largeredsquare right:``, real word embeddings) and
   lays it out either contiguously, as the LM saw it in pretraining, or in the grid prefix's fixed
   layout: [BOS], then three slots per cell in reading order (object word, place word, ","), an empty
   cell's slots filled with given vectors or removed from attention, then ":". Greedy captions from
   those inputs bound what any projector can achieve in that layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..infer.decoding import Decoder, PlainLM, greedy
from ..toyworld.captions import canonical_caption, compound
from ..toyworld.corpus import summary
from ..toyworld.world import CELLS, COLOURS, SHAPES, SIZES

ATTRIBUTES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES}
SLOTS = 3  # object word, place word, ","


def cell_labels(scenes: list[dict]) -> dict[str, torch.Tensor]:
    """Per attribute, (N, 9) class indices, -1 where the cell is empty (cells row-major)."""
    out = {a: torch.full((len(scenes), 9), -1) for a in ATTRIBUTES}
    for i, scene in enumerate(scenes):
        for o in scene["objects"]:
            for a, values in ATTRIBUTES.items():
                out[a][i, o["cell"]] = values.index(o[a])
    return out


def linear_probe(x_train, y_train, x_val, y_val, max_iter: int = 300, l2: float = 1e-3) -> float:
    """Accuracy on the occupied samples (label >= 0) of ``x_val`` of a multinomial logistic probe
    trained with L-BFGS on the occupied samples of ``x_train`` (features standardised on train)."""
    keep, keep_val = y_train >= 0, y_val >= 0
    x, y, xv, yv = x_train[keep].float(), y_train[keep], x_val[keep_val].float(), y_val[keep_val]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mu) / sd, (xv - mu) / sd
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(x.shape[1], int(y.max()) + 1, generator=g) * 0.01)
    b = torch.nn.Parameter(torch.zeros(int(y.max()) + 1))
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xv @ w + b).argmax(-1) == yv).float().mean())


class PerfectTokens:
    """The scene's summary words as input embeddings of ``lm`` (a Hugging Face causal LM), in a
    contiguous or in the grid's fixed layout, and greedy captions written from them."""

    def __init__(self, lm, tokenizer):
        self.lm, self.tok = lm, tokenizer
        self.E = lm.get_input_embeddings().weight.detach().float()  # (V, d)
        self.bos = tokenizer.bos_token_id

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def contiguous(self, scene: dict, trailing_comma: bool = False):
        """[BOS] + ``smallbluecircle topleft, …:`` -> ((T, d) embeddings, (T,) attention mask)."""
        ids = [self.bos] + self.ids(summary(scene["objects"]) + ("," if trailing_comma else "") + ":")
        return self.E[ids], torch.ones(len(ids), dtype=torch.long)

    def fixed(self, scene: dict, filler, mask_empty: bool = False):
        """[BOS] + 9 cells x 3 slots + ":" -> ((29, d), (29,)); ``filler(cell)`` gives an empty cell's
        (3, d) vectors; ``mask_empty`` removes those slots from attention (positions skip them)."""
        cells = {o["cell"]: o for o in scene["objects"]}
        rows, mask = [self.E[[self.bos]]], [1]
        for c in range(9):
            if c in cells:
                ids = self.ids(" " + compound(cells[c])) + self.ids(" " + CELLS[c]) + self.ids(",")
                if len(ids) != SLOTS:
                    raise ValueError(f"cell {c} takes {len(ids)} tokens, not {SLOTS}")
                rows.append(self.E[ids])
                mask += [1] * SLOTS
            else:
                rows.append(filler(c))
                mask += [0 if mask_empty else 1] * SLOTS
        rows.append(self.E[self.ids(":")])
        return torch.cat(rows), torch.tensor(mask + [1])

    @torch.no_grad()
    def captions(self, prefixes: list[tuple[torch.Tensor, torch.Tensor]], max_new_tokens: int = 40) -> list[str]:
        """Greedy continuation of each (embeddings, mask) prefix up to the first "." (the package's greedy
        loop, :func:`~fromage_mini.infer.decoding.greedy`; prefixes of equal length run as one batch)."""
        stop = self.ids(".")[-1]
        lm = PlainLM(self.lm, embed=lambda ids: self.E[ids])
        out: list[str] = [""] * len(prefixes)
        by_len: dict[int, list[int]] = {}
        for i, (emb, _) in enumerate(prefixes):
            by_len.setdefault(emb.shape[0], []).append(i)
        for idx in by_len.values():
            emb = torch.stack([prefixes[i][0] for i in idx])  # (B, T, d)
            mask = torch.stack([prefixes[i][1] for i in idx])  # (B, T)
            rows: list[list[int]] = [[] for _ in idx]

            def take(j: int, t: int, rows=rows) -> bool:  # a row is finished at its first "."
                rows[j].append(t)
                return t == stop

            greedy(Decoder(lm, emb, mask), max_new_tokens, take)
            for row, i in zip(rows, idx):
                out[i] = self.tok.decode(row).split(".")[0].strip() + "."
        return out

    def learn_filler(self, scenes: list[dict], steps: int, batch: int = 64, lr: float = 1e-2, seed: int = 0):
        """(3, d) filler vectors for every empty cell, learned by Adam on the caption loss of the fixed
        layout (the LM stays frozen): the best an "empty" token can do for this LM."""
        self.lm.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        fill = torch.nn.Parameter(torch.randn(SLOTS, self.E.shape[1], generator=g) * self.E.std())
        opt = torch.optim.Adam([fill], lr=lr)
        pad = self.tok.pad_token_id
        for _ in range(steps):
            idx = torch.randint(len(scenes), (batch,), generator=g).tolist()
            pre = torch.stack([self.fixed(scenes[i], lambda c: fill)[0] for i in idx])  # (B, 29, d)
            caps = [self.ids(" " + canonical_caption(scenes[i])) for i in idx]
            L = max(map(len, caps))
            cid, lab = torch.full((batch, L), pad), torch.full((batch, L), -100)
            for j, c in enumerate(caps):
                cid[j, : len(c)] = lab[j, : len(c)] = torch.tensor(c)
            logits = self.lm(inputs_embeds=torch.cat([pre, self.E[cid]], 1)).logits[:, pre.shape[1] - 1: -1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return fill.detach()
