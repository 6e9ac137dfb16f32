"""Zero-shot question answering about images: the frozen LM answers, the adapters only let it see.

FROMAGe trains on captions alone; whatever question answering it does comes from the frozen LM
reading the visual prefix as if it were text. Two ways to measure it on questions that carry their
answer options (ShapesWorld's ``dialogues_val.json``: ``{"image", "caption", "turns": [{"type",
"question", "answer", "options"}]}``):

(It sits beside :mod:`~fromage_mini.chat`, above ``eval``, because it drives a dialogue.)

- **option ranking** (:func:`rank_options`): every option is scored by its log-likelihood after
  ``context + "Q: <question>\\nA:"`` and the best one is the answer; no generation, no parsing.
- **free answers** (:func:`chat_answers`): the question goes through :class:`~fromage_mini.chat.Dialogue`
  as a user would type it; the greedy answer counts as right when it names the right option and
  no other.

The context is the image (what FROMAGe is for), the true caption as *text* (the upper bound the LM
itself sets: it reads perfect words) or nothing (the prior: what the LM guesses from the question).
"""
from __future__ import annotations

import collections
import re

import torch

CONTEXTS = ("image", "caption", "none")


def question_text(question: str) -> str:
    """The turn text both measures use (the :class:`~fromage_mini.chat.Dialogue` format)."""
    return f"Q: {question}\nA:"


def context_items(kind: str, image, caption: str) -> list:
    """What comes before the question: ``[image]``, ``[caption + "\\n"]`` or ``[]``."""
    if kind == "image":
        return [image]
    if kind == "caption":
        return [caption + "\n"]
    if kind == "none":
        return []
    raise ValueError(f"context must be one of {CONTEXTS}, got {kind!r}")


def names_option(answer: str, option: str, options: list[str]) -> bool:
    """Does a free answer name ``option`` and no other option? Whole words, case-insensitive;
    an option inside a longer option ("top" in "top left") does not count as named."""
    text = " " + re.sub(r"[^a-z0-9 ]+", " ", answer.lower()) + " "

    def spans(o):
        return [(m.start(), m.end()) for m in re.finditer(rf"(?<= ){re.escape(o.lower())}(?= )", text)]

    found = {o: spans(o) for o in options}
    named = set()
    for o, ss in found.items():
        longer = [s for p in options if p != o and o.lower() in p.lower() for s in found[p]]
        if any(not any(a >= la and b <= lb for la, lb in longer) for a, b in ss):
            named.add(o)
    return named == {option}


def _tally(rows: list[tuple[str, bool]]) -> dict:
    by = collections.defaultdict(list)
    for kind, ok in rows:
        by[kind].append(ok)
    out = {k: round(sum(v) / len(v), 3) for k, v in sorted(by.items())}
    out["all"] = round(sum(ok for _, ok in rows) / max(len(rows), 1), 3)
    out["n"] = len(rows)
    return out


@torch.no_grad()
def rank_options(model, dialogues: list[dict], load_image, context: str = "image",
                 normalize: bool = False, progress: bool = False) -> dict:
    """Accuracy of option ranking per question type (and ``"all"``, ``"n"``).

    ``load_image(record)`` gives a record's image; ``normalize``: rank by mean instead of summed
    token log-probability.
    """
    from tqdm.auto import tqdm

    from .infer.prompt import to_features
    from .infer.scoring import log_likelihood

    rows = []
    for rec in tqdm(dialogues, desc=f"QA ({context})", disable=not progress):
        image = None
        if context == "image":  # encoded once, for all of the record's questions
            with torch.no_grad():
                image = to_features(model, [load_image(rec)])[0]
        ctx = context_items(context, image, rec["caption"])
        for t in rec["turns"]:
            scores = log_likelihood(model, ctx + [question_text(t["question"])],
                                    [" " + o for o in t["options"]], normalize=normalize)
            rows.append((t["type"], t["options"][int(scores.argmax())] == t["answer"]))
    return _tally(rows)


def chat_answers(model, dialogues: list[dict], load_image, context: str = "image", index=None,
                 max_new_tokens: int = 12, progress: bool = False, examples: int = 0,
                 ret_scale_factor: float = 1.0):
    """Greedy answers through :class:`~fromage_mini.chat.Dialogue`, one new dialogue per question.

    Returns ``(accuracy per type, examples)``: the first ``examples`` (question, answer, gold)
    triples, and in the accuracy dict ``"ret_rate"``, the share of answers that emitted [RET]
    (no question here asks for an image, so every [RET] is unwanted). ``ret_scale_factor`` goes to
    :func:`~fromage_mini.infer.generate.generate` (1: the model as trained; below 1, [RET] is rarer).
    """
    from tqdm.auto import tqdm

    from .chat import Dialogue

    rows, shown, rets = [], [], 0
    for rec in tqdm(dialogues, desc=f"chat ({context})", disable=not progress):
        image = load_image(rec) if context == "image" else None
        ctx = context_items(context, image, rec["caption"])
        for t in rec["turns"]:
            chat = Dialogue(model, index, context=ctx, max_new_tokens=max_new_tokens,
                            ret_scale_factor=ret_scale_factor)
            result = chat.ask(t["question"])
            text = result.text
            rets += any(p.generated for p in result.retrievals)
            rows.append((t["type"], names_option(text, t["answer"], t["options"])))
            if len(shown) < examples:
                shown.append({"question": t["question"], "answer": text.strip(), "gold": t["answer"]})
    acc = _tally(rows)
    acc["ret_rate"] = round(rets / max(len(rows), 1), 3)
    return acc, shown


__all__ = ["CONTEXTS", "chat_answers", "context_items", "names_option", "question_text", "rank_options"]
