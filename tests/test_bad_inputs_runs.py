"""Bad inputs to a training run: damaged run-folder files, a refused resume, a diverging learning rate,
a time cap, and legal but suspicious setups. Each ends in one line (nothing on disk changed), one
warning line, or an honest record of what happened; and the next run works."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import write_split

from fromage_mini import FromageConfig, FromageError
from fromage_mini.cli import main
from fromage_mini.presets import TrainConfig
from fromage_mini.train.loop import train

BASE = dict(batch_size=8, lr=1e-2, warmup_steps=1, max_steps=4, val_every=2, ckpt_every=2, log_every=1,
            caption_eval=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"train": write_split(d, "train", 32, 0), "val": write_split(d, "val", 8, 1),
            "val3": write_split(d, "val3", 3, 2), "cache": d / "cache"}


@pytest.fixture(scope="module")
def mcfg(tiny_lm_path, tiny_vision_path):
    return FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16, concat_prob=0.5)


def tcfg(data, **kw):
    return TrainConfig(**{"train_data": str(data["train"]), "val_data": str(data["val"]),
                          "cache_dir": str(data["cache"]), **BASE, **kw})


@pytest.fixture(scope="module")
def finished(mcfg, data, tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4) to copy and damage."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(mcfg, tcfg(data), out, log=lambda *a: None)
    return out


def copy_of(run, tmp_path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(e) -> str:
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    return str(e.value)


def last_checkpoint(run: Path) -> Path:
    return run / json.loads((run / "last.json").read_text())["checkpoint"]


# ---------------------------------------------------------------------------------------------
# resuming from damaged files: one line, and the run folder is left exactly as it was


def test_resume_from_a_truncated_trainer_state_is_one_line_and_changes_nothing(finished, mcfg, data, tmp_path):
    run = copy_of(finished, tmp_path)
    state = last_checkpoint(run) / "trainer_state.safetensors"
    good = state.read_bytes()
    state.write_bytes(good[:50])  # cut inside the safetensors header
    before = snapshot(run)
    with pytest.raises(FromageError) as e:
        train(mcfg, tcfg(data, max_steps=6), run, resume=True, log=lambda *a: None)
    assert one_line(e).startswith(f"{state}: not a readable safetensors file")
    assert snapshot(run) == before  # config.json and log.csv included
    state.write_bytes(good)  # restored: the same resume now continues to step 6
    m = train(mcfg, tcfg(data, max_steps=6), run, resume=True, log=lambda *a: None)
    assert m["steps_done"] == 6


@pytest.mark.parametrize("file, content, says", [
    ("best.json", "[]", 'not a checkpoint pointer (expected {"checkpoint": "checkpoints/step_N"})'),
    ("last.json", '{"ckpt": "checkpoints/step_000004"}', "not a checkpoint pointer"),
    ("last.json", '{"checkpoint": 4}', "not a checkpoint pointer"),
    ("config.json", "[1, 2]", 'not a run\'s settings (expected {"model": {...}, "train": {...}})'),
    ("config.json", '{"model": [], "train": {}}', "not a run's settings"),
])
def test_damaged_run_files_of_the_right_json_but_wrong_shape(finished, mcfg, data, tmp_path, file, content, says):
    run = copy_of(finished, tmp_path)
    (run / file).write_text(content)
    before = snapshot(run)
    with pytest.raises(FromageError) as e:
        train(mcfg, tcfg(data, max_steps=6), run, resume=True, log=lambda *a: None)
    assert one_line(e).startswith(f"{run / file}: {says}")
    assert snapshot(run) == before


def test_a_run_folder_with_a_damaged_best_json_is_one_line_for_eval_and_chat(finished, tmp_path):
    from fromage_mini.model import load_model

    run = copy_of(finished, tmp_path)
    (run / "best.json").write_text('{"best": 2}')
    with pytest.raises(FromageError) as e:
        load_model(run, "cpu")
    assert one_line(e).startswith(f"{run / 'best.json'}: not a checkpoint pointer")


def test_a_refused_resume_leaves_config_json_and_the_log_as_they_were(finished, mcfg, data, tmp_path):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    with pytest.raises(FromageError) as e:  # ret_dim 16 -> 8: the checkpoint no longer fits the model
        train(mcfg.replace(ret_dim=8), tcfg(data, max_steps=6), run, resume=True, log=lambda *a: None)
    assert "tensors do not match" in one_line(e) or "other backbones or sizes" in one_line(e)
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# a learning rate that makes the loss NaN


def test_a_nan_loss_stops_with_one_line_naming_the_step_and_lr_and_saves_nothing_nan(mcfg, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FromageError) as e:
        train(mcfg, tcfg(data, lr=1e30), out, log=lambda *a: None)
    msg = one_line(e)
    assert msg.startswith("step 2: the training loss became NaN or infinite, so training stopped")
    assert "the learning rate is the likely cause (lr=1e+30)" in msg and "--set lr=1e+29" in msg
    assert not (out / "metrics.json").exists() and not (out / "best.json").exists()
    assert not (out / "checkpoints").exists() and not (out / "last.json").exists()
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1"]  # the NaN step was never logged
    # a sane lr in the same folder (with --overwrite) trains
    assert train(mcfg, tcfg(data), out, overwrite=True, log=lambda *a: None)["steps_done"] == 4


def test_a_loss_turning_nan_after_a_checkpoint_keeps_only_finite_checkpoints(mcfg, data, tmp_path, monkeypatch):
    from fromage_mini.model.fromage import Fromage

    real = Fromage.forward
    calls = {"n": 0}

    def forward(self, *a, **kw):  # the 3rd training step's loss is NaN (validation does not call forward)
        o = real(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 3:
            o.loss = o.loss * float("nan")
        return o

    monkeypatch.setattr(Fromage, "forward", forward)
    out = tmp_path / "run"
    with pytest.raises(FromageError) as e:
        train(mcfg, tcfg(data, grad_clip=None), out, log=lambda *a: None)
    assert one_line(e).startswith("step 3: the training loss became NaN")
    assert f"--resume from the last good checkpoint ({out / 'checkpoints/step_000002'})" in one_line(e)
    from fromage_mini.model.checkpoint import read_adapters

    for ckpt in (out / "checkpoints").glob("step_*"):
        assert all(torch.isfinite(t).all() for t in read_adapters(ckpt / "adapters.safetensors").values())
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_000002"]


# ---------------------------------------------------------------------------------------------
# the time cap is honest


def cli_train(mcfg, data, out, *sets):
    args = ["train", "--preset", "toy", "--out", str(out), "--set", f"lm={mcfg.lm}", f"vision={mcfg.vision}",
            "ret_dim=16", "n_visual_tokens=1", "image_layout=before_bos", "ret_init_text=None", "max_len=24",
            "center_heads=False", f"train_data={data['train']}", f"val_data={data['val']}",
            f"cache_dir={data['cache']}", *[f"{k}={v}" for k, v in BASE.items()], *sets]
    return main(args)


def test_max_seconds_stopping_early_is_said_last_and_recorded(mcfg, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train(mcfg, data, out, "max_seconds=1e-9") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["steps_done"], m["steps_planned"], m["stopped_by_time"], m["steps"]) == (1, 4, True, 1)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == ("note: max_seconds=1e-09 stopped training after 1 of 4 planned steps (a slow or busy machine), "
                    "so these metrics are below what the full run reaches; finish it with --resume --set "
                    "max_seconds=None")
    # the advice works: the run finishes and says nothing more
    assert cli_train(mcfg, data, out, "max_seconds=None", "--resume") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["steps_done"], m["steps_planned"], m["stopped_by_time"]) == (4, 4, False)
    assert not capsys.readouterr().out.strip().splitlines()[-1].startswith("note:")


# ---------------------------------------------------------------------------------------------
# legal but suspicious setups: one warning line each


def test_validation_on_the_training_data_and_a_warmup_longer_than_the_run_warn(mcfg, data, tmp_path):
    lines = []
    train(mcfg, tcfg(data, val_data=str(data["train"]), warmup_steps=10), tmp_path / "run", log=lines.append)
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert warnings == [
        "warning: warmup_steps=10 >= max_steps=4: the learning rate never reaches lr=0.01 (it ends at 0.004); "
        "lower warmup_steps or raise max_steps",
        f"warning: the validation data is the training data ({data['train']}): validation recall then measures "
        "memorisation, not generalisation; give val_data a held-out split",
    ]
    copy = tmp_path / "copy.tsv"  # a copy under another name is the same data too
    copy.write_bytes(data["train"].read_bytes())
    lines.clear()
    train(mcfg, tcfg(data, val_data=str(copy), image_root=str(data["train"].parent)), tmp_path / "run2",
          log=lines.append)
    assert sum("the validation data is the training data" in ln for ln in lines) == 1
    lines.clear()
    train(mcfg, tcfg(data), tmp_path / "run3", log=lines.append)  # held-out data, a short warm-up
    assert [ln for ln in lines if ln.startswith("warning:")] == [
        "warning: the validation split has only 8 rows: R@10 left out (with k >= 8 candidates every image is found); "
        "use a larger validation split"]


def test_a_validation_split_smaller_than_k_leaves_those_recalls_out_and_plots(mcfg, data, tmp_path):
    lines = []
    m = train(mcfg, tcfg(data, val_data=str(data["val3"])), tmp_path / "run", log=lines.append)
    assert "warning: the validation split has only 3 rows: R@5, R@10 left out (with k >= 3 candidates every image " \
           "is found); use a larger validation split" in lines
    assert set(m["t2i"]) == set(m["i2t"]) == {"R@1"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# NaN in a loaded artefact: refused, or (a cache) rebuilt


def test_nan_in_saved_adapters_is_refused_in_one_line(make_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from fromage_mini import Fromage

    make_model("opt").save_pretrained(tmp_path / "ckpt")
    f = tmp_path / "ckpt" / "adapters.safetensors"
    t = load_file(f)
    t["image_head.weight"][0, 0] = float("nan")
    save_file(t, f)
    with pytest.raises(FromageError) as e:
        Fromage.from_pretrained(tmp_path / "ckpt")
    assert one_line(e) == (f"{f}: image_head.weight hold NaN or infinite values (a damaged file, or saved from a run "
                           "whose loss diverged); refusing to load it")


def test_nan_in_a_feature_cache_is_said_left_out_and_counted(mcfg, data, tmp_path):
    tc = tcfg(data, cache_dir=str(tmp_path / "cache"), center_heads=True)  # 4 steps: one epoch, every row
    train(mcfg, tc, tmp_path / "r0", log=lambda *a: None)  # builds both caches
    for feats in (tmp_path / "cache").rglob("feat_00000.npy"):  # row 0 of each split: centring uses it
        arr = np.load(feats)
        arr[0, 0] = np.nan
        np.save(feats, arr)
    lines = []
    m = train(mcfg, tc, tmp_path / "r1", log=lines.append)
    said = [ln for ln in lines if "hold NaN or inf" in ln]
    assert len(said) == 2 and said[0].startswith("[train] 1 rows of the feature cache ") and said[0].endswith(
        "hold NaN or inf (a damaged file): they are left out and counted; delete that folder to rebuild it")
    assert m["skips"]["validation_rows"] == {"non_finite_feature": 1}
    assert m["skips"]["training_rows"] == {"non_finite_feature": 1}
    assert np.isfinite(m["t2i"]["R@1"])  # centring and validation used the finite rows (was a NaN run)
