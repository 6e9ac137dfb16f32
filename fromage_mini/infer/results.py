"""What :func:`~fromage_mini.infer.generate.generate` returns: text parts and retrieval parts, interleaved.

Shapes: m results per [RET], q retrieval width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TextPart:
    """A stretch of generated text (stop string and special tokens removed)."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class RetrievalPart:
    """What one [RET] brought back: the top ``images_per_ret`` index entries and the query vector.

    scores: (m,) similarity of each result (as the index reports it; cosine for :class:`TensorIndex`).
    ids: m index ids, best first (empty when no index was given or retrieval was spent).
    metadata: one dict per id from ``index.metadata(i)`` (path / url / caption ...).
    vector: (q,) the unnormalised text vector read at the [RET] input position.
    generated: False for the [RET] that ended the prompt (it is not part of the generated text).
    """

    scores: torch.Tensor
    ids: list[int]
    metadata: list[dict]
    vector: torch.Tensor
    generated: bool = True

    def __str__(self) -> str:
        if not self.ids:
            return "[RET]"
        shown = []
        for i, s, m in zip(self.ids, self.scores.tolist(), self.metadata):
            label = m.get("caption") or m.get("path") or m.get("url") or ""
            shown.append(f"#{i} ({s:.3f}) {label}".rstrip())
        return "[RET] -> " + "; ".join(shown)


@dataclass
class GenerationResult:
    """Interleaved output of :func:`generate`.

    parts: ``TextPart`` / ``RetrievalPart`` in the order they were produced.
    ids: every generated token id (the EOS that ended decoding is not included).
    stop_reason: ``"eos"``, ``"stop"`` (a stop string), ``"length"`` (``max_new_tokens``).
    ret_token: the [RET] token's text, used by :attr:`text`.
    """

    parts: list = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    stop_reason: str = "length"
    ret_token: str = "[RET]"

    @property
    def text(self) -> str:
        """The generated text with each [RET] written as its token (what the model 'said')."""
        return "".join(p.text if isinstance(p, TextPart) else self.ret_token if p.generated else ""
                       for p in self.parts)

    @property
    def retrievals(self) -> list[RetrievalPart]:
        return [p for p in self.parts if isinstance(p, RetrievalPart)]

    def __str__(self) -> str:
        out = []
        for p in self.parts:
            s = str(p)
            out.append(f"\n{s}\n" if isinstance(p, RetrievalPart) and p.ids else s)
        return "".join(out).strip()

