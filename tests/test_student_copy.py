"""notebooks/student_copy.py strips reference answers; every notebook's exercises follow the course convention.

Convention (notebooks/README.md): a markdown cell whose first line is ``### Exercise N — <title>``
(N = 1, 2, ... within the notebook) is followed by ONE code cell holding the reference answer between
``# BEGIN SOLUTION`` and ``# END SOLUTION`` and, after them, a self-check with ``assert``; each
notebook has at least three exercises.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
EXERCISE = re.compile(r"^### Exercise (\d+) — \S")
MIN_EXERCISES = 3

# the course's helpers are imported as the notebooks' kernels import them: notebooks/ as a namespace package
if str(NOTEBOOKS.parent) not in sys.path:
    sys.path.insert(0, str(NOTEBOOKS.parent))
from notebooks import exercise_check, student_copy  # noqa: E402


def _toy_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nSome text with `# BEGIN SOLUTION` quoted in it."),
        nbformat.v4.new_code_cell("import math\nx = 2", execution_count=1,
                                  outputs=[nbformat.v4.new_output("stream", text="hi\n")]),
        nbformat.v4.new_markdown_cell("### Exercise 1 — a square\n\nWrite `square(x)`."),
        nbformat.v4.new_code_cell(
            "y = 3\n# BEGIN SOLUTION\ndef square(x):\n    return x * x\n# END SOLUTION\n"
            "assert square(y) == 9, 'square(3) must be 9'",
            execution_count=2, outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": "9"})]),
        nbformat.v4.new_markdown_cell("Markers may also sit inside a function:"),
        nbformat.v4.new_code_cell(
            "def f(v):\n    # BEGIN SOLUTION\n    w = v + 1\n    return w\n    # END SOLUTION\n\n\nassert f(1) == 2",
            execution_count=3),
    ]
    nb.cells[5].metadata["tags"] = ["some-tag"]
    return nb


def test_solutions_removed_asserts_kept_other_cells_untouched():
    nb = _toy_notebook()
    before = nbformat.writes(nb)
    out = student_copy.student_notebook(nb)
    assert nbformat.writes(nb) == before, "the input notebook is not modified"
    nbformat.validate(out)
    assert [c.cell_type for c in out.cells] == [c.cell_type for c in nb.cells]
    # markdown untouched, a code cell without markers keeps its source
    for i in (0, 2, 4):
        assert out.cells[i].source == nb.cells[i].source
    assert out.cells[1].source == nb.cells[1].source
    # the solution is gone, replaced by one placeholder; code before and the check after stay
    assert out.cells[3].source == "y = 3\n# YOUR CODE HERE\nassert square(y) == 9, 'square(3) must be 9'"
    assert "return x * x" not in out.cells[3].source
    # indentation kept, cell metadata (tags) kept
    assert out.cells[5].source == "def f(v):\n    # YOUR CODE HERE\n\n\nassert f(1) == 2"
    assert out.cells[5].metadata["tags"] == ["some-tag"]
    # every output and execution count cleared
    for c in out.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None


@pytest.mark.parametrize("source, why", [
    ("# END SOLUTION\nx = 1", "without"),
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
])
def test_unbalanced_markers_are_refused(source, why):
    with pytest.raises(ValueError, match=why):
        student_copy.strip_solutions(source)


def test_command_line_writes_copies_that_pytest_skips(tmp_path):
    """The script run as a user runs it: copies in --out with no solution and no output, ignored by pytest."""
    with_exercises = [p for p in PATHS if _exercise_cells(nbformat.read(p, as_version=4))]
    if not with_exercises:
        pytest.skip("no notebook has exercises yet")
    src = with_exercises[0]
    r = subprocess.run([sys.executable, str(NOTEBOOKS / "student_copy.py"), src.stem, "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    copy = nbformat.read(tmp_path / src.name, as_version=4)
    text = nbformat.writes(copy)
    assert "# BEGIN SOLUTION" not in text and "# END SOLUTION" not in text
    assert all(c.outputs == [] for c in copy.cells if c.cell_type == "code")
    original = nbformat.read(src, as_version=4)
    assert [c.source for c in copy.cells if c.cell_type == "markdown"] == \
        [c.source for c in original.cells if c.cell_type == "markdown"]
    collect = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "--nbval", "."]
    r = subprocess.run(collect, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 5 and "no tests" in r.stdout, r.stdout  # 5: nothing collected
    (tmp_path / "conftest.py").unlink()  # without the guard, nbval would collect the copy's cells
    r = subprocess.run(collect, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and src.name in r.stdout, r.stdout


def _exercise_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("### Exercise")]


def convention_problems(nb) -> list[str]:
    """What in ``nb`` breaks the exercise convention (empty list: nothing)."""
    problems = []
    for n, i in enumerate(_exercise_cells(nb), 1):
        first = nb.cells[i].source.splitlines()[0]
        m = EXERCISE.match(first)
        if not m:
            problems.append(f"cell {i}: first line {first!r} is not '### Exercise N — <title>'")
        elif int(m.group(1)) != n:
            problems.append(f"cell {i}: numbered {m.group(1)}, expected {n}")
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        if nxt is None or nxt.cell_type != "code":
            problems.append(f"cell {i}: not followed by a code cell")
            continue
        lines = nxt.source.split("\n")
        begins = [j for j, line in enumerate(lines) if line.strip() == student_copy.BEGIN]
        ends = [j for j, line in enumerate(lines) if line.strip() == student_copy.END]
        if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
            problems.append(f"cell {i + 1}: needs one '{student_copy.BEGIN}' line and, after it, one "
                            f"'{student_copy.END}' line (found {len(begins)} and {len(ends)})")
            continue
        if not re.search(r"\bassert", "\n".join(lines[ends[0] + 1:])):
            problems.append(f"cell {i + 1}: no assert after '{student_copy.END}' (the self-check)")
        nxt2 = nb.cells[i + 2] if i + 2 < len(nb.cells) else None
        if nxt2 is not None and nxt2.cell_type == "code" and student_copy.BEGIN in nxt2.source:
            problems.append(f"cell {i + 2}: a second solution cell; an exercise has ONE code cell")
    return problems


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_exercises_follow_the_convention(path):
    nb = nbformat.read(path, as_version=4)
    if not _exercise_cells(nb):
        pytest.skip("no exercises yet (test_every_notebook_has_three_exercises reports it)")
    problems = convention_problems(nb)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)
    student_copy.student_notebook(nb)  # markers balanced in every cell


def test_convention_checker_catches_what_it_should():
    nb = _toy_notebook()
    assert convention_problems(nb) == []
    nb.cells[3].source = nb.cells[3].source.replace("\nassert square(y) == 9, 'square(3) must be 9'", "")
    nb.cells[2].source = "### Exercise 2 — a square"
    problems = convention_problems(nb)
    assert len(problems) == 2 and "numbered 2" in problems[0] and "no assert" in problems[1], problems
    nb.cells.insert(4, nbformat.v4.new_code_cell("# BEGIN SOLUTION\nz = 1\n# END SOLUTION\nassert z"))
    assert any("second solution cell" in p for p in convention_problems(nb))


def test_every_notebook_has_three_exercises():
    """One message naming every notebook with fewer than MIN_EXERCISES exercises."""
    counts = {p.name: len(_exercise_cells(nbformat.read(p, as_version=4))) for p in PATHS}
    lacking = {name: n for name, n in counts.items() if n < MIN_EXERCISES}
    assert not lacking, (f"notebooks with fewer than {MIN_EXERCISES} exercises: "
                         + ", ".join(f"{name} ({n})" for name, n in lacking.items()))


# --- every exercise's self-check must refuse plausible wrong answers (notebooks/exercise_check.py) ---------


def _wrong_answer_call(cell) -> tuple[str, int, list[str]] | None:
    """(notebook, exercise, wrong-answer names) of the ``wrong_answers_fail`` call in ``cell``, or None."""
    import ast

    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "wrong_answers_fail":
            nb, n, wrong = node.args[:3]
            return ast.literal_eval(nb), ast.literal_eval(n), [ast.literal_eval(k) for k in wrong.keys]
    return None


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_every_exercise_is_followed_by_its_wrong_answers(path):
    """After each exercise's code cell: a cell tagged wrong-answers that checks >= 2 wrong answers of it."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    for n, i in enumerate(_exercise_cells(nb), 1):
        cell = nb.cells[i + 2] if i + 2 < len(nb.cells) else None
        call = _wrong_answer_call(cell) if cell is not None and cell.cell_type == "code" else None
        if call is None or exercise_check.TAG not in cell.metadata.get("tags", []):
            problems.append(f"exercise {n}: no cell tagged {exercise_check.TAG!r} calling wrong_answers_fail after it")
        elif call[:2] != (path.stem, n) or len(call[2]) < 2:
            problems.append(f"exercise {n}: wrong_answers_fail{call[:2]} with {len(call[2])} wrong answer(s); "
                            f"expected ({path.stem!r}, {n}) with at least 2")
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def _exercise_file(tmp_path):
    nb = _toy_notebook()
    path = tmp_path / "toy.ipynb"
    nbformat.write(nb, path)
    return path


