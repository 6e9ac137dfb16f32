"""Re-execute the course notebooks and store their outputs in place.

    python notebooks/run_all.py                      # every notebooks/[0-9]*.ipynb, in order
    python notebooks/run_all.py 02_ret_mechanism     # some of them (name, stem or path)
    python notebooks/run_all.py --timeout 300        # per-cell limit in seconds (default 600)
    python notebooks/run_all.py --twice              # each top to bottom twice in one kernel, nothing stored

Each notebook runs in a fresh kernel of *this* Python (the one running the script, as
``pytest --nbval-current-env`` does), with the notebook's folder as working directory, exactly
as nbval will later re-run it. Outputs are written back into the ``.ipynb``, without widget state
(``metadata.widgets``: per-run model ids, tqdm's speeds and timestamps) or per-cell execution
metadata; the kernelspec is normalised to ``python3`` so nbval finds it. One line per notebook
reports its wall time; the exit status is non-zero if any notebook failed (a failed notebook is
not overwritten).

After running, check that the stored outputs reproduce:

    python -m pytest -q --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _kernel_manager():
    """A kernel manager whose ``python3`` kernel is the running interpreter (like --nbval-current-env)."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class CurrentEnv(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=CurrentEnv())


def find(names: list[str]) -> list[Path]:
    if not names:
        return sorted(HERE.glob("[0-9]*.ipynb"))
    out = []
    for n in names:
        p = Path(n)
        cands = [p, HERE / p, HERE / f"{p}.ipynb"] + sorted(HERE.glob(f"{p.stem}*.ipynb"))
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            sys.exit(f"run_all.py: no notebook matches {n!r}")
        out.append(hit.resolve())
    return out


def run(path: Path, timeout: int, twice: bool = False) -> float:
    """Execute one notebook in place; returns its wall time in seconds.

    ``twice``: run every cell, then every cell again, in the same kernel (as a student who reruns a
    notebook does) and store nothing: checks that no cell depends on running only once.
    """
    import copy

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if twice:
        nb.cells = nb.cells + copy.deepcopy(nb.cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    client = NotebookClient(nb, km=_kernel_manager(), timeout=timeout, allow_errors=False, record_timing=False,
                            store_widget_state=False, resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines (TCP notice ...)
    seconds = time.perf_counter() - t0
    if twice:
        return seconds
    clean(nb)
    nbformat.write(nb, path)
    return seconds


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def clean(nb) -> None:
    """Drop what differs from run to run but is no output: widget state, execution timings.

    ``metadata.widgets`` (the widget models of the last run: random ids, tqdm's speeds and timestamps),
    each cell's ``execution`` timestamps, any widget or timing entry in an output's metadata, and the
    widget-view part of a displayed widget (it names a model that only the kernel of that run had, so
    JupyterLab would log "widget model not found" on opening the notebook; the text/plain part stays).
    """
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(WIDGET_VIEW, None)
            meta = out.get("metadata")
            if not meta:
                continue
            for key in [k for k in meta if "widget" in k or k in ("execution", "timing")]:
                del meta[key]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (default: all numbered ones)")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    ap.add_argument("--twice", action="store_true",
                    help="run each notebook top to bottom twice in one kernel; store nothing (a re-run check)")
    a = ap.parse_args(argv)
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}.items():
        os.environ.setdefault(k, v)
    failed, total = [], 0.0
    for path in find(a.notebooks):
        try:
            s = run(path, a.timeout, a.twice)
        except Exception as e:  # a cell raised or timed out: report, keep going, leave the file as it was
            failed.append(path.name)
            first = str(e).strip().splitlines()
            print(f"FAILED  {path.name}: {type(e).__name__}: {first[-1] if first else ''}", flush=True)
            continue
        total += s
        print(f"{s:7.1f} s  {path.name}", flush=True)
    print(f"{total:7.1f} s  total" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
