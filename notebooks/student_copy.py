"""Write student copies of the course notebooks: reference answers removed, outputs cleared.

    python notebooks/student_copy.py                    # every notebooks/[0-9]*.ipynb -> notebooks/student/
    python notebooks/student_copy.py 01 02_ret          # some of them (name, stem or prefix, as run_all.py)
    python notebooks/student_copy.py --out my_copies    # another folder

In every code cell, each block from a ``# BEGIN SOLUTION`` line to the next ``# END SOLUTION`` line
(both included) becomes one ``# YOUR CODE HERE`` line, indented like the ``# BEGIN SOLUTION`` line.
What follows ``# END SOLUTION`` (the exercise's self-check) stays, so running a copy before the
exercise is done stops at that check. Every code cell loses its outputs and execution count;
markdown cells and cells without the markers are left exactly as they are. Cells tagged
``wrong-answers`` (the course's own test that each self-check refuses plausible wrong answers, see
exercise_check.py) are dropped: they would give the answers away.

The output folder also gets a ``conftest.py`` that keeps pytest from collecting the copies
(``pytest --nbval notebooks`` would otherwise run unfinished notebooks and fail).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END, PLACEHOLDER = "# BEGIN SOLUTION", "# END SOLUTION", "# YOUR CODE HERE"
WRONG_TAG = "wrong-answers"  # the tag of the cells that run an exercise's wrong answers (exercise_check.py)
BEGIN_RE = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")  # group 1: the block's indent
END_RE = re.compile(r"^\s*# END SOLUTION\s*$")
EXERCISE_RE = re.compile(r"^### Exercise (\d+) — (.*)")  # an exercise's markdown cell: number, title
CONFTEST = '"""Student copies of the notebooks: unfinished on purpose, so pytest does not collect them."""\n' \
           'collect_ignore_glob = ["*"]\n'


def strip_solutions(source: str) -> str:
    """``source`` with every BEGIN/END SOLUTION block replaced by one indented ``# YOUR CODE HERE`` line.

    Raises ``ValueError`` on an END without a BEGIN, a BEGIN inside a block, or a block never closed.
    """
    out, indent = [], None  # indent is None outside a block
    for n, line in enumerate(source.split("\n"), 1):
        begin, end = BEGIN_RE.match(line), END_RE.match(line)
        if begin:
            if indent is not None:
                raise ValueError(f"line {n}: {BEGIN} inside another solution block")
            indent = begin.group(1)
        elif end:
            if indent is None:
                raise ValueError(f"line {n}: {END} without {BEGIN}")
            out.append(indent + PLACEHOLDER)
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise ValueError(f"{BEGIN} never closed by {END}")
    return "\n".join(out)


def student_notebook(nb):
    """A copy of notebook ``nb`` (nbformat v4): solutions stripped, wrong-answer cells dropped, outputs cleared."""
    import copy

    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if WRONG_TAG not in c.get("metadata", {}).get("tags", [])]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            cell.source = strip_solutions(cell.source)
        except ValueError as e:
            raise ValueError(f"cell {i}: {e}") from None
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def find(names: list[str]) -> list[Path]:
    """The numbered notebooks next to this script, or those matching ``names`` (path, name, stem or prefix)."""
    if not names:
        return sorted(HERE.glob("[0-9]*.ipynb"))
    out = []
    for n in names:
        p = Path(n)
        cands = [p, HERE / p, HERE / f"{p}.ipynb"] + sorted(HERE.glob(f"{p.stem}*.ipynb"))
        hit = next((c for c in cands if c.is_file() and c.suffix == ".ipynb"), None)
        if hit is None:
            sys.exit(f"student_copy.py: no notebook matches {n!r}")
        out.append(hit.resolve())
    return out


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to copy (default: all numbered ones)")
    ap.add_argument("--out", type=Path, default=HERE / "student", help="output folder (default: notebooks/student)")
    a = ap.parse_args(argv)
    paths = find(a.notebooks)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        try:
            copy = student_notebook(nb)
        except ValueError as e:
            sys.exit(f"student_copy.py: {path.name}: {e}")
        blocks = sum(c.source.count(BEGIN) for c in nb.cells if c.cell_type == "code")
        nbformat.write(copy, a.out / path.name)
        print(f"{path.name}: {blocks} solution block(s) removed -> {a.out.name}/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