def test_wrong_answers_are_refused_and_the_right_one_would_pass(tmp_path, capsys):
    path = _exercise_file(tmp_path)
    exercise_check.wrong_answers_fail(path, 1, {"doubled": "def square(x):\n    return 2 * x",
                                                "off by one": "def square(x):\n    return x * x + 1"}, {})
    assert capsys.readouterr().out.count("refused by the self-check") == 2
    with pytest.raises(AssertionError, match="passes the wrong answer 'right after all'"):
        exercise_check.wrong_answers_fail(path, 1, {"right after all": "def square(x):\n    return x ** 2"}, {})
    with pytest.raises(RuntimeError, match="crashed"):  # not plausible code: fails before the check
        exercise_check.wrong_answers_fail(path, 1, {"typo": "def square(x):\n    return x * y2"}, {})
    with pytest.raises(ValueError, match="no '### Exercise 2"):
        exercise_check.wrong_answers_fail(path, 2, {"any": "pass"}, {})


def test_wrong_answers_run_in_a_copy_of_the_namespace(tmp_path):
    path = _exercise_file(tmp_path)
    ns = {"marker": 1}
    with pytest.raises(AssertionError):  # the answer passes, and its names do not leak into ns
        exercise_check.wrong_answers_fail(path, 1, {"fine": "marker = 2\ndef square(x):\n    return x * x"}, ns)
    assert ns == {"marker": 1}


