"""The notebooks as a student meets them: a real JupyterLab, driven in headless Chromium by Playwright.

strict nbval executes every notebook and compares its outputs; it cannot see whether a notebook opens in
JupyterLab's UI and shows its stored outputs there, whether its widgets render and answer with a live
kernel, or what the browser console says. This test covers those and leaves the executing to nbval. It
starts JupyterLab on a free loopback port with a random token (and stops it, whatever happens), on copies
of the notebooks, and:

* opens every notebook, waits for its kernel to start and go idle (nothing is run), and asserts that every
  cell is on the page and every code cell shows its stored outputs: one output area per stored output
  (consecutive stream outputs of one name are one area, as JupyterLab merges them), each of the stored kind
  (stdout, stderr/error, image, plain text), with the first and last lines of stored text in it and every
  image decoded; that error outputs appear only in cells tagged ``raises-exception``; and that no error
  dialog or error notification is on the page;
* in a widget notebook (one whose code imports ``ipywidgets``: 06), clears the outputs from the Edit menu,
  runs the cells up to and including the one that imports ``ipywidgets`` (the widgets and what they
  depend on) with Run > Run All Above Selected Cell, saves, and asserts that those cells ran without an
  error output and that the widgets rendered; then it asks a question (an answer appears in the
  transcript), changes the image picker (the preview changes, the chat is reset), switches to the
  retrieval tab and searches (k image cards appear);
* asserts that the browser console logged no error while any notebook was open.

Two tabs: one runs the widget notebooks while the other opens the rest. The kernels get their own
feature cache, so they never write the one nbval's kernels use.

Screenshots of each notebook as opened, and of 06 after Ask and after Search, are written to
``runs/browser/`` (or ``$FROMAGE_BROWSER_SHOTS``) and kept, with ``summary.json``. The browser is the
system's Chromium (``$FROMAGE_CHROMIUM``, else ``chromium`` on PATH; ``make test`` installs Debian's
package when it runs as root); Playwright never downloads one. No Chromium: the test fails with one line.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
PER_RUN_S = 600
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
# the kernel status at the right of JupyterLab's status bar: "Python 3 (ipykernel) | Idle"
KERNEL_STATUS = """() => { for (const e of document.querySelectorAll('.jp-StatusBar-TextItem')) {
    const m = e.textContent.trim().match(/\\| (\\w+)$/); if (m) return m[1]; } return null; }"""
QUEUED = """() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('*'))"""
# every cell of the open notebook: its type and, for code cells, each output area's mime type, text and images
CELLS = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')].map(c => ({
    type: c.classList.contains('jp-CodeCell') ? 'code' : c.classList.contains('jp-MarkdownCell') ? 'markdown' : 'raw',
    outputs: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => ({
        mime: o.getAttribute('data-mime-type') || '', text: o.innerText,
        images: [...o.querySelectorAll('img')].map(i => i.complete && i.naturalWidth > 0)}))}))"""
# what JupyterLab shows when something went wrong: a dialog, or an error notification
ALERTS = """() => [...document.querySelectorAll('.jp-Dialog, .Toastify__toast--error')]
    .map(e => e.innerText.trim().replace(/\\s+/g, ' ').slice(0, 200))"""
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


NO_CHROMIUM = ("no Chromium found (install Debian's `chromium` package, as `make test` does when run as root, "
               "or set FROMAGE_CHROMIUM); the browser test cannot run")


def chromium() -> str | None:
    path = os.environ.get("FROMAGE_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return path if path and Path(path).exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def widget_cell(nb: dict) -> int | None:
    """Index of the last code cell that imports ipywidgets (the widgets are built there), None if none does."""
    found = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and re.search(r"^\s*(import ipywidgets|from ipywidgets import)", source(c), re.M)]
    return found[-1] if found else None


