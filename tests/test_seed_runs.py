"""notebooks/seed_runs.py: marked cells run for seeds 0-2, and the stored file that the notebooks read."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import seed_runs  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
MARK = "# ---- notebooks/seed_runs.py runs the setup cell and this cell down to here, then {}(seed) ----"


def _notebook(path: Path, *cells: str) -> Path:
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
                    for src in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_marked_cells_are_run_for_three_seeds_with_the_setup_cell(tmp_path):
    nb = _notebook(tmp_path / "09_demo.ipynb",
                   "import torch\nscale = 10",
                   "def run(seed):\n    return {'value': torch.tensor(seed * scale + 0.5), 'list': (seed, 'x')}\n"
                   + MARK.format("run") + "\nraise RuntimeError('below the marker: never run by the script')",
                   "def other(seed):\n    return seed\n")  # no marker: not a seed run
    assert [name for name, _ in seed_runs.seeded_cells(nb)[1]] == ["run"]
    assert seed_runs.run_notebook(nb) == {"run": {str(s): {"value": s * 10 + 0.5, "list": [s, "x"]} for s in (0, 1, 2)}}


def test_a_notebook_without_marked_cells_gives_nothing(tmp_path):
    assert seed_runs.run_notebook(_notebook(tmp_path / "09_none.ipynb", "x = 1", "def f(seed):\n    return seed")) == {}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_marked_function_is_defined_above_its_marker_and_stored_for_three_seeds(nb):
    stored = json.loads((ROOT / "notebooks" / "seed_runs.json").read_text())
    _, marked = seed_runs.seeded_cells(nb)
    for name, head in marked:
        defined = {n.name for n in ast.parse(head).body if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{nb.stem}: {name} is not defined above its marker"
        runs = stored.get(nb.stem, {}).get(name)
        assert runs is not None and sorted(runs) == ["0", "1", "2"], \
            f"{nb.stem}: {name} has no stored seeds 0-2; run python notebooks/seed_runs.py {nb.stem}"
        assert len({json.dumps(r, sort_keys=True) for r in runs.values()}) == 3, f"{nb.stem}: {name}: identical seeds"
    assert set(stored.get(nb.stem, {})) == {name for name, _ in marked}, f"{nb.stem}: stored runs of unmarked functions"
