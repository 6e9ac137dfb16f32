"""Every exercise's self-check must fail on a plausible wrong answer: the course checks it in place.

In the reference notebooks each exercise (a ``### Exercise N — <title>`` markdown cell, then ONE code
cell: the reference answer between ``# BEGIN SOLUTION`` and ``# END SOLUTION``, the self-check after)
is followed by a code cell tagged ``wrong-answers``::

    from notebooks.exercise_check import wrong_answers_fail
    wrong_answers_fail("00_tour", 2, {
        "no step taken": "changed = {n for n, p in model.named_parameters() if p.requires_grad}",
    }, globals())

``wrong_answers_fail`` runs the exercise's cell once per wrong answer, the wrong answer in place of the
reference one, in a copy of the notebook's namespace, with its output captured, and raises unless every
run stops at an ``assert`` (the reference answer itself ran, and passed, in the cell above). So strict
nbval of the reference notebooks tests both sides of every self-check. The wrong answers bind names
only: the namespace is copied, the objects in it are not. student_copy.py drops these cells.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from .student_copy import BEGIN_RE, END_RE, EXERCISE_RE, WRONG_TAG as TAG  # the format has one owner

HERE = Path(__file__).resolve().parent


def exercise_source(notebook: str | Path, n: int) -> str:
    """The code cell of exercise ``n`` in ``notebook`` (a stem next to this file, e.g. "00_tour", or a path)."""
    path = Path(notebook)
    if path.suffix != ".ipynb":
        path = HERE / f"{notebook}.ipynb"
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for i, cell in enumerate(cells[:-1]):
        m = EXERCISE_RE.match("".join(cell["source"])) if cell["cell_type"] == "markdown" else None
        if m and int(m.group(1)) == n:
            return "".join(cells[i + 1]["source"])
    raise ValueError(f"{path.name} has no '### Exercise {n} — …' cell")


def with_answer(source: str, answer: str) -> str:
    """``source`` with its one solution block replaced by ``answer``, indented as the block was."""
    lines = source.split("\n")
    begins = [i for i, line in enumerate(lines) if BEGIN_RE.match(line)]
    ends = [i for i, line in enumerate(lines) if END_RE.match(line)]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise ValueError("an exercise cell needs exactly one '# BEGIN SOLUTION' ... '# END SOLUTION' block")
    indent = BEGIN_RE.match(lines[begins[0]]).group(1)
    body = [indent + line if line.strip() else line for line in answer.strip("\n").split("\n")]
    return "\n".join(lines[:begins[0]] + body + lines[ends[0] + 1:])


def _run_quietly(code: str, namespace: dict) -> BaseException | None:
    """Execute ``code`` in ``namespace`` with prints, warnings and figures swallowed; the exception or None."""
    try:
        from IPython.utils.capture import capture_output  # in a kernel: also swallows display() and plots
    except ImportError:  # plain Python
        capture_output = None
    quiet = capture_output() if capture_output else contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet, contextlib.redirect_stderr(io.StringIO()):
            exec(compile(code, "<wrong answer>", "exec"), namespace)
    except Exception as e:  # noqa: BLE001 - the caller sorts assert failures from crashes
        return e
    finally:
        import sys
        if "matplotlib.pyplot" in sys.modules:  # figures a wrong answer drew are not shown
            sys.modules["matplotlib.pyplot"].close("all")
    return None


def wrong_answers_fail(notebook: str | Path, n: int, wrong: dict[str, str], namespace: dict) -> None:
    """Check that exercise ``n``'s self-check stops each of the ``wrong`` answers ({why: code}).

    Raises ``AssertionError`` naming a wrong answer the check lets through, and ``RuntimeError`` for one
    that crashes before the check (a wrong answer must be plausible: it runs, and the check refuses it).
    Prints one line per wrong answer.
    """
    if not wrong:
        raise ValueError(f"exercise {n}: give at least one wrong answer")
    source = exercise_source(notebook, n)
    lines = []
    for why, code in wrong.items():
        err = _run_quietly(with_answer(source, code), dict(namespace))
        if err is None:
            raise AssertionError(f"exercise {n}: the self-check passes the wrong answer {why!r}")
        if not isinstance(err, AssertionError):
            raise RuntimeError(f"exercise {n}: the wrong answer {why!r} crashed ({type(err).__name__}: {err}) "
                               "before the self-check could refuse it")
        lines.append(f"exercise {n}, wrong answer {why!r}: refused by the self-check")
    print("\n".join(lines))
