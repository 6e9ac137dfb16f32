"""Every decimal number in a notebook's prose is shown by the notebook or cited from a file that holds it.

A number such as "0.708" in a markdown cell passes when it appears in that notebook's code or stored
outputs, or in a file the same markdown cell names (``benchmarks/results/*.json``, ``docs/*.md`` ...,
compared after rounding the file's numbers to the prose's digits). Section numbers ("§2.1") and arXiv
ids are not numbers of this kind. The few numbers the prose derives by arithmetic from printed ones are
listed below with their derivation, so that a new hand-typed number fails here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
DECIMAL = re.compile(r"(?<![\w.§/-])(\d+\.\d+)(?![\w.]*[/\w])")
CITED = re.compile(r"[\w./-]+\.(?:json|md|csv)")
DERIVED = {  # (notebook, number): how the prose gets it from what a cell prints
    ("00_tour", "0.93"): "the toy LM's 926,592 parameters (printed in §3), in millions",
    ("00_tour", "0.08"): "5,513,729 trained / 6,658,473,984 frozen (both printed in §6), in per cent",
    ("02_ret_mechanism", "0.125"): "chance for 1st of 8: 1/8, as the sentence says",
    ("04b_binding", "0.93"): "the toy LM's parameter count in millions (notebook 00 prints 926,592)",
    ("04b_binding", "0.022"): "sqrt(0.25 / 500), written out in the sentence",
    ("04b_binding", "0.25"): "p(1 - p) at its largest, p = 0.5, in the same sentence's formula",
    ("07_fromage_works", "0.93"): "the toy LM's parameter count in millions (notebook 00 prints 926,592)",
}


def shown(cells) -> str:
    """The code and every stored text output of a notebook, as one string."""
    parts = []
    for c in cells:
        if c["cell_type"] != "code":
            continue
        parts.append("".join(c["source"]))
        for o in c.get("outputs", []):
            parts.append("".join(o.get("text", "")))
            parts += ["".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def numbers_in(path: Path) -> set[str]:
    """Every decimal in a file, also rounded to 1–4 digits (prose rounds what a results file stores)."""
    out = set()
    for x in re.findall(r"-?\d+\.\d+", path.read_text(errors="replace")):
        out.add(x)
        out.update(f"{float(x):.{d}f}" for d in range(1, 5))
    return out


def unbacked(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    text = shown(cells)
    problems = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "markdown":
            continue
        md = "".join(c["source"])
        pool = set()
        for name in CITED.findall(md):
            for base in (ROOT, path.parent):
                if (base / name).is_file():
                    pool |= numbers_in(base / name)
        prose = re.sub(r"\$[^$]*\$", "", md)  # LaTeX
        prose = re.sub(r"\d{4}\.\d{5}", "", prose)  # arXiv ids
        for m in DECIMAL.finditer(prose):
            x = m.group(1)
            if x in text or x in pool or (path.stem, x) in DERIVED:
                continue
            problems.append(f"cell {i}: {x}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_prose_numbers_are_shown_or_cited(path):
    problems = unbacked(path)
    assert not problems, (f"{path.name}: numbers in the prose that no cell shows and no cited file holds "
                          "(print them, cite their file, or derive them in DERIVED): " + ", ".join(problems))


def test_the_check_catches_a_typed_number(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["R@1 is 0.731 here; see §2.1."]},
                    {"cell_type": "code", "metadata": {}, "source": ["print(0.5)"], "outputs": [
                        {"output_type": "stream", "name": "stdout", "text": ["0.5\n"]}]}]}
    path = tmp_path / "99_t.ipynb"
    path.write_text(json.dumps(nb))
    assert unbacked(path) == ["cell 0: 0.731"]
    nb["cells"][1]["outputs"][0]["text"] = ["R@1 0.731\n"]
    path.write_text(json.dumps(nb))
    assert unbacked(path) == []
