"""``fromage-mini eval --model CKPT {recall,vist,visdial} ...``: read the data, run one protocol, print
(and optionally write) the metrics with the skip counts."""
from __future__ import annotations

import argparse
import json
import sys

from ..data.readers import SkipLog
from ..errors import FromageError
from ..files import write_json
from ..model import load_model
from .images import find_images, usable_images
from .recall import read_pairs, recall_at_k_dataset
from .visdial import read_visdial, read_visdial_dense, visdial_answer_ranking, visdial_image_retrieval
from .vist import contextual_retrieval, read_story_list, read_vist


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
                   help="reproduce the original scripts' scoring quirks (see fromage_mini/eval/__init__.py)")
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
