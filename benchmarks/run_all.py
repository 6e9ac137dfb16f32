"""Run the CPU benchmark suite and write the Markdown summary that README quotes.

    make bench            # = python benchmarks/run_all.py
    python benchmarks/run_all.py --only table     # just rebuild RESULTS.md from the JSON files

Each script writes JSON to benchmarks/results/ (machine description included); the GPU results
(``*_cuda.json``, from bench_train.py run on a GPU machine) are kept and tabulated too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CPU_RUNS = [
    ["bench_train.py", "--lm", "opt-125m", "--vision", "vit-b/32", "--batch", "32", "--reps", "3", "--steps", "1"],
    ["bench_train.py", "--lm", "opt-125m", "--vision", "vit-b/32", "--batch", "32", "--reps", "3", "--steps", "1",
     "--len-mean", "12"],
    ["bench_train.py", "--lm", "opt-125m", "--vision", "vit-b/32", "--batch", "32", "--reps", "3", "--steps", "1",
     "--modes", "ours,live"],
    ["bench_train.py", "--lm", "toy", "--vision", "toy", "--batch", "64", "--reps", "3", "--steps", "3"],
    ["bench_generate.py", "--lm", "opt-125m", "--tokens", "32,128", "--reps", "3"],
    ["bench_index.py"],
    ["bench_scoring.py", "--lm", "opt-125m", "--context", "160", "--options", "100"],
    ["bench_validate.py", "--lm", "opt-125m", "--n", "512", "--batch", "256"],
]


def table() -> str:
    out = ["# Benchmark results", "", "Written by `benchmarks/run_all.py` from the JSON files in this folder.", ""]
    train = sorted(RESULTS.glob("train_*.json"))
    if train:
        out += ["## Training step: ours vs the original's scheme", "",
                "Captions: `24` = every caption 24 tokens (no padding); `~N` = synthetic lengths with mean N "
                "tokens (the original pads them to 24, ours packs them). Runs marked * predate the fix "
                "that stopped the baseline from unfreezing the shared LM's embeddings, which had forced "
                "ours onto its slow path: their speed-ups are lower bounds.", "",
                "| file | machine | LM + vision | batch | captions | ours samples/s | original samples/s "
                "| speed-up (median, min–max) | ours MFU | ours peak GPU GiB |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for f in train:
            r = json.loads(f.read_text())
            mach = r["machine"].get("gpu") or r["machine"]["cpu"]
            o, g = r["modes"].get("ours"), r["modes"].get("original")
            sp = r.get("speedup_ours_over_original")
            caps = f"~{r['caption_tokens_mean']:.1f}" if r.get("len_mean") else "24"
            star = "" if "caption_tokens_mean" in r or not g else " *"
            out.append(f"| {f.name}{star} | {mach} | {r['lm']} + {r['vision']} | {r['batch']} | {caps} | "
                       f"{o['samples_per_s']['median']:.1f} | " + (f"{g['samples_per_s']['median']:.1f}" if g else "–")
                       + " | " + (f"{sp['median']:.2f}× ({sp['min']:.2f}–{sp['max']:.2f})" if sp else "–") + " | "
                       + (f"{o['mfu']['median']:.1%}" if o.get("mfu") else "n/a") + " | "
                       + (f"{o['peak_gpu_mem_gib']:.1f}" if o.get("peak_gpu_mem_gib") else "n/a") + " |")
        out.append("")
    live = [json.loads(f.read_text()) for f in train]
    live = [r for r in live if "speedup_cached_over_live" in r]
    if live:
        out += ["## Cached features vs the vision tower run live (our trainer, same run)", "",
                "| machine | LM + vision | batch | cached samples/s | live samples/s | speed-up (median, min–max) |",
                "|---|---|---|---|---|---|"]
        for r in live:
            sp = r["speedup_cached_over_live"]
            mach = r["machine"].get("gpu") or r["machine"]["cpu"]
            out.append(f"| {mach} | {r['lm']} + {r['vision']} | {r['batch']} | "
                       f"{r['modes']['ours']['samples_per_s']['median']:.2f} | "
                       f"{r['modes']['live']['samples_per_s']['median']:.2f} | "
                       f"{sp['median']:.2f}× ({sp['min']:.2f}–{sp['max']:.2f}) |")
        out.append("")
    for f in sorted(RESULTS.glob("generate_*.json")):
        r = json.loads(f.read_text())
        out += ["## Generation: KV cache vs re-running the full sequence", "", f"{r['machine']['cpu']}, {r['lm']}", "",
                "| new tokens | KV cache tok/s | full recompute tok/s | speed-up (median, min) | same tokens |",
                "|---|---|---|---|---|"]
        for row in r["rows"]:
            out.append(f"| {row['new_tokens']} | {row['cached_tok_s']['median']:.1f} "
                       f"| {row['recompute_tok_s']['median']:.1f} "
                       f"| {row['speedup']['median']:.1f}× ({row['speedup']['min']:.1f}) | {row['same_tokens']} |")
        out.append("")
    for f in sorted(RESULTS.glob("scoring_*.json")):
        r = json.loads(f.read_text())
        sp = r["speedup"]
        out += ["## Answer ranking: context KV cache shared by all candidates vs re-run per candidate", "",
                f"{r['machine']['cpu']}, {r['lm']}, {r['context_tokens']}-token context, {r['options']} options "
                f"of {r['answer_tokens_mean']:.1f} tokens on average", "",
                "| shared (median s) | re-run (median s) | speed-up (median, min) | same scores |", "|---|---|---|---|",
                f"| {r['seconds_shared']['median']:.2f} | {r['seconds_rerun']['median']:.2f} | "
                f"{sp['median']:.1f}× ({sp['min']:.1f}) | {r['same_scores']} |", ""]
    val = sorted(RESULTS.glob("validate_*.json"))
    if val:
        out += ["## Validation text vectors (one pass over the split)", "",
                "| file | machine | LM | captions × tokens | batch | peak RSS growth (MiB) | pass (median s) |",
                "|---|---|---|---|---|---|---|"]
        for f in val:
            r = json.loads(f.read_text())
            a = r["args"]
            out.append(f"| {f.name} | {r['machine']['cpu']} | {a['lm']} | {a['n']} × {r['tokens_per_row']} | "
                       f"{a['batch']} | {r['peak_rss_growth_mib']:.0f} | {r['pass_s']['median']:.2f} |")
        out.append("")
    idx = RESULTS / "index.json"
    if idx.exists():
        r = json.loads(idx.read_text())
        out += ["## Retrieval index (exact top-k over fp16 vectors)", "",
                f"{r['machine']['cpu']}, dim {r.get('dim')}", "",
                "| rows | load (median s) | top-10 single query (median ms) |", "|---|---|---|"]
        for row in r.get("results", []):
            q = row.get("top10_1q_s") or {}
            qm = q.get("median") if isinstance(q, dict) else q
            lm = row.get("load_cold_s", {}).get("median")
            out.append(f"| {row['rows']:,} | {lm:.4f} | " + (f"{qm * 1000:.1f}" if qm is not None else "?") + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["table"], default=None)
    a = ap.parse_args(argv)
    if a.only != "table":
        for cmd in CPU_RUNS:
            print("$", " ".join(cmd), flush=True)
            subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True)
    text = table()
    (RESULTS / "RESULTS.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
