"""notebooks/course_table.py: the course table in notebooks/README.md is counted from the notebooks."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from notebooks import course_table  # noqa: E402


def test_readme_table_is_what_the_notebooks_give():
    assert course_table.main(["--check"]) == 0, "run python notebooks/course_table.py"


def test_counts_follow_the_notebook(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("### Exercise 1 — build it: a thing"),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell('wrong_answers_fail("t", 1, {"a": "x = 2", "b": "x = 3"}, globals())',
                                          metadata={"tags": ["wrong-answers"]}),
                nbformat.v4.new_markdown_cell("### Exercise 2 — predict, then run: a guess"),
                nbformat.v4.new_code_cell("y = 1"),
                nbformat.v4.new_markdown_cell("Text.\n\n**Predict, then run.** Guess."),
                nbformat.v4.new_code_cell("z = 1")]
    path = tmp_path / "99_t.ipynb"
    nbformat.write(nb, path)
    n = course_table.count(path)
    assert n == {"cells": 7, "code": 4, "exercises": 2, "build": 1, "predict": 2, "wrong": 2}


def test_seconds_are_summed_per_notebook_from_a_durations_log(tmp_path):
    log = tmp_path / "make_test.log"
    log.write_text("1796659968 12.50s call     notebooks/03_training.ipynb::Cell 4\n"
                   "0.50s setup    notebooks/03_training.ipynb::Cell 0\n"
                   "2.00s call     tests/test_train.py::test_x\n"
                   "3.25s call     notebooks/04b_binding.ipynb::Cell 8\n")
    assert course_table.seconds_from_report(log) == {"03_training": 13.0, "04b_binding": 3.2}
