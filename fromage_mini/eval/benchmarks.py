"""Evaluations: caption↔image recall, VIST contextual retrieval, VisDial answer ranking and retrieval.

The default is the *corrected* protocol. ``faithful_to_original=True`` reproduces the original
scripts' quirks (reference §7), which changes the published numbers:

=====================  ==========================================  ==========================================
eval                   corrected (default)                         faithful_to_original=True
=====================  ==========================================  ==========================================
VIST retrieval         captions sorted by                          file order; a BOS before *every* caption;
                       ``worker_arranged_photo_order``; one BOS;   images squashed to 224×224 first
                       images through the tower's own processor
VisDial answers        log p(answer | image, dialogue), causal     cross-entropy *without* the shift (logit t
                       shift, answer tokenized without BOS;        scores token t), a BOS before each option;
                       NDCG on round ``round_id - 1`` (1-based)    NDCG on the flat index ``i·10 + round_id``
                                                                   (one round late); 224×224 squash
VisDial retrieval      dialogue → image (T2I), cosine              ranks dialogues per image (I→T, labelled
                                                                   T2I), unnormalised image vectors; squash
=====================  ==========================================  ==========================================

Images can be given everywhere as PIL images, file paths, (D,) pooled features or (3, H, W)
pixels; features are computed once per image (:func:`compute_features`).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.readers import SkipLog, is_inside, read_table
from ..errors import FromageError
from ..files import read_json, write_json
from ..infer.generate import build_inputs, inference
from ..infer.scoring import candidate_scores, image_vectors, log_likelihood, text_vectors
from ..metrics import ndcg, rank_metrics, recall_at_k, target_ranks
from ..model import load_model
from .images import compute_features, find_images, skip_counts, trivial_cutoffs, usable_images


# ---------------------------------------------------------------------------------------------
# caption <-> image recall
@inference
def recall_at_k_dataset(model, pairs, ks=(1, 5, 10), *, batch_size: int = 32,
                        progress: bool = False, skip_log: SkipLog | None = None) -> dict[str, float]:
    """Recall@k over a set of (caption, image) pairs, both directions, among the set's own items.

    Text side: ``</s> caption [RET]`` (as in training); image side: the image head. Cosine scores.
    Returns ``{"n", "t2i_R@k", "i2t_R@k"}``, plus ``"trivial"`` naming the R@k with k >= n (1 whatever
    the model does) and ``"skips"`` (reason -> count) for pairs whose image file does not decode, which
    are left out. ``progress``: a bar over the images (the slow part).
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    pairs = list(pairs)
    usable = usable_images({str(i): im for i, (_, im) in enumerate(pairs)}, skip_log)
    pairs = [pr for i, pr in enumerate(pairs) if str(i) in usable]
    if not pairs:
        raise FromageError("no (caption, image) pairs to evaluate")
    feats = compute_features(model, {str(i): im for i, (_, im) in enumerate(pairs)}, batch_size=batch_size,
                             progress=progress)
    t = F.normalize(text_vectors(model, [c for c, _ in pairs], batch_size=batch_size), dim=-1)
    v = F.normalize(image_vectors(model, torch.stack(list(feats.values())), batch_size=batch_size), dim=-1)
    scores = (t @ v.T).cpu()  # (N, N): caption i against image j
    ks = [k for k in ks if k <= len(pairs)]
    out: dict[str, float] = {"n": len(pairs)}
    out |= {f"t2i_{name}": val for name, val in recall_at_k(scores, ks).items()}
    out |= {f"i2t_{name}": val for name, val in recall_at_k(scores.T, ks).items()}
    return out | trivial_cutoffs(ks, len(pairs)) | skip_counts(skip_log)


def read_pairs(path, image_root=None, *, skip_log=None, allow_outside_root: bool = False) -> list[tuple[str, Path]]:
    """(caption, image path) pairs from a JSON list (``{"caption", "image"}`` objects or 2-lists)
    or a TSV/CSV with ``caption`` and ``image`` columns, read by the training reader's row parser
    (:func:`~fromage_mini.data.readers.read_table`). Relative image paths are resolved against
    ``image_root`` (default: the file's folder). Bad rows are skipped and counted in ``skip_log``
    (``non_utf8``, ``malformed_row``, ``empty_caption``, and ``outside_root`` for a path leading outside
    the root unless ``allow_outside_root``); images are not opened here (see :func:`~.images.usable_images`)."""
    from ..paths import resolve

    skip_log = SkipLog() if skip_log is None else skip_log
    path = Path(resolve(str(path)))
    root = Path(resolve(str(image_root))) if image_root else path.parent
    rows = enumerate(read_json(path)) if path.suffix == ".json" else read_table(path, skip_log=skip_log)
    pairs = []
    for key, r in rows:
        try:
            caption, image = (r["caption"], r["image"]) if isinstance(r, dict) else (r[0], r[1])
        except (KeyError, IndexError, TypeError):
            skip_log.add("malformed_row", str(key), repr(r)[:80])
            continue
        if caption is None or not str(caption).strip():  # JSON null is no caption, not the word "None"
            skip_log.add("empty_caption", str(key))
        elif image is None or isinstance(image, (dict, list)):
            skip_log.add("malformed_row", str(key), repr(r)[:80])
        elif not (allow_outside_root or is_inside(root / str(image), root)):
            skip_log.add("outside_root", str(key), str(image))
        else:
            pairs.append((str(caption).strip(), root / str(image)))
    return pairs


