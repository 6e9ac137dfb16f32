"""Retrieval index: build time, load time and exact top-10 search latency at 10k .. 3M rows x 256.

    python benchmarks/bench_index.py                         # 10k, 100k, 1M, 3M rows
    python benchmarks/bench_index.py --sizes 10k,1m --queries 50
    python benchmarks/bench_index.py --quick                 # 10k and 100k only, a smoke test

Synthetic indexes (random unit vectors stored as fp16, one small metadata dict per row) are built
with the streaming ``IndexWriter`` in a child process (so its peak RSS is measured alone) under a
temporary folder or ``--workdir``, and deleted afterwards. Load time is measured "cold" (the index
files dropped from the page cache with posix_fadvise first) and warm; search latency with a warm
page cache, after warm-up queries, on fresh random queries. ``--strategies`` also times the
alternatives the search code chose between on the largest size. Results go to
``benchmarks/results/index.json`` and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine

import fromage_mini.retrieval.search as S
from fromage_mini.files import write_json
from fromage_mini.retrieval.index import IndexWriter, RetrievalIndex

DIM = 256
FINGERPRINT = "synthetic-bench"
TARGETS = {"rows": 3_000_000, "load_s": 1.0, "top10_s": 0.300}


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "km" else s) * mult)


def build_child(folder: str, rows: int, block: int = 65536) -> None:
    """Run in a child process: stream ``rows`` random unit vectors into an index; print stats."""
    rng = np.random.default_rng(rows)
    t = time.perf_counter()
    with IndexWriter(folder, dim=DIM, model_fingerprint=FINGERPRINT, extra_info={"synthetic": True}) as w:
        for s in range(0, rows, block):
            n = min(block, rows - s)
            w.add(rng.standard_normal((n, DIM), dtype=np.float32),
                  [{"path": f"synthetic/{i:08d}.jpg", "caption": f"synthetic image {i}"} for i in range(s, s + n)])
    print(json.dumps({"build_s": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def drop_from_page_cache(folder: Path) -> None:
    """Evict the index files (only these) from the page cache, for a cold load."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "p90": float(np.percentile(xs, 90)), "min": min(xs), "n": len(xs)}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def unit_queries(rng, n: int) -> np.ndarray:
    q = rng.standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def bench_size(workdir: Path, rows: int, args) -> dict:
    folder = workdir / f"index_{rows}"
    out = subprocess.run([sys.executable, __file__, "--_build", str(folder), str(rows)],
                         check=True, capture_output=True, text=True).stdout
    res = {"rows": rows, **json.loads(out.strip().splitlines()[-1])}
    res["disk_mb"] = sum(p.stat().st_size for p in folder.iterdir()) / 2**20

    cold, warm = [], []
    for _ in range(args.loads):
        if hasattr(os, "posix_fadvise"):
            drop_from_page_cache(folder)
        cold.append(timed(lambda: RetrievalIndex.load(folder, expected_fingerprint=FINGERPRINT)))
    for _ in range(args.loads):
        warm.append(timed(lambda: RetrievalIndex.load(folder, expected_fingerprint=FINGERPRINT)))
    res["load_cold_s"], res["load_warm_s"] = stats(cold), stats(warm)

    idx = RetrievalIndex.load(folder, expected_fingerprint=FINGERPRINT)
    res["first_metadata_read_s"] = timed(lambda: idx.metadata(rows - 1))
    rng = np.random.default_rng(0)
    idx.vectors.sum(axis=0, dtype=np.float32)  # bring the vectors into the page cache
    one, sixteen = unit_queries(rng, 2 + args.queries), unit_queries(rng, 16 * (1 + max(3, args.queries // 4)))
    res["top10_1q_s"] = stats(search_times(idx, one, 1, warmup=2))
    res["top10_b16_s"] = stats(search_times(idx, sixteen, 16, warmup=1))
    if args.strategies and rows == max(args.sizes):
        res["strategies"] = compare_strategies(idx, rng)
    shutil.rmtree(folder)
    return res


def search_times(idx, queries: np.ndarray, batch: int, warmup: int) -> list[float]:
    """Seconds per top-10 search of each batch of ``batch`` queries, after ``warmup`` untimed batches."""
    times = []
    for b in range(len(queries) // batch):
        q = queries[b * batch:(b + 1) * batch]
        t = time.perf_counter()
        idx.search(q[0] if batch == 1 else q, k=10)
        if b >= warmup:
            times.append(time.perf_counter() - t)
    return times


def numpy_chunked(idx, q: np.ndarray, k: int = 10, chunk: int = 1 << 16):
    """Baseline: numpy fp16 -> fp32 chunk conversion, matmul, argpartition."""
    best_s, best_i = np.full(0, -np.inf, np.float32), np.zeros(0, np.int64)
    for s in range(0, len(idx), chunk):
        sc = idx.vectors[s:s + chunk].astype(np.float32) @ q
        top = np.argpartition(-sc, min(k, len(sc) - 1))[:k]
        best_s, best_i = np.concatenate([best_s, sc[top]]), np.concatenate([best_i, top + s])
    o = np.argsort(-best_s)[:k]
    return best_s[o], best_i[o]


def compare_strategies(idx, rng, reps: int = 5) -> dict:
    """Time the alternatives the search code chooses between, on one index (interleaved reps)."""
    q1, q4, q16 = unit_queries(rng, 1), unit_queries(rng, 4), unit_queries(rng, 16)

    def with_patch(name, value, fn):
        def run():
            old = getattr(S, name)
            setattr(S, name, value)
            try:
                fn()
            finally:
                setattr(S, name, old)
        return run

    cases = {
        "1q fp16 mat-vec + exact rescore (chosen)": lambda: idx.search(q1, 10),
        "1q fp32 convert-in-cache + matmul": with_patch("_FP16_MAX_QUERIES", 0, lambda: idx.search(q1, 10)),
        "1q fp16, chunk 256k rows": with_patch("_FP16_CHUNK_ROWS", 1 << 18, lambda: idx.search(q1, 10)),
        "1q fp16, chunk 4M rows": with_patch("_FP16_CHUNK_ROWS", 1 << 22, lambda: idx.search(q1, 10)),
        "1q numpy fp16->fp32 chunks": lambda: numpy_chunked(idx, q1[0]),
        "4q fp16 mat-vec per query (chosen)": lambda: idx.search(q4, 10),
        "4q fp32 convert-in-cache + matmul": with_patch("_FP16_MAX_QUERIES", 0, lambda: idx.search(q4, 10)),
        "16q fp32 convert + matmul (chosen: 4k-row steps with 1 thread, 16k with more)":
            lambda: idx.search(q16, 10),
        "16q fp32, 4k-row steps": with_patch("_SUB_ROWS", 4096, lambda: idx.search(q16, 10)),
        "16q fp32, 16k-row steps": with_patch("_SUB_ROWS", 16384, lambda: idx.search(q16, 10)),
        "16q fp32, 64k-row steps": with_patch("_SUB_ROWS", 65536, lambda: idx.search(q16, 10)),
        "16q fp16 mat-vec per query": with_patch("_FP16_MAX_QUERIES", 16, lambda: idx.search(q16, 10)),
    }
    out = {}
    threads = torch.get_num_threads()
    for th in sorted({1, threads}, reverse=True):
        torch.set_num_threads(th)
        times = {name: [] for name in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(reps):
            for name, fn in cases.items():
                times[name].append(timed(fn))
        out[f"threads={th}"] = {name: stats(ts) for name, ts in times.items()}
    torch.set_num_threads(threads)
    return out


def table(results: list[dict]) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f}"

    lines = [("| rows | build (s) | build peak RSS (MB) | on disk (MB) | load cold (ms) | load warm (ms) "
              "| top-10, 1 query: median / p90 (ms) | top-10, batch of 16: median / p90 (ms) |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['build_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['disk_mb']:.0f} "
                     f"| {ms(r['load_cold_s']['median'])} | {ms(r['load_warm_s']['median'])} "
                     f"| {ms(r['top10_1q_s']['median'])} / {ms(r['top10_1q_s']['p90'])} "
                     f"| {ms(r['top10_b16_s']['median'])} / {ms(r['top10_b16_s']['p90'])} |")
    for r in results:
        for th, cases in r.get("strategies", {}).items():
            lines += ["", f"Search strategies at {r['rows']:,} rows, {th} (median / min ms):", ""]
            lines += [f"- {name}: {ms(s['median'])} / {ms(s['min'])}" for name, s in cases.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1m,3m", help="comma-separated row counts (k/m suffixes)")
    ap.add_argument("--quick", action="store_true", help="10k and 100k rows, fewer queries")
    ap.add_argument("--queries", type=int, default=20, help="single queries timed per size (after 2 warm-ups)")
    ap.add_argument("--loads", type=int, default=7, help="loads timed per size (cold and warm each)")
    ap.add_argument("--strategies", action="store_true", help="also time search alternatives on the largest size")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--workdir", default=None, help="where to build the synthetic indexes (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS / "index.json"))
    ap.add_argument("--_build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        return build_child(args._build[0], int(args._build[1]))
    args.sizes = [10_000, 100_000] if args.quick else sorted(parse_size(s) for s in args.sizes.split(","))
    if args.quick:
        args.queries, args.loads = min(args.queries, 10), min(args.loads, 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="fromage_bench_index_", dir=args.workdir))
    load_before = os.getloadavg()
    results = []
    try:
        for rows in args.sizes:
            print(f"... {rows:,} rows", file=sys.stderr, flush=True)
            results.append(bench_size(workdir, rows, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))

    big = next((r for r in results if r["rows"] == TARGETS["rows"]), None)
    checks = {}
    if big:
        checks = {"load_under_1s": big["load_cold_s"]["median"] < TARGETS["load_s"],
                  "top10_under_300ms": big["top10_1q_s"]["median"] < TARGETS["top10_s"]}
        print(f"\n3,000,000 rows: load {big['load_cold_s']['median'] * 1000:.1f} ms (target < 1000) "
              f"{'PASS' if checks['load_under_1s'] else 'FAIL'}; top-10 median "
              f"{big['top10_1q_s']['median'] * 1000:.1f} ms (target < 300) "
              f"{'PASS' if checks['top10_under_300ms'] else 'FAIL'}")
    info = {**machine(), "numpy": np.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"machine": info, "dim": DIM, "dtype": "float16", "k": 10, "targets": TARGETS,
                          "checks": checks, "results": results, "command": " ".join(sys.argv)})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
