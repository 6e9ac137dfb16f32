"""The committed notebooks hold no output that depends on a machine, a path, a library version or the clock.

Static checks of the stored ``.ipynb`` files (nothing is executed; strict nbval re-runs them separately):
no widget state, every code cell executed in one top-to-bottom run, kernelspec ``python3``, no absolute
paths / memory addresses / library version prints / dates in any stored output, widget displays not
compared by nbval, temporary folders removed, and ``run_all.py`` stripping what a run would add.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
IDS = [p.name for p in PATHS]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TEXT_KEYS = ("text/plain", "text/html", "text/markdown", "text/latex", "application/json")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# what no stored output may contain
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/tmp/|/private/|/var/folders/|/work/|/root\b|/home/|/Users/|/opt/conda|"
                           r"[A-Za-z]:\\\\?Users\\)")
MEMORY_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
VERSION_PRINT = re.compile(r"\b(transformers|torch|tokenizers|numpy|ipywidgets|matplotlib|safetensors)"
                           r"(\.__version__|\s*(==|:|=|\s|v)\s*v?\d+\.\d+(\.\d+)?)")
CLOCK = re.compile(r"\b(19|20)\d\d-[01]\d-[0-3]\d([ T][0-2]\d:[0-5]\d)?\b|\b[0-2]\d:[0-5]\d:[0-5]\d\b")
VERSION_IN_SOURCE = re.compile(r"\b(transformers|torch|tokenizers|numpy|ipywidgets)\.__version__")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_cells(nb):
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _join(v) -> str:
    return "".join(v) if isinstance(v, list) else str(v)


def output_texts(output: dict) -> list[str]:
    """Every human-readable string stored in one output (streams, text reprs, errors with tracebacks)."""
    texts = []
    if "text" in output:
        texts.append(_join(output["text"]))
    for key, value in output.get("data", {}).items():
        if key in TEXT_KEYS:
            texts.append(_join(value) if not isinstance(value, dict) else json.dumps(value))
    if output.get("output_type") == "error":
        texts += [output.get("ename", ""), output.get("evalue", "")]
        texts += [ANSI.sub("", line) for line in output.get("traceback", [])]
    return texts


def offences(text: str) -> list[str]:
    """The substrings of ``text`` that depend on a machine, a path, a library version or the clock."""
    found = []
    for name, rx in (("absolute path", ABSOLUTE_PATH), ("memory address", MEMORY_ADDRESS),
                     ("library version", VERSION_PRINT), ("date/time", CLOCK)):
        found += [f"{name}: {text[max(0, m.start() - 30): m.end() + 30]!r}" for m in rx.finditer(text)]
    return found


def test_there_are_notebooks():
    assert len(PATHS) >= 7, PATHS


def test_detectors_catch_what_they_should():
    """The scanners below are not vacuous: each flags a real example and passes a clean line."""
    bad = ["run folder /tmp/fromage03-x1y2z3/checkpoints", "saved to /var/folders/q1/abc/T/fromage05-k/model",
           "/private/var/folders/q1/abc/T/x", "File /work/main/.venv/lib/python3.11/site-packages/torch/optim.py",
           "/home/alice/.cache/fromage_mini", "/Users/bob/fromage", "/root/.cache/huggingface",
           "<Fromage object at 0x7f3a2b1c4d50>", "transformers 5.23.0", "torch==2.13.0", "numpy: 2.1",
           "print(transformers.__version__)", "written 2025-03-14 12:01", "at 12:01:59"]
    for text in bad:
        assert offences(text), text
    good = ["train.cache_dir        'cache:features'", "loaded data_samples/toy_lm + data_samples/toy_clip",
            "Tab(children=(VBox(children=(HBox(children=(Image(value=b'\\x89PNG\\r\\n\\x1a\\n\\x00\\x00",
            "LM:     OPTForCausalLM         926,592 parameters", "top-1 cosine 0.729, 0.773", "model.lm  'x/y'"]
    for text in good:
        assert not offences(text), (text, offences(text))


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_no_widget_state(path):
    nb = _load(path)
    assert "widgets" not in nb["metadata"], f"{path.name}: metadata.widgets (stale widget state); run run_all.py"
    for i, cell in _code_cells(nb):
        for out in cell.get("outputs", []):
            assert not any("widget" in k for k in out.get("metadata", {})), f"{path.name} cell {i}: widget metadata"


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_kernelspec_is_python3(path):
    assert _load(path)["metadata"].get("kernelspec", {}).get("name") == "python3", path.name


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_executed_top_to_bottom_with_outputs(path):
    """Every code cell was executed, in order, in one run (execution counts 1, 2, ...), and outputs are stored."""
    cells = _code_cells(_load(path))
    assert cells, path.name
    counts = [c.get("execution_count") for _, c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}"
    with_output = [i for i, c in cells if c.get("outputs")]
    assert len(with_output) >= len(cells) // 2, f"{path.name}: only cells {with_output} have stored outputs"


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_outputs_free_of_paths_addresses_versions_and_clock(path):
    problems = []
    for i, cell in _code_cells(_load(path)):
        for out in cell.get("outputs", []):
            for text in output_texts(out):
                problems += [f"cell {i} ({out['output_type']}): {o}" for o in offences(text)]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_no_cell_prints_a_library_version(path):
    hits = [i for i, c in _code_cells(_load(path)) if VERSION_IN_SOURCE.search(_join(c["source"]))]
    assert not hits, f"{path.name}: cells {hits} read a library's __version__"


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_no_stored_widget_view(path):
    """A stored widget view names a model no live kernel has (JupyterLab: "widget model not found")."""
    stale = [i for i, cell in _code_cells(_load(path))
             if any(WIDGET_VIEW in out.get("data", {}) for out in cell.get("outputs", []))]
    assert not stale, f"{path.name}: cells {stale} store a widget view; run notebooks/run_all.py"


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_temporary_folders_are_removed(path):
    """A notebook that makes a temporary folder removes it again (TemporaryDirectory.cleanup or rmtree)."""
    sources = [_join(c["source"]) for _, c in _code_cells(_load(path))]
    made = [i for i, s in enumerate(sources) if re.search(r"tempfile\.(mkdtemp|TemporaryDirectory)\(", s)]
    if not made:
        return
    assert not any("mkdtemp(" in sources[i] for i in made), f"{path.name}: mkdtemp is never removed; use " \
                                                             "TemporaryDirectory and clean it up"
    removed = [i for i, s in enumerate(sources) if re.search(r"\.cleanup\(\)|shutil\.rmtree\(", s)]
    assert removed and max(removed) > max(made), f"{path.name}: temporary folder made in cell {made} never removed"


def test_sanitize_cfg_covers_linux_and_macos_temp_paths():
    cfg = (NOTEBOOKS / "sanitize.cfg").read_text()
    patterns = re.findall(r"^regex: (.*)$\n^replace: (.*)$", cfg, flags=re.M)  # as nbval reads the file
    assert patterns

    def sanitize(s):
        for rx, rep in patterns:
            s = re.sub(rx, rep, s)
        return s

    for path in ("/tmp/fromage03-ab_c1/checkpoints", "/var/folders/x7/k2j_9q0000gn/T/fromage05-1a2b/model_args.json",
                 "/private/var/folders/x7/k2j_9q0000gn/T/fromage05-1a2b", "/private/tmp/fromage03-z"):
        assert sanitize(f"run folder {path} ok") == "run folder TMPPATH ok", (path, sanitize(path))
    for cell in ("/tmp/ipykernel_123/456.py", "/var/folders/x7/k2j_9q0000gn/T/ipykernel_123/456.py",
                 "/private/var/folders/x7/k2j_9q0000gn/T/ipykernel_123/456.py"):
        assert sanitize(f"File {cell}:3") == "File IPYKERNEL_CELL:3", (cell, sanitize(cell))


def test_run_all_strips_widget_state_and_timings():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(NOTEBOOKS))
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m1": {"elapsed": 1.5}}}}
    nb.metadata["kernelspec"] = {"name": "fromage-venv", "display_name": "x", "language": "python"}
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata["execution"] = {"iopub.execute_input": "2025-01-01T00:00:00Z"}
    cell.metadata["tags"] = ["nbval-ignore-output"]
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "x", WIDGET_VIEW: {"model_id": "m1"}},
                                           metadata={WIDGET_VIEW: {"elapsed": 2.0}, "isolated": True})]
    nb.cells.append(cell)
    run_all.clean(nb)
    assert "widgets" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "execution" not in nb.cells[0].metadata and nb.cells[0].metadata["tags"] == ["nbval-ignore-output"]
    assert dict(nb.cells[0].outputs[0].metadata) == {"isolated": True}
    assert dict(nb.cells[0].outputs[0].data) == {"text/plain": "x"}  # the view goes, the text stays


def test_run_all_twice_catches_a_notebook_that_runs_only_once(tmp_path):
    """``run_all.py --twice`` runs every cell twice in one kernel and stores nothing."""
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(NOTEBOOKS))
    nbformat = pytest.importorskip("nbformat")
    once = tmp_path / "once.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nos.mkdir('made_once')  # fails when run again")]
    nbformat.write(nb, once)
    before = once.read_text()
    with pytest.raises(Exception, match="FileExistsError"):
        run_all.run(once, timeout=60, twice=True)
    assert once.read_text() == before
    (tmp_path / "made_once").rmdir()
    nb.cells = [nbformat.v4.new_code_cell("import os\nos.makedirs('made', exist_ok=True)\nprint('ok')")]
    nbformat.write(nb, once)
    assert run_all.run(once, timeout=60, twice=True) > 0
    assert nbformat.read(once, as_version=4).cells[0].outputs == []  # nothing stored
