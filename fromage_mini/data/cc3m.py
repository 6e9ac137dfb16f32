"""Download Conceptual Captions (CC3M) into webdataset shards with img2dataset.

    fromage-mini data cc3m Train_GCC-training.tsv --out data/cc3m --sample 20000

img2dataset is an optional dependency (``pip install img2dataset``). It runs in a child process:
its API starts worker processes with the *spawn* method, which re-imports the caller's main module,
so calling it in-process from a script without an ``if __name__ == "__main__"`` guard would re-run
that script. The child gets its arguments as JSON and no main file, so nothing is re-run.

Pitfalls handled here (measured with img2dataset 1.47.0):

- the official TSV has no header; img2dataset's ``tsv`` input needs one, so a headered, properly
  quoted copy is written (rows that are not ``caption<TAB>url`` are skipped and counted first);
- ``NO_ALBUMENTATIONS_UPDATE=1`` stops every worker from calling the package index;
- ``incremental_mode="overwrite"`` deletes its own temp folder and crashes after minutes, so it is
  never used: ``redo=True`` deletes the output folder here, and the default mode resumes a run that
  was interrupted (finished shards are kept);
- failures are only visible in the per-shard ``*_stats.json`` files, which are summed at the end.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from ..errors import FromageError
from ..files import atomic_write
from .readers import SkipLog, split_row

INSTALL_HINT = "pip install img2dataset  (or: pip install 'fromage_mini[cc3m]')"
SETTINGS_FILE = "prepare_cc3m.settings"  # JSON inside; not *.json, which img2dataset reads as shard stats
INPUT_FILE = "_input.tsv"

_RUN_IMG2DATASET = "import json, sys; from img2dataset import download; download(**json.loads(sys.argv[1]))"


def _write_input(tsv: Path, dest: Path, sample: int | None, skip_log: SkipLog) -> int:
    """Copy ``tsv`` (``caption<TAB>url``, header row optional) to ``dest`` with a header row.

    Returns the number of rows written. Only the first ``sample`` data rows are read. Bad rows are
    counted in ``skip_log`` (keys are file line numbers). Fields are written with CSV quoting, so a
    caption that starts with a quote survives img2dataset's pyarrow reader.
    """
    cap_col, url_col, n_cols = 0, 1, 2
    data_rows = written = 0
    with open(tsv, "rb") as src, atomic_write(dest, "w") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["caption", "url"])
        for lineno, raw in enumerate(src, start=1):
            try:
                fields = split_row(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except UnicodeDecodeError as e:
                fields, error = None, str(e)
            if lineno == 1 and fields is not None:  # an optional header row names a 'url' column
                names = [f.strip().lower() for f in fields]
                if "url" in names:
                    if "caption" not in names:
                        raise FromageError(f"{tsv}: header row {fields} has 'url' but no 'caption' column")
                    cap_col, url_col, n_cols = names.index("caption"), names.index("url"), len(names)
                    continue
            if sample is not None and data_rows >= sample:
                break
            data_rows += 1
            key = f"line {lineno}"
            if fields is None:
                skip_log.add("non_utf8", key, error)
            elif len(fields) != n_cols or not fields[url_col].strip().startswith(("http://", "https://")):
                skip_log.add("malformed_row", key, f"{len(fields)} fields: {raw[:80]!r}")
            elif not fields[cap_col].strip():
                skip_log.add("empty_caption", key)
            else:
                writer.writerow([fields[cap_col].strip(), fields[url_col].strip()])
                written += 1
    return written


def _prepare_folder(out: Path, settings: dict, redo: bool) -> None:
    """Create ``out``, or check it holds an earlier run with the same settings (then it is resumed).

    ``redo`` deletes an earlier run first; a folder that prepare_cc3m did not make is never deleted.
    """
    marker = out / SETTINGS_FILE
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise FromageError(f"{out}: folder is not empty and was not made by 'data cc3m'; "
                               "choose a new or empty --out folder")
        if redo:
            shutil.rmtree(out)
        else:
            try:
                before = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                before = None
            if before != settings:
                raise FromageError(f"{out}: holds a run with other settings ({before}); "
                                   "pass --redo to delete it and start again, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(marker, "w") as f:
        json.dump(settings, f, indent=2)


def _run_img2dataset(kwargs: dict, out: Path, quiet: bool) -> None:
    """Run ``img2dataset.download(**kwargs)`` in a child Python; raise FromageError if it fails.

    img2dataset never uses torch, but webdataset imports it when it is installed, which costs
    seconds in each of img2dataset's processes (main, logger, worker). A one-line ``torch`` module
    that raises ModuleNotFoundError, first on the children's PYTHONPATH, hides it; webdataset
    handles a missing torch.
    """
    cmd = [sys.executable, "-c", _RUN_IMG2DATASET, json.dumps(kwargs)]
    log_path = out / "img2dataset.log"
    with tempfile.TemporaryDirectory(prefix="hide-torch-") as hide:
        Path(hide, "torch.py").write_text('raise ModuleNotFoundError("hidden from img2dataset", name="torch")\n')
        path = os.pathsep.join(p for p in (hide, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
                   WANDB_SILENT="true")
        if quiet:
            with open(log_path, "wb") as log:
                rc = subprocess.run(cmd, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT,
                                    check=False).returncode
        else:
            rc = subprocess.run(cmd, env=env, cwd=out, check=False).returncode
    if rc != 0:
        where = f"; its output is in {log_path}" if quiet else " (its output is above)"
        raise FromageError(f"img2dataset failed with exit code {rc}{where}")


def summarize(out: str | os.PathLike, top: int = 5) -> dict:
    """Sum img2dataset's per-shard ``*_stats.json`` in ``out``: rows, success, failed_to_download
    (dead links, HTTP errors, timeouts), failed_to_resize (undecodable images), and the ``top``
    most common error messages as ``[[message, count], ...]``."""
    out = Path(out)
    totals = Counter()
    errors = Counter()
    stats_files = sorted(out.glob("*_stats.json"))
    for path in stats_files:
        stats = json.loads(path.read_text())
        totals["rows"] += stats.get("count", 0)
        totals["success"] += stats.get("successes", 0)
        totals["failed_to_download"] += stats.get("failed_to_download", 0)
        totals["failed_to_resize"] += stats.get("failed_to_resize", 0)
        errors.update({k: v for k, v in stats.get("status_dict", {}).items() if k != "success"})
    return {"out": str(out), "shards": len(stats_files),
            **{k: totals[k] for k in ("rows", "success", "failed_to_download", "failed_to_resize")},
            "top_errors": [[msg, n] for msg, n in errors.most_common(top)]}


def prepare_cc3m(tsv: str | os.PathLike, out_folder: str | os.PathLike, sample: int | None = None,
                 image_size: int = 224, resize_mode: str = "center_crop", processes: int = 1,
                 threads: int = 8, timeout: int = 10, samples_per_shard: int = 10000,
                 redo: bool = False, honor_noai: bool = True, quiet: bool = False) -> dict:
    """Download the images of a CC3M TSV into webdataset shards in ``out_folder``; return the totals.

    tsv: the official file (``caption<TAB>url``, no header) or one with a ``caption``/``url`` header.
    sample: use only the first ``sample`` data rows (a course-sized subset).
    image_size, resize_mode: images are stored as JPEG (quality 95). The default ``center_crop``
        resizes the shorter side to ``image_size`` and crops the centre square, the same as CLIP's
        preprocessing at that size, so the stored square is what the vision tower sees. Use
        ``keep_ratio`` (shorter side to ``image_size``, nothing cut) for towers that crop differently.
    processes, threads, timeout: img2dataset's parallelism and per-download timeout in seconds.
    redo: delete an earlier run in ``out_folder`` first. Without it a folder from an interrupted run
        with the same settings is resumed (finished shards are kept).
    honor_noai: skip images whose server sends ``X-Robots-Tag: noai``/``noimageai``/``noindex``/
        ``noimageindex`` (img2dataset's default behaviour). On by default: site opt-outs are
        respected unless you pass ``honor_noai=False`` (CLI: ``--ignore-noai``).
    quiet: send img2dataset's output to ``out_folder/img2dataset.log`` instead of the console.

    Returns :func:`summarize`'s dict plus ``input_rows`` and ``input_skipped`` (a SkipLog summary of
    TSV rows that were not URLs with captions). Read the result with ``read_webdataset(out_folder)``.
    """
    if importlib.util.find_spec("img2dataset") is None:
        raise FromageError(f"CC3M preparation needs img2dataset, which is not installed: {INSTALL_HINT}")
    tsv, out = Path(tsv).resolve(), Path(out_folder).resolve()
    if not tsv.is_file():
        raise FromageError(f"{tsv}: TSV not found; download Train_GCC-training.tsv from "
                           "https://ai.google.com/research/ConceptualCaptions/download")
    if sample is not None and sample < 1:
        raise FromageError(f"--sample {sample}: give a positive number of rows")
    if resize_mode not in ("center_crop", "keep_ratio", "border", "no"):
        raise FromageError(f"resize_mode {resize_mode!r}: use center_crop, keep_ratio, border or no")
    settings = {"tsv": str(tsv), "sample": sample, "image_size": image_size, "resize_mode": resize_mode,
                "samples_per_shard": samples_per_shard, "honor_noai": honor_noai}
    _prepare_folder(out, settings, redo)

    skip_log = SkipLog()
    input_tsv = out / INPUT_FILE
    try:
        rows = _write_input(tsv, input_tsv, sample, skip_log)
        if rows == 0:
            raise FromageError(f"{tsv}: no usable 'caption<TAB>url' rows ({skip_log})")
        kwargs = {
            "url_list": str(input_tsv), "input_format": "tsv", "url_col": "url", "caption_col": "caption",
            "output_format": "webdataset", "output_folder": str(out), "image_size": image_size,
            "resize_mode": resize_mode, "processes_count": processes, "thread_count": threads,
            "timeout": timeout, "number_sample_per_shard": samples_per_shard, "enable_wandb": False,
            "incremental_mode": "incremental",  # never "overwrite": broken in 1.47.0 (see module doc)
            "disallowed_header_directives": None if honor_noai else [],
        }
        _run_img2dataset(kwargs, out, quiet)
    finally:
        input_tsv.unlink(missing_ok=True)
    result = summarize(out)
    result["input_rows"] = rows
    result["input_skipped"] = skip_log.summary()
    return result


def format_summary(r: dict) -> str:
    """A few human-readable lines for a :func:`prepare_cc3m` result."""
    n = max(r["rows"], 1)
    head = f"{r['rows']} rows -> {r['success']} images ({r['success'] / n:.1%}) in {r['shards']} shards"
    lines = [f"{head} under {r['out']}",
             f"  failed_to_download (dead links): {r['failed_to_download']}",
             f"  failed_to_resize (corrupt images): {r['failed_to_resize']}"]
    lines += [f"  {count:>8}  {msg}" for msg, count in r["top_errors"]]
    if r["input_skipped"]["total"]:
        lines.append(f"  input rows skipped before download: {r['input_skipped']['counts']}")
    return "\n".join(lines)


def _cli(args) -> int:
    result = prepare_cc3m(args.tsv, args.out, sample=args.sample, image_size=args.image_size,
                          resize_mode=args.resize_mode, processes=args.processes, threads=args.threads,
                          timeout=args.timeout, samples_per_shard=args.shard_size, redo=args.redo,
                          honor_noai=not args.ignore_noai)
    print(format_summary(result))
    return 0


def register(sub) -> None:
    """Add ``data cc3m TSV --out DIR [...]`` to the CLI's subparsers."""
    data = sub.add_parser("data", help="prepare image-caption data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("cc3m", help="download CC3M images into webdataset shards (needs img2dataset)")
    p.add_argument("tsv", help="CC3M TSV: caption<TAB>url, header row optional")
    p.add_argument("--out", required=True, help="output folder for the .tar shards")
    p.add_argument("--sample", type=int, default=None, help="use only the first N rows")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--resize-mode", default="center_crop", choices=["center_crop", "keep_ratio"])
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--timeout", type=int, default=10, help="seconds per download")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per .tar shard")
    p.add_argument("--redo", action="store_true", help="delete an earlier run in --out first")
    p.add_argument("--ignore-noai", action="store_true",
                   help="also download images whose server opts out with X-Robots-Tag noai/noindex")
    p.set_defaults(func=_cli)