# ---------------------------------------------------------------------------------------------
# contextual image retrieval (VIST, ShapesWorld stories)
@dataclass
class Story:
    """Captions and image ids of one story. ``order``: each entry's position as the worker arranged it."""

    id: str
    captions: list[str]
    images: list[str]
    order: list[int] | None = None

    def in_order(self) -> Story:
        """The story sorted by ``order`` (the original kept the file order)."""
        if self.order is None:
            return self
        idx = sorted(range(len(self.order)), key=lambda i: self.order[i])
        return Story(self.id, [self.captions[i] for i in idx], [self.images[i] for i in idx],
                     sorted(self.order))


def read_vist(path) -> tuple[list[Story], dict[str, str]]:
    """The official VIST story-in-sequence JSON -> (stories in file order, {image id: url}).

    ``annotations`` is a list of one-element lists ``[{story_id, photo_flickr_id, text,
    worker_arranged_photo_order, ...}]``; entries are grouped by ``story_id`` (first-seen order).
    ``images`` entries give ``id`` and ``url_o`` (``url_m`` as a fallback).
    """
    raw = read_json(path)
    try:
        stories: dict[str, Story] = {}
        for ann in raw["annotations"]:
            a = ann[0] if isinstance(ann, list) else ann
            sid = str(a["story_id"])
            s = stories.setdefault(sid, Story(sid, [], [], []))
            s.captions.append(a["text"])
            s.images.append(str(a["photo_flickr_id"]))
            s.order.append(int(a["worker_arranged_photo_order"]))
        urls = {str(im["id"]): im.get("url_o") or im.get("url_m") for im in raw.get("images", [])}
    except (KeyError, TypeError, IndexError) as e:
        raise FromageError(f"{path}: not a VIST story-in-sequence file (missing {e})") from None
    return list(stories.values()), {k: u for k, u in urls.items() if u}


def read_story_list(path, caption_key: str = "caption", image_key: str = "image", image_root=None, *,
                    skip_log=None, allow_outside_root: bool = False) -> tuple[list[Story], dict[str, Path]]:
    """ShapesWorld-style stories: a JSON list of stories, each a list of ``{"caption", "image"}``
    entries (or a dict holding that list under ``"scenes"``/``"entries"``, with an optional ``"id"``).

    Returns (stories, {image id: path}); an image value is a path relative to ``image_root``
    (default: the JSON file's folder) and is its own id. Change the keys for other layouts. An image
    path leading outside the root is left out of the paths (its story is then skipped) and counted as
    ``outside_root`` in ``skip_log``, unless ``allow_outside_root``.
    """
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    stories, paths = [], {}
    for n, st in enumerate(read_json(path)):
        sid = str(n)
        if isinstance(st, dict):
            sid = str(st.get("id", n))
            st = st.get("scenes") or st.get("entries") or []
        try:
            caps = [e[caption_key] for e in st]
            ims = [str(e[image_key]) for e in st]
        except (KeyError, TypeError) as e:
            raise FromageError(f"{path}: story {sid} has an entry without {e}") from None
        stories.append(Story(sid, caps, ims))
        for im in ims:
            if allow_outside_root or is_inside(root / im, root):
                paths[im] = root / im
            elif skip_log is not None:
                skip_log.add("outside_root", im)
    return stories, paths


def story_prompt(story: Story, images: Mapping[str, Any], n_captions: int = 5, n_images: int = 4) -> list:
    """``[caption_1, image_1, ..., image_{L-1}, caption_L]`` keeping the last ``n_captions``
    captions and the last ``n_images`` context images (the paper's Table 1 settings)."""
    L = len(story.captions)
    prompt = []
    for j in range(L - 1):
        if j >= L - n_captions:
            prompt.append(story.captions[j])
        if j >= L - 1 - n_images:
            prompt.append(images[story.images[j]])
    prompt.append(story.captions[-1])
    return prompt