def test_wrong_answer_takes_the_solution_blocks_indentation():
    src = "def f(v):\n    # BEGIN SOLUTION\n    w = v + 1\n    return w\n    # END SOLUTION\n\n\nassert f(1) == 2"
    out = exercise_check.with_answer(src, "w = v\nreturn w")
    assert out == "def f(v):\n    w = v\n    return w\n\n\nassert f(1) == 2"
    with pytest.raises(ValueError, match="exactly one"):
        exercise_check.with_answer("x = 1\nassert x", "x = 2")


def test_student_copies_drop_the_wrong_answer_cells():
    nb = _toy_notebook()
    nb.cells.insert(4, nbformat.v4.new_code_cell('wrong_answers_fail("toy", 1, {"a": "b"}, globals())',
                                                 metadata={"tags": [exercise_check.TAG]}))
    out = student_copy.student_notebook(nb)
    assert len(out.cells) == len(nb.cells) - 1
    assert not any("wrong_answers_fail" in c.source for c in out.cells)


def test_every_notebook_has_a_build_it_exercise():
    """At least one exercise per notebook where the student writes a piece of FROMAGe ('— build it: ...')."""
    lacking = [p.name for p in PATHS
               if not any(nbformat.read(p, as_version=4).cells[i].source.split("\n")[0].split(" — ", 1)[1]
                          .startswith("build it:") for i in _exercise_cells(nbformat.read(p, as_version=4)))]
    assert not lacking, f"notebooks without a '### Exercise N — build it: ...' exercise: {', '.join(lacking)}"
