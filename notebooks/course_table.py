"""The course at a glance, counted from the notebooks themselves: the table in notebooks/README.md.

    python notebooks/course_table.py                   # rewrite the table between the README's markers
    python notebooks/course_table.py --report LOG      # ... with each notebook's strict-nbval seconds taken
                                                       #     from `make test` run with --durations=0 (its log)
                                                       #     or --junitxml (the .xml report)
    python notebooks/course_table.py --check           # exit 1 if the README's table is not what it would write

Cells, exercises (build-it ones by their titles), predict-then-run prompts (exercises so titled and
``**Predict, then run.**`` paragraphs in the prose) and wrong answers are counted from
the .ipynb files, so they cannot drift from the notebooks. The seconds are a measurement: they are kept in
``nbval_seconds.json`` (with how they were measured) and change only when a report is given.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

if __package__:  # imported as notebooks.course_table (the tests)
    from .student_copy import EXERCISE_RE, WRONG_TAG
else:  # run as python notebooks/course_table.py
    from student_copy import EXERCISE_RE, WRONG_TAG

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
SECONDS = HERE / "nbval_seconds.json"
BEGIN, END = "<!-- course-table: written by notebooks/course_table.py -->", "<!-- /course-table -->"
PREDICT = "**Predict, then run.**"  # a prompt in the prose: guess the next cell's result before running it


def count(path: Path) -> dict:
    """Cells, exercises by kind and wrong answers of one notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    titles = [m.group(2) for c in cells if c["cell_type"] == "markdown"
              and (m := EXERCISE_RE.match("".join(c["source"])))]
    wrong = 0
    for c in cells:
        if WRONG_TAG in c["metadata"].get("tags", []):
            for node in ast.walk(ast.parse("".join(c["source"]))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "wrong_answers_fail":
                    wrong += len(node.args[2].keys)
    return {"cells": len(cells), "code": sum(c["cell_type"] == "code" for c in cells), "exercises": len(titles),
            "build": sum(t.startswith("build it:") for t in titles),
            "predict": sum(t.startswith("predict, then run:") for t in titles)
            + sum("".join(c["source"]).count(PREDICT) for c in cells if c["cell_type"] == "markdown"), "wrong": wrong}


NOTEBOOK = re.compile(r"([0-9][0-9a-z]*_[A-Za-z0-9_]+)\.ipynb")
DURATION = re.compile(r"(?:^|\s)([0-9.]+)s (?:setup|call|teardown)\s+\S*?([0-9][0-9a-z]*_[A-Za-z0-9_]+)\.ipynb::")


def seconds_from_report(report: Path) -> dict[str, float]:
    """Each notebook's summed cell times (setup, call, teardown): nbval's test items are its cells.

    ``report``: a junit XML report (``--junitxml``) or the text of a run with ``--durations=0``.
    """
    out: dict[str, float] = {}
    if report.suffix == ".xml":
        for case in ET.parse(report).getroot().iter("testcase"):
            m = NOTEBOOK.search(case.get("classname", "") + " " + case.get("file", "") + " " + case.get("name", ""))
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(case.get("time", 0))
    else:
        for line in report.read_text(errors="replace").splitlines():
            m = DURATION.search(line)
            if m:
                out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(1))
    if not out:
        raise SystemExit(f"course_table.py: no notebook timings in {report}")
    return {k: round(v, 1) for k, v in sorted(out.items())}


def table(seconds: dict) -> str:
    rows = ["| notebook | cells (code) | exercises | build it | predict, then run | wrong answers | strict nbval s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    total = {"cells": 0, "exercises": 0, "build": 0, "predict": 0, "wrong": 0, "s": 0.0}
    for path in sorted(HERE.glob("[0-9]*.ipynb")):
        n, s = count(path), seconds.get(path.stem)
        rows.append(f"| [{path.stem}]({path.name}) | {n['cells']} ({n['code']}) | {n['exercises']} | {n['build']} | "
                    f"{n['predict']} | {n['wrong']} | {'–' if s is None else f'{s:.0f}'} |")
        for k in ("cells", "exercises", "build", "predict", "wrong"):
            total[k] += n[k]
        total["s"] += s or 0.0
    rows.append(f"| **all** | {total['cells']} | {total['exercises']} | {total['build']} | {total['predict']} | "
                f"{total['wrong']} | {total['s']:.0f} |")
    how = seconds.get("_how", "")
    return "\n".join(rows) + (f"\n\nSeconds: {how}" if how else "")


def rendered(readme: str, seconds: dict) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"course_table.py: {README.name} lacks the markers {BEGIN} ... {END}")
    head, rest = readme.split(BEGIN, 1)
    return head + BEGIN + "\n" + table(seconds) + "\n" + END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="`make test`'s --durations=0 log or --junitxml report: the seconds")
    ap.add_argument("--how", default="", help="with --report: one line saying where it was measured")
    ap.add_argument("--check", action="store_true", help="only check that the README's table is current")
    a = ap.parse_args(argv)
    seconds = json.loads(SECONDS.read_text()) if SECONDS.exists() else {}
    if a.report:
        seconds = {**seconds_from_report(a.report), "_how": a.how or seconds.get("_how", "")}
        SECONDS.write_text(json.dumps(seconds, indent=1) + "\n")
    old = README.read_text(encoding="utf-8")
    new = rendered(old, seconds)
    if a.check:
        if new != old:
            print("notebooks/README.md: the course table is stale; run python notebooks/course_table.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    print(table(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