@inference
def contextual_retrieval(model, stories: list[Story], images: Mapping[str, Any], *, n_captions: int = 5,
                         n_images: int = 4, ks=(1, 5, 10), faithful_to_original: bool = False,
                         batch_size: int = 16, skip_log: SkipLog | None = None) -> dict[str, float]:
    """Retrieve each story's last image from its earlier captions and images (VIST protocol).

    The prompt is :func:`story_prompt` followed by [RET]; candidates are all of ``images``
    (id -> PIL / path / feature), minus the story's earlier images; stories with an image missing
    from ``images``, or given as a file that does not decode (counted by reason in ``skip_log``, as the
    CLI does), are skipped. Scores are cosine similarities. See the module docstring for what
    ``faithful_to_original`` changes (its 224×224 squash applies to images given as PIL or paths;
    precomputed features are used as given). Returns ``{"n", "skipped", "candidates", "R@k"...}``, plus
    ``"trivial"`` (R@k with k >= every story's candidates) and ``"skips"`` when there are any.
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    feats = compute_features(model, usable_images(images, skip_log), squash=faithful_to_original)
    ids = list(feats)
    col = {k: i for i, k in enumerate(ids)}
    kept = [s if faithful_to_original else s.in_order() for s in stories]
    kept = [s for s in kept if all(i in col for i in s.images)]
    if not kept:
        raise FromageError("no story has all of its images available")
    prompts = [story_prompt(s, feats, n_captions, n_images) for s in kept]
    t = text_vectors(model, prompts, batch_size=batch_size, bos="per_text" if faithful_to_original else "once")
    v = image_vectors(model, torch.stack([feats[k] for k in ids]))
    scores = (F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).T).cpu()  # (n_stories, n_candidates)
    for row, s in enumerate(kept):
        scores[row, [col[i] for i in s.images[:-1]]] = float("-inf")
    target = torch.tensor([col[s.images[-1]] for s in kept])
    ranks = target_ranks(scores, target)
    out = {"n": len(kept), "skipped": len(stories) - len(kept), "candidates": len(ids)}
    out |= {name: val for name, val in rank_metrics(ranks, ks).items() if name.startswith("R@")}
    most = max(len(ids) - len(set(s.images[:-1])) for s in kept)  # candidates left to the richest story
    return out | trivial_cutoffs(ks, most) | skip_counts(skip_log)


# ---------------------------------------------------------------------------------------------
# VisDial
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
    round. ``faithful_to_original``: see the module docstring.
    """
    skip_log = SkipLog() if skip_log is None else skip_log
    used = usable_images({d.image_id: images[d.image_id] for d in dialogs if d.image_id in images}, skip_log)
    feats = compute_features(model, used, squash=faithful_to_original)
    tok = model.tokenizer
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
                if faithful_to_original:  # "...\nA: " with BOS, each option with its own BOS, unshifted
                    ctx = build_inputs(model, [feats[d.image_id], "\n".join(history + [_question(rnd.question)])
                                               + "\nA: "])
                    cands = [tok(o, add_special_tokens=True).input_ids for o in rnd.options]
                    s = candidate_scores(model, ctx, cands, shift=False, batch_size=batch_size)
                else:
                    ctx_text = "\n".join(history + [_question(rnd.question)]) + "\nA:"
                    s = log_likelihood(model, [feats[d.image_id], ctx_text], [" " + o for o in rnd.options],
                                       normalize=normalize, batch_size=batch_size)
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
        rows, rels = [], []
        for di, d in enumerate(dialogs):
            ann = dense.get(d.image_id)
            if ann is None or di not in offsets:
                continue
            if faithful_to_original:  # the original's flat index i*10 + round_id: one round late
                pos = offsets[di] + ann["round_id"]
                if pos >= len(flat):
                    continue
            else:
                pos = where.get((di, ann["round_id"] - 1))
                if pos is None:
                    continue
            rows.append(flat[pos])
            rels.append(torch.tensor(ann["relevance"], dtype=torch.float))
        if rows:
            out["NDCG"] = ndcg(torch.stack(rows), torch.stack(rels))
            out["dense_rounds"] = len(rows)
    if return_ranks:
        out["submission"] = submission
    return out | skip_counts(skip_log)


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