class Lab:
    """A JupyterLab server on copies of the notebooks; the rest of the repository is linked in."""

    def __init__(self, base: Path):
        self.root = base / "root"
        (self.root / "notebooks").mkdir(parents=True)
        for entry in ROOT.iterdir():  # data_samples, benchmarks, pyproject.toml ... (the notebooks cd here)
            if entry.name not in (".git", "notebooks") and not entry.name.startswith(".venv"):
                (self.root / entry.name).symlink_to(entry)
        for nb in NOTEBOOKS:
            shutil.copy(nb, self.root / "notebooks" / nb.name)
        settings = base / "settings"
        for plugin, values in {"apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                               "notebook-extension/tracker": {"windowingMode": "none"}}.items():
            f = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
                   JUPYTER_RUNTIME_DIR=str(base / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"), FROMAGE_MINI_CACHE=str(base / "cache"),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.extension_manager=readonly", "--LabApp.news_url="]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = base / "jupyterlab.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)  # also when pytest exits in the middle of the run
        deadline = time.time() + 120
        while True:
            try:
                self.api("GET", "status")
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"JupyterLab did not start; its log: {self.log.read_text()[-1500:]}") from None
                time.sleep(0.3)

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernel(self, name: str) -> None:
        for s in self.api("GET", "sessions"):
            if s["path"].endswith(name):
                self.api("DELETE", f"sessions/{s['id']}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def lines(text: str) -> list[str]:
    """Non-empty lines as a terminal shows them (ANSI codes dropped, a carriage return overwrites), spaces collapsed."""
    out = []
    for line in ANSI.sub("", text).split("\n"):
        line = " ".join(line.rsplit("\r", 1)[-1].split())
        if line:
            out.append(line)
    return out


def expected_outputs(cell: dict) -> list[tuple[str, str]]:
    """(kind, text) of each output area JupyterLab shows for a stored code cell (it merges consecutive streams
    of one name)."""
    out = []
    for o in cell.get("outputs", []):
        kind = o["output_type"]
        if kind == "stream":
            if out and out[-1][0] == o["name"]:
                out[-1] = (o["name"], out[-1][1] + "".join(o["text"]))
                continue
            out.append((o["name"], "".join(o["text"])))
        elif kind == "error":
            out.append(("stderr", f"{o['ename']}: {o['evalue']}"))
        else:
            data = o.get("data", {})
            if any(m.startswith("image/") for m in data):
                out.append(("image", ""))
            elif set(data) == {"text/plain"}:
                out.append(("text", "".join(data["text/plain"])))
            else:
                out.append(("other", ""))
    return out


def rendered_kind(mime: str) -> str:
    return {"application/vnd.jupyter.stdout": "stdout", "application/vnd.jupyter.stderr": "stderr",
            "text/plain": "text"}.get(mime, "image" if mime.startswith("image/") else "other")


def compare(nb: dict, cells: list[dict], name: str) -> list[str]:
    """What differs between the stored notebook and the cells on the page."""
    if len(cells) != len(nb["cells"]):
        return [f"{name}: {len(cells)} cells on the page, {len(nb['cells'])} in the file"]
    out = []
    for i, (stored, shown) in enumerate(zip(nb["cells"], cells)):
        if shown["type"] != stored["cell_type"]:
            out.append(f"{name} cell {i}: a {stored['cell_type']} cell shown as {shown['type']}")
            continue
        if stored["cell_type"] != "code":
            continue
        want = expected_outputs(stored)
        got = [(rendered_kind(o["mime"]), o) for o in shown["outputs"]]
        if [k for k, _ in want] != [k for k, _ in got]:
            out.append(f"{name} cell {i}: shows outputs {[k for k, _ in got]}, stored {[k for k, _ in want]}")
            continue
        tags = stored.get("metadata", {}).get("tags", [])
        for (kind, text), (_, o) in zip(want, got):
            if kind == "stderr" and "raises-exception" not in tags:
                out.append(f"{name} cell {i}: an error output in a cell not tagged raises-exception")
            if not all(o["images"]) or (kind == "image" and not o["images"]):
                out.append(f"{name} cell {i}: an image output is not shown")
            shown_text = " ".join(o["text"].split())
            stored_lines = lines(text)
            for line in {stored_lines[0], stored_lines[-1]} if stored_lines else ():
                if line[:120] not in shown_text:
                    out.append(f"{name} cell {i}: the stored line {line[:80]!r} is not shown")
    return out


class Tab:
    """One browser tab showing one notebook at a time; console errors are counted per notebook."""

    def __init__(self, browser, lab: Lab, workspace: str, shots: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.lab, self.workspace, self.shots = lab, workspace, shots
        self.name, self.console = None, {}
        self.page.on("console", lambda m: m.type == "error" and self._log(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self._log(f"page error: {e}"))

    def _log(self, text: str) -> None:
        self.console.setdefault(self.name, []).append(text[:300])

    @property
    def path(self) -> Path:
        return self.lab.root / "notebooks" / self.name

    def open(self, name: str) -> list[str]:
        """Open ``notebooks/name`` in a fresh workspace, wait for its kernel; -> what the page does not show right."""
        self.name = name
        nb = json.loads(self.path.read_text())
        n_outputs = sum(len(expected_outputs(c)) for c in nb["cells"] if c["cell_type"] == "code")
        self.page.goto(f"{self.lab.url}/lab/workspaces/{self.workspace}/tree/notebooks/{name}"
                       f"?reset&token={self.lab.token}")
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        problems = []
        try:  # the kernel started: idle once (it turns busy for a moment afterwards, answering the UI's requests)
            status = self.page.wait_for_function(
                f"() => {{ const s = ({KERNEL_STATUS})(); return ['Idle', 'Dead'].includes(s) && s; }}",
                timeout=120_000).json_value()
        except Exception:
            status = f"{self.kernel_status()} 120 s"
        if status != "Idle":
            problems.append(f"{name}: the kernel is {status} after opening, not idle")
        try:  # every output area on the page and every image decoded
            self.page.wait_for_function(
                """([n]) => document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output').length === n
                    && [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output img')]
                       .every(i => i.complete)""", arg=[n_outputs], timeout=30_000)
        except Exception:
            pass  # compare() says what is missing
        problems += compare(nb, self.page.evaluate(CELLS), name)
        problems += [f"{name}: on the page: {a}" for a in self.page.evaluate(ALERTS)]
        self.page.screenshot(path=str(self.shots / name.replace(".ipynb", ".png")))
        return problems

    def close(self) -> None:
        """Leave the notebook, then shut its kernel down (not before: the page may still be talking to it)."""
        self.page.goto("about:blank")
        self.lab.shutdown_kernel(self.name)

    def kernel_status(self) -> str | None:
        return self.page.evaluate(KERNEL_STATUS)

    def run_through(self, index: int) -> None:
        """Edit > Clear Outputs of All Cells, then run every cell up to and including cell ``index``."""
        self.page.get_by_role("menuitem", name="Edit", exact=True).click()
        self.page.get_by_text("Clear Outputs of All Cells", exact=True).click()
        cells = self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        if index + 1 < cells.count():
            cells.nth(index + 1).locator(".jp-InputPrompt").first.click()
            self.page.wait_for_function(
                """([k]) => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[k]
                    .classList.contains('jp-mod-active')""", arg=[index + 1], timeout=10_000)
            command = "Run All Above Selected Cell"
        else:
            command = "Run All Cells"
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_text(command, exact=True).click()
        self.t0, self.idle_since = time.time(), None

    def finished(self) -> bool:
        """True once the kernel has been idle with no queued cell for two polls in a row."""
        status = self.kernel_status()
        if status in ("Dead", "Unknown"):
            raise AssertionError(f"{self.name}: the kernel is {status.lower()}")
        if time.time() - self.t0 > PER_RUN_S:
            raise AssertionError(f"{self.name}: still running after {PER_RUN_S} s")
        if status != "Idle" or self.page.evaluate(QUEUED):
            self.idle_since = None
            return False
        if self.idle_since is None:
            self.idle_since = time.time()
        return time.time() - self.idle_since > 1.0

    def save(self) -> dict:
        """Save from the UI; -> the notebook as JupyterLab wrote it (outputs included)."""
        before = self.path.stat().st_mtime_ns
        self.page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        deadline = time.time() + 30
        while self.path.stat().st_mtime_ns == before:
            assert time.time() < deadline, f"{self.name}: JupyterLab did not save the notebook"
            time.sleep(0.2)
        time.sleep(0.5)  # let the write finish
        return json.loads(self.path.read_text())


def problems_in(nb: dict, name: str, through: int) -> list[str]:
    """Code cells up to ``through`` that did not run, and their error outputs outside raises-exception cells."""
    out = []
    for i, cell in enumerate(nb["cells"][:through + 1]):
        if cell["cell_type"] != "code":
            continue
        if cell.get("execution_count") is None:
            out.append(f"{name} cell {i}: did not run")
        tags = cell.get("metadata", {}).get("tags", [])
        for o in cell.get("outputs", []):
            if o["output_type"] == "error" and "raises-exception" not in tags:
                out.append(f"{name} cell {i}: {o.get('ename')}: {o.get('evalue', '')[:200]}")
    return out


def drive_the_widgets(page, shots: Path) -> list[str]:
    """06: ask, change the picker, search; -> what did not happen."""
    wrong = []
    try:
        page.wait_for_selector(".jp-NotebookPanel .widget-tab", state="visible", timeout=30_000)
    except Exception:
        return ["06: no widget is shown after its cells ran"]
    ui = page.locator(".widget-tab").first
    ui.scroll_into_view_if_needed()
    transcript = ui.locator(".widget-output").first
    asked = transcript.inner_text().count("You:")
    ui.locator(".widget-text", has=page.locator("label", has_text="ask")).locator("input").fill(
        "what colour is the star?")
    ui.get_by_role("button", name="Ask", exact=True).click()
    try:
        page.wait_for_function(
            """([n]) => { const t = document.querySelector('.widget-tab .widget-output').innerText;
                          return (t.match(/You:/g) || []).length > n
                              && /what colour is the star\\?\\s*FROMAGe: \\S/.test(t); }""",
            arg=[asked], timeout=60_000)
    except Exception:
        wrong.append(f"06: no answer in the transcript after Ask; it reads {transcript.inner_text()[-200:]!r}")
    page.screenshot(path=str(shots / "06_after_ask.png"))

    preview = ui.locator("img").first.get_attribute("src")
    ui.locator("select").first.select_option(label="val #5")
    try:
        page.wait_for_function("([s]) => document.querySelector('.widget-tab img').getAttribute('src') !== s",
                               arg=[preview], timeout=30_000)
    except Exception:
        wrong.append("06: the preview did not change with the image picker")
    if transcript.inner_text().strip():
        wrong.append("06: a new image did not start a new chat (the transcript is not empty)")

    ui.locator(".lm-TabBar-tab", has_text="Retrieval explorer").click()
    ui.locator(".widget-text", has=page.locator("label", has_text="describe")).locator("input").fill(
        "a small green circle at the bottom left.")
    k = int(ui.locator(".widget-readout:visible").first.inner_text())
    ui.get_by_role("button", name="Search", exact=True).click()
    cards = ui.locator(".widget-output:visible img")
    try:
        page.wait_for_function("([k]) => [...document.querySelectorAll('.widget-tab .widget-output')]"
                               ".filter(e => e.offsetParent !== null)"
                               ".some(e => e.querySelectorAll('img').length === k)", arg=[k], timeout=60_000)
    except Exception:
        wrong.append(f"06: Search showed {cards.count()} image cards, not top-k = {k}")
    page.screenshot(path=str(shots / "06_after_search.png"))
    return wrong


def shots_folder() -> Path:
    folder = Path(os.environ.get("FROMAGE_BROWSER_SHOTS", ROOT / "runs" / "browser"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def check_notebooks() -> dict:
    """Every notebook opened in JupyterLab's UI, the widget notebooks' widget cells run and clicked
    -> {"problems", "seconds", "wall", "widget_cells", "shots"}."""
    from playwright.sync_api import sync_playwright

    path = chromium()
    if path is None:
        return {"problems": [NO_CHROMIUM], "fatal": True}
    shots, base = shots_folder(), Path(tempfile.mkdtemp(prefix="fromage-browser-test-"))
    widget_cells = {p.name: i for p in NOTEBOOKS if (i := widget_cell(json.loads(p.read_text()))) is not None}
    to_run = list(widget_cells)
    to_open = [p.name for p in NOTEBOOKS if p.name not in widget_cells]
    problems, seconds, t0 = [], {}, time.time()
    lab = Lab(base)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
            try:
                runner, viewer = Tab(browser, lab, "runner", shots), Tab(browser, lab, "viewer", shots)
                running = False
                while to_run or to_open or running:
                    if not running and to_run:  # a widget notebook: check it as opened, then run its widget cells
                        name = to_run.pop(0)
                        problems += runner.open(name)
                        runner.run_through(widget_cells[name])
                        running = True
                    if to_open:  # meanwhile, the next notebook is opened in the other tab
                        t = time.time()
                        problems += viewer.open(to_open.pop(0))
                        viewer.close()
                        seconds[viewer.name] = round(time.time() - t, 1)
                    elif running:
                        time.sleep(0.5)
                    if running and runner.finished():
                        running = False
                        problems += problems_in(runner.save(), runner.name, widget_cells[runner.name])
                        problems += drive_the_widgets(runner.page, shots)
                        runner.close()
                        seconds[runner.name] = round(time.time() - runner.t0, 1)
                problems += [f"{n}: {m}" for tab in (runner, viewer) for n, msgs in tab.console.items() for m in msgs]
            finally:
                browser.close()
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)
    return {"problems": problems, "seconds": seconds, "wall": time.time() - t0, "widget_cells": widget_cells,
            "shots": shots}


def test_notebooks_open_and_widgets_respond_in_jupyterlab():
    try:
        r = check_notebooks()
    except Exception as e:  # playwright missing, JupyterLab not starting, ...: one line
        pytest.fail(f"the browser run stopped: {type(e).__name__}: {e}", pytrace=False)
    if r.get("fatal"):
        pytest.fail(r["problems"][0], pytrace=False)
    summary = {"notebooks": len(NOTEBOOKS), "wall_s": round(r["wall"], 1), "run_through_cell": r["widget_cells"],
               "seconds": r["seconds"], "problems": r["problems"]}
    (r["shots"] / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nbrowser test: {summary}; screenshots in {r['shots']}")
    assert r["widget_cells"], "no notebook imports ipywidgets: the widget check found nothing to run"
    assert not r["problems"], f"(screenshots in {r['shots']})\n" + "\n".join(r["problems"])
