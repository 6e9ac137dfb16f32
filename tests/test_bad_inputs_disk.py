"""A full disk (ENOSPC) or a folder the user may not write to (EACCES) while we write a feature cache,
a checkpoint, an index or an eval output: one line naming the path and the cause, nothing half-written
left behind (no temporary file or folder, no partial cache), the previous version kept, and the next
run, with room on the disk, works.

The failures are provoked by making ``os.fsync`` (every atomic write calls it before the rename) or
``tempfile.mkstemp`` fail for paths under a given folder, as a full or read-only disk would."""
import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_train import write_split

from fromage_mini import FromageConfig, FromageError
from fromage_mini.files import WriteError, atomic_write, write_json
from fromage_mini.presets import TrainConfig
from fromage_mini.train.loop import train

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd's file")
FULL = "No space left on device"


def fail_writes(monkeypatch, under: Path, err: int = errno.ENOSPC) -> None:
    """Every fsync of a file under ``under`` fails with ``err`` (mkstemp too, for EACCES)."""
    real_fsync, real_mkstemp = os.fsync, tempfile.mkstemp

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
            raise OSError(err, os.strerror(err))
        return real_fsync(fd)

    def mkstemp(suffix=None, prefix=None, dir=None, **kw):  # names the file it tried, as the real one does
        if err == errno.EACCES and dir is not None and str(dir).startswith(str(under)):
            raise PermissionError(err, os.strerror(err), os.path.join(dir, f"{prefix}k3j9x_{suffix}"))
        return real_mkstemp(suffix=suffix, prefix=prefix, dir=dir, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders that a write left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp" in p.name or "building" in p.name)


def one_line(e) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


def test_atomic_write_keeps_the_old_version_and_says_why(tmp_path, monkeypatch):
    write_json(tmp_path / "a.json", {"v": 1})
    fail_writes(monkeypatch, tmp_path)
    with pytest.raises(WriteError) as e:
        write_json(tmp_path / "a.json", {"v": 2})
    assert one_line(e) == f"{tmp_path / 'a.json'}: cannot write it ({FULL}); nothing was written there; " \
                          "free some space and run again"
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1} and leftovers(tmp_path) == []
    fail_writes(monkeypatch, tmp_path, errno.EACCES)
    with pytest.raises(WriteError) as e:
        with atomic_write(tmp_path / "b.bin") as f:
            f.write(b"x")
    assert one_line(e) == f"{tmp_path / 'b.bin'}: cannot write it (Permission denied); nothing was written " \
                          "there; choose a folder you can write to"
    assert not (tmp_path / "b.bin").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# training: the feature cache and the checkpoints


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_split(d, "train", 32, 0), write_split(d, "val", 8, 1)


def settings(tiny_lm_path, tiny_vision_path, data, cache):
    mcfg = FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16)
    tcfg = TrainConfig(train_data=str(data[0]), val_data=str(data[1]), cache_dir=str(cache), batch_size=8, lr=1e-2,
                       warmup_steps=1, max_steps=4, val_every=2, ckpt_every=2, log_every=2, caption_eval=0)
    return mcfg, tcfg