# ---------------------------------------------------------------------------------------------
# command line: fromage-mini eval --model CKPT {recall,vist,visdial} ...
def _run(args) -> int:
    model = load_model(args.model, args.device)
    ks = args.ks
    faithful = args.faithful_to_original
    skips, outside = SkipLog(), args.allow_outside_root  # bad rows and images: skipped, counted, reported
    if args.task == "recall":
        pairs = read_pairs(args.pairs, args.image_root, skip_log=skips, allow_outside_root=outside)[: args.limit]
        result = recall_at_k_dataset(model, pairs, ks, batch_size=args.batch_size, progress=True, skip_log=skips)
    elif args.task == "vist":
        if args.stories:
            stories, paths = read_story_list(args.stories, image_root=args.images, skip_log=skips,
                                             allow_outside_root=outside)
        else:
            if not (args.annotations and args.images):
                raise FromageError("vist needs --annotations SIS.json --images DIR, or --stories FILE")
            stories, _ = read_vist(args.annotations)
            found = find_images(args.images)
            used = {i for s in stories for i in s.images}
            paths = {i: found[i] for i in used if i in found}
        stories = stories[: args.limit]  # a story with a bad image is skipped, the image counted in skips
        result = contextual_retrieval(model, stories, paths, n_captions=args.captions, n_images=args.context_images,
                                      ks=ks, faithful_to_original=faithful, batch_size=args.batch_size,
                                      skip_log=skips)
    else:
        if args.submission and args.part == "retrieval":
            raise FromageError("--submission needs the answer ranking (--part answers or both)")
        dialogs = read_visdial(args.data)[: args.limit]
        found = find_images(args.images)
        paths = usable_images({d.image_id: found[d.image_id] for d in dialogs if d.image_id in found}, skips)
        result = {}
        if args.part in ("answers", "both"):
            dense = read_visdial_dense(args.dense) if args.dense else None
            answers = visdial_answer_ranking(model, dialogs, paths, dense, ks=ks, faithful_to_original=faithful,
                                             batch_size=args.batch_size, return_ranks=bool(args.submission))
            if args.submission:
                write_json(args.submission, answers.pop("submission"))
            if not answers["gt_rounds"]:  # a test split: say so rather than print bare counts
                then = (f"ranks written to {args.submission}" if args.submission
                        else "add --submission OUT.json to write the ranks for EvalAI")
                print(f"visdial: {args.data} has no ground-truth answers (a test split?): {answers['rounds']} "
                      f"rounds ranked, no R@k/MRR/NDCG; {then}", file=sys.stderr)
            result["answers"] = answers
        if args.part in ("retrieval", "both"):
            result["retrieval"] = visdial_image_retrieval(model, dialogs, paths, ks=ks,
                                                          faithful_to_original=faithful)
    result = {"task": args.task, "protocol": "faithful_to_original" if faithful else "corrected", **result,
              "skips": skips.summary()["counts"]}
    print(json.dumps(result, indent=2))
    for part in (result, result.get("answers", {}), result.get("retrieval", {})):
        if part.get("trivial"):
            print(f"note: {', '.join(part['trivial'])} is 1 whatever the model does here (k >= the number of "
                  'candidates), so it is marked "trivial"; evaluate on more items', file=sys.stderr)
    if args.out:
        write_json(args.out, result)
    return 0


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _cutoffs(text: str) -> tuple[int, ...]:
    """"1,5,10" -> (1, 5, 10): positive integers."""
    try:
        return tuple(_positive_int(k) for k in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 1,5,10, got {text!r}") from None


def register(sub):
    p = sub.add_parser("eval", help="evaluate a trained model (recall, VIST, VisDial)")
    p.add_argument("--model", required=True, help="checkpoint folder (save_pretrained) or a training run folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--ks", type=_cutoffs, default=(1, 5, 10), help="comma-separated recall cut-offs")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N items")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--faithful-to-original", action="store_true",
                   help="reproduce the original scripts' scoring quirks (see fromage_mini/eval/benchmarks.py)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read image files that lead outside the pairs/stories file's folder (.., absolute paths)")
    tasks = p.add_subparsers(dest="task", required=True)
    r = tasks.add_parser("recall", help="caption<->image recall@k over a set of pairs")
    r.add_argument("--pairs", required=True, help="JSON list of {caption, image} or TSV/CSV with those columns")
    r.add_argument("--image-root", help="folder the image paths are relative to (default: the pairs file's)")
    v = tasks.add_parser("vist", help="contextual image retrieval (VIST protocol)")
    v.add_argument("--annotations", help="VIST val.story-in-sequence.json")
    v.add_argument("--images", help="image folder (VIST: files named by photo id)")
    v.add_argument("--stories", help="ShapesWorld stories JSON instead of VIST")
    v.add_argument("--captions", type=int, default=5, help="captions kept in the prompt")
    v.add_argument("--context-images", type=int, default=4, help="context images kept in the prompt")
    d = tasks.add_parser("visdial", help="VisDial answer ranking and dialogue->image retrieval")
    d.add_argument("--data", required=True, help="visdial_1.0_val.json")
    d.add_argument("--dense", help="visdial_1.0_val_dense_annotations.json (for NDCG)")
    d.add_argument("--images", required=True, help="VisualDialog_val2018 image folder")
    d.add_argument("--part", choices=["answers", "retrieval", "both"], default="both")
    d.add_argument("--submission", metavar="OUT.json",
                   help="write the challenge (EvalAI) ranks: a list of {image_id, round_id, ranks}, one per "
                        "ranked round (test: each dialog's unanswered last round; val: every round)")
    p.set_defaults(func=_run)
