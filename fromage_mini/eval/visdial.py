"""VisDial: rank each round's answer options by their likelihood given the image and the dialogue so
far, and retrieve each dialogue's image from its text. See the package docstring for the two protocols."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data.readers import SkipLog
from ..errors import FromageError
from ..files import read_json
from ..infer.modes import inference
from ..infer.prompt import build_inputs
from ..infer.scoring import candidate_scores, image_vectors, log_likelihood, text_vectors
from ..metrics import ndcg, rank_metrics, target_ranks
from .images import compute_features, skip_counts, trivial_cutoffs, usable_images


@dataclass
class VisDialRound:
    """One round. ``answer`` is None for an unanswered round (the test split's last round): such a
    round is never written into a dialogue text, only its question ends the prompt that ranks it."""

    question: str
    answer: str | None = None
    options: list[str] = field(default_factory=list)
    gt_index: int | None = None


@dataclass
class VisDialDialog:
    image_id: str
    caption: str
    rounds: list[VisDialRound]


def read_visdial(path) -> list[VisDialDialog]:
    """The official VisDial v1.0 JSON: ``data.dialogs[i]`` with ``image_id``, ``caption`` and
    ``dialog[r]`` = ``{question, answer, answer_options, gt_index}`` as indices into
    ``data.questions`` / ``data.answers``.

    The test split gives each dialog's rounds up to an unanswered last one: earlier rounds have no
    ``answer_options``, the last has options but no ``answer`` or ``gt_index``. A missing (or
    negative, as some preprocessed copies pad) answer or gt index is read as None, never guessed.
    """
    def index(r, key):
        i = r.get(key)
        return None if i is None or i < 0 else i

    raw = read_json(path)
    try:
        data = raw["data"]
        qs, ans = data["questions"], data["answers"]
        out = []
        for d in data["dialogs"]:
            rounds = []
            for r in d["dialog"]:
                a = index(r, "answer")
                rounds.append(VisDialRound(qs[r["question"]], None if a is None else ans[a],
                                           [ans[o] for o in r.get("answer_options", [])], index(r, "gt_index")))
            out.append(VisDialDialog(str(d["image_id"]), d.get("caption", ""), rounds))
    except (KeyError, TypeError, IndexError) as e:
        raise FromageError(f"{path}: not a VisDial v1.0 file (bad or missing {e})") from None
    return out


def read_visdial_dense(path) -> dict[str, dict]:
    """Dense annotations -> {image id: {"round_id": 1-based round, "relevance": [M floats]}}."""
    try:
        return {str(a["image_id"]): {"round_id": int(a["round_id"]),
                                     "relevance": a.get("gt_relevance", a.get("relevance"))}
                for a in read_json(path)}
    except (KeyError, TypeError) as e:
        raise FromageError(f"{path}: not a VisDial dense-annotation file (missing {e})") from None


def _question(q: str) -> str:
    return "Q: " + q + "?"


def option_ranks(scores: torch.Tensor) -> list[int]:
    """Scores of M options -> the challenge's ``ranks``: ``ranks[j]`` is option j's 1-based rank
    (1 = highest score), a permutation of 1..M; ties go to the lower index, NaN ranks last."""
    s = scores.float().cpu()
    order = torch.where(s.isnan(), float("-inf"), s).argsort(descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(order) + 1)
    return ranks.tolist()


@inference
def visdial_answer_ranking(model, dialogs: list[VisDialDialog], images: Mapping[str, Any],
                           dense: Mapping[str, dict] | None = None, *, ks=(1, 5, 10),
                           faithful_to_original: bool = False, normalize: bool = False,
                           batch_size: int = 32, return_ranks: bool = False,
                           skip_log: SkipLog | None = None) -> dict:
    """Rank each round's answer options by their likelihood given the image and the dialogue so far.

    Every round with answer options is ranked, with or without ground truth (on the test split:
    each dialog's unanswered last round). Prompt for round r:
    ``[image, "Q: q_1?\\nA: a_1\\n...\\nQ: q_r?\\nA:"]``, the history holding only the answered
    rounds before r; each option is scored as ``log p(" " + option | prompt)`` (sum over its
    tokens; ``normalize``: mean). Dialogues whose image is missing from ``images``, or is a file that
    does not decode (counted by reason in ``skip_log`` and under ``"skips"``), are skipped.

    Returns ``rounds`` (rounds ranked), ``gt_rounds`` (those with a ``gt_index``), R@k, MRR and mean
    rank over the ``gt_rounds`` (absent when there are none, as on test), and NDCG over the dense
    rounds when ``dense`` is given. ``return_ranks``: also ``"submission"``, the challenge's
    entries ``{"image_id", "round_id" (1-based), "ranks"}`` (:func:`option_ranks`), one per ranked
    round. ``faithful_to_original``: see the package docstring (``fromage_mini.eval``).
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    used = usable_images({d.image_id: images[d.image_id] for d in dialogs if d.image_id in images}, skip_log)
    feats = compute_features(model, used, squash=faithful_to_original)
    flat: list[torch.Tensor] = []  # scores of every scored round, dialog by dialog
    where: dict[tuple[int, int], int] = {}  # (dialog index, round index) -> position in flat
    offsets: dict[int, int] = {}
    ranks, n_skipped, submission = [], 0, []
    for di, d in enumerate(dialogs):
        if d.image_id not in feats:
            n_skipped += 1
            continue
        offsets[di] = len(flat)
        history: list[str] = []
        for r, rnd in enumerate(d.rounds):
            if rnd.options:
                s = _option_scores(model, feats[d.image_id], history, rnd, faithful_to_original, normalize,
                                   batch_size)  # (M,)
                where[(di, r)] = len(flat)
                flat.append(s)
                if rnd.gt_index is not None:
                    ranks.append(int(target_ranks(s[None], torch.tensor([rnd.gt_index]))[0]))
                if return_ranks:
                    image_id = int(d.image_id) if d.image_id.isdigit() else d.image_id
                    submission.append({"image_id": image_id, "round_id": r + 1, "ranks": option_ranks(s)})
            if rnd.answer is not None:
                history += [_question(rnd.question), f"A: {rnd.answer}"]
    out: dict = {"rounds": len(flat), "gt_rounds": len(ranks), "skipped_dialogs": n_skipped}
    if ranks:
        out |= rank_metrics(torch.tensor(ranks), ks)
    if dense:
        out |= _dense_ndcg(dialogs, dense, flat, where, offsets, faithful_to_original)
    if return_ranks:
        out["submission"] = submission
    return out | skip_counts(skip_log)


def _option_scores(model, feature: torch.Tensor, history: list[str], rnd: VisDialRound, faithful: bool,
                   normalize: bool, batch_size: int) -> torch.Tensor:
    """Scores (M,) of one round's M answer options given the image and the answered rounds before it."""
    if faithful:  # "...\nA: " with BOS, each option with its own BOS, unshifted
        ctx = build_inputs(model, [feature, "\n".join(history + [_question(rnd.question)]) + "\nA: "])
        cands = [model.tokenizer(o, add_special_tokens=True).input_ids for o in rnd.options]
        return candidate_scores(model, ctx, cands, shift=False, batch_size=batch_size)
    ctx_text = "\n".join(history + [_question(rnd.question)]) + "\nA:"
    return log_likelihood(model, [feature, ctx_text], [" " + o for o in rnd.options],
                          normalize=normalize, batch_size=batch_size)


def _dense_ndcg(dialogs: list[VisDialDialog], dense: Mapping[str, dict], flat: list[torch.Tensor],
                where: dict[tuple[int, int], int], offsets: dict[int, int], faithful: bool) -> dict:
    """``{"NDCG", "dense_rounds"}`` over the rounds with dense relevance (``{}`` when none was scored).
    ``flat``: every scored round's option scores; ``where``: (dialog, round) -> position in it;
    ``offsets``: dialog -> position of its first scored round."""
    rows, rels = [], []
    for di, d in enumerate(dialogs):
        ann = dense.get(d.image_id)
        if ann is None or di not in offsets:
            continue
        if faithful:  # the original's flat index i*10 + round_id: one round late
            pos = offsets[di] + ann["round_id"]
            if pos >= len(flat):
                continue
        else:
            pos = where.get((di, ann["round_id"] - 1))
            if pos is None:
                continue
        rows.append(flat[pos])
        rels.append(torch.tensor(ann["relevance"], dtype=torch.float))
    if not rows:
        return {}
    return {"NDCG": ndcg(torch.stack(rows), torch.stack(rels)), "dense_rounds": len(rows)}


def dialogue_text(d: VisDialDialog, rounds: int = 10) -> str:
    """``"Q: q_1? A: a_1. Q: q_2? A: a_2. ..."`` over the answered rounds among the first ``rounds``
    (the original's format); an unanswered round (test) is left out. "" when none is answered."""
    return " ".join(f"{_question(r.question)} A: {r.answer}." for r in d.rounds[:rounds] if r.answer is not None)


@inference
def visdial_image_retrieval(model, dialogs: list[VisDialDialog], images: Mapping[str, Any], *, ks=(1, 5, 10),
                            rounds: int = 10, faithful_to_original: bool = False,
                            batch_size: int = 16, skip_log: SkipLog | None = None) -> dict:
    """Dialogue -> image retrieval among the dialogues' own images (VisDial "T2I").

    Text side: :func:`dialogue_text` (answered rounds only) followed by [RET]. Corrected: for each
    dialogue, rank all images by cosine. ``faithful_to_original``: for each *image* rank all
    dialogues by ``v · t̂`` with v unnormalised (what the original computed under the T2I label).
    Dialogues whose image is missing, or is a file that does not decode (counted by reason in
    ``skip_log`` and under ``"skips"``), are counted in ``skipped``; those without an answered round
    (a test dialog at round 1) in ``no_answered_rounds``. ``"trivial"`` names the R@k with k >= n.
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    images = usable_images({d.image_id: images[d.image_id] for d in dialogs if d.image_id in images}, skip_log)
    with_image = [d for d in dialogs if d.image_id in images]
    kept = [d for d in with_image if dialogue_text(d, rounds)]
    if not kept:
        raise FromageError("no dialogue has its image available" if not with_image
                           else "no dialogue with its image has an answered round")
    feats = compute_features(model, {d.image_id: images[d.image_id] for d in kept}, squash=faithful_to_original)
    t = F.normalize(text_vectors(model, [dialogue_text(d, rounds) for d in kept], batch_size=batch_size), dim=-1)
    v = image_vectors(model, torch.stack([feats[d.image_id] for d in kept]))
    if faithful_to_original:
        scores, direction = (v @ t.T).cpu(), "image->dialogue (the original's, labelled T2I)"
    else:
        scores, direction = (t @ F.normalize(v, dim=-1).T).cpu(), "dialogue->image"
    ranks = target_ranks(scores, torch.arange(len(kept)))
    out = {"n": len(kept), "skipped": len(dialogs) - len(with_image),
           "no_answered_rounds": len(with_image) - len(kept), "direction": direction}
    out |= {name: val for name, val in rank_metrics(ranks, ks).items() if name.startswith("R@")}
    return out | trivial_cutoffs(ks, len(kept)) | skip_counts(skip_log)
