"""A training run's folder, and the trainer's checkpoint format.

    <out>/config.json              the model and training settings of the run
    <out>/log.csv                  one row per logged step (losses, in-batch R@1, lr, throughput)
    <out>/checkpoints/step_N/      adapters (``save_pretrained``) + optimizer state, step, data position, RNG
    <out>/last.json, best.json     pointers to the newest and the best checkpoint (by val t2i R@1)
    <out>/metrics.json, curves.png written at the end
    <out>/gallery.png              also at the end: captions and retrievals of the best checkpoint

Checkpoints are written to a temporary folder and renamed into place, and pointers are rewritten
atomically, so an interrupted run leaves either the old or the new state, never a torn one.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch

from ..errors import FromageError
from ..files import atomic_folder, read_json, write_json
from ..model.checkpoint import read_pointer

LOG_FIELDS = ["step", "loss", "cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss", "t2i_R@1", "i2t_R@1",
              "lr", "samples_per_s", "mfu"]
RUN_FILES = ("log.csv", "checkpoints", "last.json", "best.json", "metrics.json")  # a run started here


class RunDir:
    """The folder ``out`` of one training run (only rank 0 writes; ``main=False`` makes every write a no-op)."""

    def __init__(self, out, main: bool = True):
        self.path, self.main = Path(out), main
        self._log = None

    # ---- starting a run ----------------------------------------------------------------------
    def prepare(self, settings: dict, resume: bool, overwrite: bool, log=print) -> None:
        """Refuse to mix two runs in one folder; on ``resume`` say which settings changed. The settings
        are written to ``config.json`` only by :meth:`start`, once the run has really begun (a refused
        resume leaves the folder as it was)."""
        self._settings = settings
        if not self.main:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FromageError(f"cannot create the run folder {self.path}: {e.strerror or e}") from None
        held = [n for n in RUN_FILES if (self.path / n).exists()]
        if held and overwrite:
            for n in held + [n for n in ("curves.png", "gallery.png") if (self.path / n).exists()]:
                p = self.path / n
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif held and not resume:
            raise FromageError(f"{self.path} already holds a run ({', '.join(held)}); pass --resume to continue "
                               "it or --overwrite to replace it, or choose another --out")
        elif held and (self.path / "config.json").exists():
            old = read_json(self.path / "config.json")
            if not (isinstance(old, dict) and all(isinstance(old.get(p, {}), dict) for p in ("model", "train"))):
                raise FromageError(f"{self.path / 'config.json'}: not a run's settings (expected "
                                   '{"model": {...}, "train": {...}}); restore it, or delete it to resume anyway')
            changed = [f"{k}: {old[part].get(k)!r} -> {v!r}" for part in ("model", "train")
                       for k, v in settings[part].items() if part in old and old[part].get(k) != _plain(v)]
            if changed:
                log(f"resuming with changed settings: {'; '.join(changed)}")
        if held and resume:
            for link in ("last", "best"):  # a damaged pointer refuses the resume now, not steps later
                self.pointer(link)

    def start(self) -> None:
        """Write the settings given to :meth:`prepare` to ``config.json`` (call it once setup succeeded)."""
        if self.main:
            write_json(self.path / "config.json", self._settings)

    # ---- the log -------------------------------------------------------------------------------
    def open_log(self, step: int) -> None:
        """Open log.csv for appending at ``step``: rows logged after it (lost with the checkpoint they
        followed) are dropped, and the header is written once."""
        if not self.main:
            return
        f = self.path / "log.csv"
        rows = []
        if f.exists() and step > 0:
            rows = [r for r in _read_csv(f) if r.get("step", "").isdigit()
                    and int(r["step"]) <= step]
        with open(f, "w", newline="") as fh:
            w = csv.DictWriter(fh, LOG_FIELDS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in LOG_FIELDS} for r in rows)
        self._log = open(f, "a", newline="")

    def log_row(self, **row) -> None:
        if self._log is not None:
            csv.DictWriter(self._log, LOG_FIELDS).writerow(row)
            self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self, model, opt, state: dict, step: int) -> Path:
        """Write ``checkpoints/step_<step>`` (adapters, optimizer, trainer state, RNG) atomically."""
        from safetensors.torch import save

        final = self.path / "checkpoints" / f"step_{step:06d}"
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp)
            tensors = {}
            for i, st in enumerate(opt.state[p] for g in opt.param_groups for p in g["params"]):
                for k, v in st.items():
                    tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
            groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                tensors["rng.cuda"] = torch.cuda.get_rng_state()
            (tmp / "trainer_state.safetensors").write_bytes(save(tensors))  # a full disk: atomic_folder's one line
            write_json(tmp / "trainer_state.json", {**state, "param_groups": groups})
        return final

    def point(self, link: str, target: Path) -> None:
        """Atomically make ``<link>.json`` (a small JSON pointer file) name ``target``."""
        write_json(self.path / f"{link}.json", {"checkpoint": str(target.relative_to(self.path))})

    def pointer(self, link: str) -> Path | None:
        """The checkpoint ``<link>.json`` names ("last" or "best"), or None; a pointer file of the wrong
        shape is a one-line :class:`FromageError`."""
        f = self.path / f"{link}.json"
        return read_pointer(f) if f.exists() else None

    def prune(self) -> None:
        """Keep only the checkpoints that ``last`` and ``best`` point at."""
        keep = {self.pointer(n) for n in ("last", "best")}
        for d in (self.path / "checkpoints").glob("step_*"):
            if d not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def plot_curves(self, reference: Path | None = None, label: str = "reference run") -> Path:
        """Loss curves from log.csv and validation recall from the last checkpoint's history -> curves.png.

        ``reference``: another run's log.csv (a documented run of the same preset); its total loss is
        drawn dashed beside this run's, so a run that trains differently shows at a glance (a missing
        file is skipped). Drawn on a bare ``Figure`` (no pyplot), so calling it inside a notebook leaves
        the notebook's own plotting backend alone.
        """
        from matplotlib.figure import Figure

        rows = _read_csv(self.path / "log.csv")
        last = self.pointer("last")
        hist = read_json(last / "trainer_state.json")["history"] if last else []
        fig = Figure(figsize=(10, 3.6))
        a, b = fig.subplots(1, 2)
        steps = [int(r["step"]) for r in rows]
        for key in ("loss", "cap_loss", "ret_lm_loss", "t2i_loss", "i2t_loss"):
            a.plot(steps, [float(r[key]) for r in rows], label=key)
        if reference is not None and Path(reference).is_file():
            ref = _read_csv(reference)
            a.plot([int(r["step"]) for r in ref], [float(r["loss"]) for r in ref], ls="--", color="0.4",
                   label=f"loss, {label}")
        a.set_xlabel("step"), a.set_ylabel("loss"), a.legend(fontsize=8), a.set_title("training losses")
        if hist:
            hs = [h["step"] for h in hist]
            for d in ("t2i", "i2t"):
                for k in ("R@1", "R@5"):
                    if all(k in h[d] for h in hist):  # a small split leaves R@5 out (validate.validate)
                        b.plot(hs, [h[d][k] for h in hist], marker="o", label=f"{d} {k}")
        b.set_xlabel("step"), b.set_ylim(0, 1.02), b.set_title("validation recall")
        if b.get_legend_handles_labels()[0]:  # no validation yet: an empty panel, no empty legend
            b.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.path / "curves.png", dpi=110)
        return self.path / "curves.png"


def load_checkpoint(path: Path, model, opt) -> dict:
    """Restore adapters, optimizer state and RNG from a :meth:`RunDir.save` folder; returns the trainer state.

    A damaged file (truncated, NaN, the wrong shape) is a one-line :class:`FromageError`; the model and
    optimizer may then be half restored, so the trainer stops."""
    from ..model.checkpoint import check_finite, load_state, read_adapters

    load_state(model, read_adapters(path / "adapters.safetensors"), str(path))
    tensors = read_adapters(path / "trainer_state.safetensors")
    check_finite(tensors, str(path / "trainer_state.safetensors"))
    state = read_json(path / "trainer_state.json")
    try:
        return _restore(state, tensors, opt)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise FromageError(f"{path}: trainer state does not fit this run ({type(e).__name__}: {e}); "
                           "resume from another checkpoint or start afresh with --overwrite") from None


def _restore(state: dict, tensors: dict, opt) -> dict:
    for key in ("step", "epoch", "pos", "best_r1", "train_seconds", "history", "param_groups"):
        if key not in state:
            raise KeyError(key)
    params = [p for g in opt.param_groups for p in g["params"]]
    opt_state = {"state": {}, "param_groups": []}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, i, k = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[k] = v.to(params[int(i)].device) if k != "step" else v
    for g, saved in zip(opt.param_groups, state.pop("param_groups")):
        opt_state["param_groups"].append({**saved, "params": list(range(len(g["params"])))})
    opt.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def resolve_pointer(out, link: str) -> Path | None:
    """The checkpoint ``<out>/<link>.json`` names, or None (``link``: "last" or "best")."""
    return RunDir(out).pointer(link)


def _plain(v):
    """A setting as it reads back from JSON (tuples become lists)."""
    return list(v) if isinstance(v, tuple) else v


def _read_csv(path) -> list[dict]:
    """The rows of a CSV file with a header line (the file is closed when read)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
