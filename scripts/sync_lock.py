"""After `pip-compile` (run by `make lock`): tidy requirements/course.lock, write environment.yml.

- A local build label (``torch==2.13.0+cpu``, the wheel the course machines carry) is dropped, so
  the pin reads ``torch==2.13.0``: pip still takes the local CPU wheel where it exists, and the
  same line installs the PyPI build elsewhere.
- environment.yml gets every pin of the lock, in the lock's order, so a conda environment holds
  exactly the course versions (tests/test_environment.py compares the two).
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "course.lock"
ENV = ROOT / "environment.yml"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")

HEADER = """\
# conda users: `conda env create -f environment.yml && conda activate fromage-mini`
# Written by `make lock` from requirements/course.lock: the same pins as the course venv (a test
# compares the two). Do not edit by hand; change pyproject.toml and run `make lock`.
# The pins were resolved for Python 3.11 on Linux x86_64 with the CPU build of torch; on a machine
# with a GPU, pip takes PyPI's torch 2.13.0 build for that platform (and its CUDA libraries).
name: fromage-mini
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def pins(text: str) -> list[tuple[str, str]]:
    """(name, version) for every ``name==version`` line of a pip-compile output."""
    return [(m[1], m[2]) for line in text.splitlines() if (m := PIN.match(line))]


def main() -> None:
    text = re.sub(r"^(\S+==[^\s+]+)\+[A-Za-z0-9.]+", r"\1", LOCK.read_text(), flags=re.M)
    LOCK.write_text(text)
    lines = [f"      - {name}=={version}" for name, version in pins(text)]
    ENV.write_text(HEADER + "\n".join(lines + ["      - -e ."]) + "\n")
    print(f"{LOCK.relative_to(ROOT)}: {len(lines)} pins; {ENV.relative_to(ROOT)} rewritten")


if __name__ == "__main__":
    main()
