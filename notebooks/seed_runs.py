"""Run the notebooks' seed studies and store them in notebooks/seed_runs.json (`make seed-runs` pins the CPU kernels).

    python notebooks/seed_runs.py                     # every notebook with such cells (about 4 minutes on 2 cores)
    python notebooks/seed_runs.py 03_training         # some of them; the others' entries are kept

A comparison of training runs needs more than one seed, and the whole course must run in a few minutes.
So a notebook that compares runs trains seed 0 itself and reads seeds 1 and 2 from
notebooks/seed_runs.json, which this script writes with the notebook's own code: a code cell holding a
marker line

    # ---- notebooks/seed_runs.py runs the setup cell and this cell down to here, then NAME(seed) ----

is run (the notebook's first code cell, then that cell down to the marker, in one namespace) and
``NAME(seed)`` is called for seeds 0, 1 and 2. Seed 0 is stored too: the notebook checks that its own
run of seed 0 agrees with the stored one within the tolerances it states, which ties the file to the code.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "seed_runs.json"
SEEDS = (0, 1, 2)
MARKER = re.compile(r"^# ---- notebooks/seed_runs\.py runs .* then (\w+)\(seed\) ----$", re.M)


def seeded_cells(notebook: Path) -> tuple[str, list[tuple[str, str]]]:
    """The setup cell's source and, for each marked cell, (function name, the cell's source down to the marker)."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    found = []
    for cell in cells[1:]:
        src = "".join(cell["source"])
        if m := MARKER.search(src):
            found.append((m.group(1), src[: m.start()]))
    return "".join(cells[0]["source"]), found


def plain(x):
    """JSON-ready copy: tensors and numbers as Python floats/ints/lists (floats rounded to 6 digits)."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return round(x, 6) if isinstance(x, float) and math.isfinite(x) else x


def run_notebook(notebook: Path) -> dict:
    setup, marked = seeded_cells(notebook)
    if not marked:
        return {}
    namespace = {"__name__": "__seed_runs__"}
    exec(compile(setup, f"{notebook.name}: setup cell", "exec"), namespace)
    results = {}
    for name, src in marked:
        exec(compile(src, f"{notebook.name}: {name}", "exec"), namespace)
        results[name] = {}
        for seed in SEEDS:
            t = time.perf_counter()
            results[name][str(seed)] = plain(namespace[name](seed))
            print(f"{notebook.stem}: {name}(seed={seed}) {time.perf_counter() - t:.1f} s", flush=True)
    return results


def with_stored_seeds(notebook: str, name: str, seed0) -> tuple[dict, object]:
    """For a notebook cell: ({0: ``seed0`` (this run's), 1: ..., 2: ...}, the stored seed 0), seeds 1 and 2
    as ``NAME(seed)`` returned them in notebooks/seed_runs.json."""
    stored = json.loads(OUT.read_text())[notebook][name]
    return {0: seed0, **{int(s): r for s, r in stored.items() if s != "0"}}, stored["0"]


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the setup cells configure pyplot; nothing is shown here
    names = sys.argv[1:] if argv is None else argv
    os.chdir(HERE.parent)  # the notebooks run from the repository root
    sys.path.insert(0, str(HERE.parent))
    out = json.loads(OUT.read_text()) if names and OUT.exists() else {}
    out["_how"] = ("python notebooks/seed_runs.py: each marked cell's function for seeds 0, 1 and 2, "
                   "with the notebook's own code (see the script's docstring)")
    for notebook in sorted(HERE.glob("[0-9]*.ipynb")):
        if names and notebook.stem not in names:
            continue
        if results := run_notebook(notebook):
            out[notebook.stem] = results
    OUT.write_text(json.dumps(dict(sorted(out.items())), indent=1) + "\n")
    print(f"wrote {OUT.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