def test_a_full_disk_while_caching_features_leaves_no_half_built_cache(tiny_lm_path, tiny_vision_path, data,
                                                                       tmp_path, monkeypatch):
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, data, tmp_path / "cache")
    fail_writes(monkeypatch, tmp_path / "cache")
    with pytest.raises(FromageError) as e:
        train(mcfg, tcfg, tmp_path / "run", log=lambda *a: None)
    msg = one_line(e)
    assert msg.startswith(str(tmp_path / "cache")) and msg.endswith(f": cannot build the feature cache ({FULL}); "
                                                                  "nothing was written there; free some space and "
                                                                  "run again")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no shard, no index.json
    assert not (tmp_path / "run" / "config.json").exists()
    monkeypatch.undo()  # room again: the same command trains
    assert train(mcfg, tcfg, tmp_path / "run", log=lambda *a: None)["steps_done"] == 4


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_good_one(tiny_lm_path, tiny_vision_path, data,
                                                                       tmp_path, monkeypatch):
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, data, tmp_path / "cache")
    tcfg = TrainConfig(**{**tcfg.to_dict(), "max_steps": 6})
    from fromage_mini.train import run_dir

    real_save = run_dir.RunDir.save

    def save(self, model, opt, state, step):  # the disk fills up after the step-2 checkpoint
        if step > 2:
            fail_writes(monkeypatch, self.path / "checkpoints")
        return real_save(self, model, opt, state, step)

    monkeypatch.setattr(run_dir.RunDir, "save", save)
    out = tmp_path / "run"
    with pytest.raises(FromageError) as e:
        train(mcfg, tcfg, out, log=lambda *a: None)
    assert one_line(e) == (f"{out / 'checkpoints' / 'step_000004'}: cannot write it ({FULL}); nothing was written "
                           "there; free some space and run again")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]  # no temporary folder
    assert json.loads((out / "last.json").read_text())["checkpoint"] == "checkpoints/step_000002"
    monkeypatch.undo()
    m = train(mcfg, tcfg, out, resume=True, log=lambda *a: None)  # room again: the run resumes and finishes
    assert m["steps_done"] == 6


# ---------------------------------------------------------------------------------------------
# an index and an eval output


def test_a_full_disk_while_writing_an_index_keeps_the_previous_index(make_model, tmp_path, monkeypatch):
    from PIL import Image

    from fromage_mini.retrieval.build import build_index
    from fromage_mini.retrieval.index import RetrievalIndex

    m = make_model("opt")
    for i, c in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (32, 32), c).save(tmp_path / f"{i}.png")
    build_index(m, str(tmp_path), tmp_path / "out" / "idx", progress=False)
    (tmp_path / "3.png").write_bytes((tmp_path / "0.png").read_bytes())
    fail_writes(monkeypatch, tmp_path / "out")
    with pytest.raises(FromageError) as e:
        build_index(m, str(tmp_path), tmp_path / "out" / "idx", progress=False)
    assert one_line(e) == (f"{tmp_path / 'out' / 'idx'}: cannot write it ({FULL}); nothing was written there; "
                           "free some space and run again")
    assert len(RetrievalIndex.load(tmp_path / "out" / "idx")) == 3 and leftovers(tmp_path / "out") == []
    monkeypatch.undo()
    assert len(build_index(m, str(tmp_path), tmp_path / "out" / "idx", progress=False)) == 4


@pytest.mark.parametrize("err, says", [(errno.ENOSPC, f"({FULL}); nothing was written there; free some space"),
                                       (errno.EACCES, "(Permission denied); nothing was written there; choose a "
                                                      "folder you can write to")])
def test_eval_output_on_a_full_or_unwritable_disk(tmp_path, monkeypatch, capsys, err, says):
    from PIL import Image

    from fromage_mini.cli import main

    for i, c in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (32, 32), c).save(tmp_path / f"{i}.png")
    (tmp_path / "p.tsv").write_text("caption\timage\na red one\t0.png\na green one\t1.png\na blue one\t2.png\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r.json").write_text('{"old": true}\n')
    fail_writes(monkeypatch, tmp_path / "out", err)
    args = ["eval", "--model", "data_samples/toy_fromage", "--device", "cpu", "--out", str(tmp_path / "out" / "r.json"),
            "recall", "--pairs", str(tmp_path / "p.tsv")]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"fromage-mini: error: {tmp_path / 'out' / 'r.json'}: cannot write it {says}")
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {"old": True}
    assert leftovers(tmp_path / "out") == []
    monkeypatch.undo()
    assert main(args) == 0 and json.loads((tmp_path / "out" / "r.json").read_text())["n"] == 3


def test_a_full_disk_in_a_numpy_save_is_the_same_one_line(tmp_path, monkeypatch):
    from fromage_mini.files import save_numpy

    fail_writes(monkeypatch, tmp_path)
    with pytest.raises(WriteError) as e:
        save_numpy(tmp_path / "a.npy", np.zeros(3))
    assert one_line(e).startswith(f"{tmp_path / 'a.npy'}: cannot write it ({FULL})")
    assert list(tmp_path.iterdir()) == []
