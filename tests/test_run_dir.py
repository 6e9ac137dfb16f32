"""The run folder: one run per folder, a clean log after an early interrupt, resume says what changed."""
import csv

import pytest
from test_train import settings, tiny_data  # noqa: F401  (fixture)

from fromage_mini.errors import FromageError
from fromage_mini.train.loop import train
from fromage_mini.train.run_dir import RunDir


def quiet(*a):
    pass


def test_finished_run_folder_is_refused_then_overwritten(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path):  # noqa: F811
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path, max_steps=4, val_every=4)
    out = tmp_path / "run"
    first = train(mcfg, tcfg, out, log=quiet)
    best_before = (out / "best.json").read_text()
    with pytest.raises(FromageError, match="already holds a run.*--resume.*--overwrite"):
        train(mcfg, tcfg, out, log=quiet)
    assert (out / "best.json").read_text() == best_before  # nothing was repointed
    again = train(mcfg, tcfg, out, log=quiet, overwrite=True)
    assert again["t2i"] == first["t2i"]  # same seed, a fresh run: same result
    steps = [r["step"] for r in csv.DictReader(open(out / "log.csv"))]
    assert steps == ["2", "4"]  # one header, the new run's rows only


def test_resume_reports_changed_settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path):  # noqa: F811
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path, max_steps=4, val_every=4)
    out = tmp_path / "run"
    train(mcfg, tcfg, out, log=quiet)
    _, longer = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path, max_steps=6, val_every=4)
    lines = []
    m = train(mcfg, longer, out, resume=True, log=lines.append)
    assert m["steps"] == 6
    assert any("changed settings: max_steps: 4 -> 6" in line for line in lines)
    assert [r["step"] for r in csv.DictReader(open(out / "log.csv"))] == ["2", "4", "6"]


def test_log_after_an_interrupt_before_the_first_checkpoint(tmp_path):
    # a run killed before its first checkpoint left a header and rows; --resume starts at step 0
    run = RunDir(tmp_path)
    (tmp_path / "log.csv").write_text("step,loss\n2,1.0\n4,0.9\n")
    run.open_log(0)
    run.log_row(step=2, loss="0.8")
    run.close()
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [(r["step"], r["loss"]) for r in rows] == [("2", "0.8")]  # no second header, no stale rows


def test_resume_drops_rows_logged_after_the_last_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "log.csv").write_text("step,loss\n2,1.0\n4,0.9\n6,0.8\n")
    run.open_log(4)  # the checkpoint was at step 4; step 6 will be logged again
    run.close()
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "log.csv"))] == ["2", "4"]


def test_training_reads_a_tsv_whose_images_live_in_another_folder(tiny_lm_path, tiny_vision_path, tiny_data,  # noqa: F811
                                                                  tmp_path):
    # the original FROMAGe layout: TSVs in one folder, the images in another
    tsvs = tmp_path / "tsv"
    tsvs.mkdir()
    for src in tiny_data:
        (tsvs / src.name).write_text(src.read_text())
    images = tiny_data[0].parent
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, (tsvs / "train.tsv", tsvs / "val.tsv"), tmp_path,
                          max_steps=2, val_every=2)
    with pytest.raises(FromageError, match="no usable samples"):
        train(mcfg, tcfg, tmp_path / "a", log=quiet)
    tcfg = tcfg.__class__(**{**tcfg.to_dict(), "image_root": str(images)})
    m = train(mcfg, tcfg, tmp_path / "b", log=quiet)
    assert m["steps"] == 2 and not m["skips"]["train"]


def test_curves_draw_a_reference_run_beside_this_one(tmp_path):
    """curves.png with a reference log.csv differs from the plain one; a missing reference is skipped; a run
    with no validation yet draws its empty recall panel without matplotlib's "no artists" warning."""
    import warnings

    from fromage_mini.train.run_dir import RunDir

    header = "step,loss,cap_loss,ret_lm_loss,t2i_loss,i2t_loss,t2i_R@1,i2t_R@1,lr,samples_per_s,mfu\n"
    (tmp_path / "log.csv").write_text(header + "".join(f"{s},{5 - s / 100},1,1,1,1,0.5,0.5,1e-3,1,\n"
                                                       for s in (25, 50, 75)))
    ref = tmp_path / "ref.csv"
    ref.write_text(header + "".join(f"{s},{4 - s / 50},1,1,1,1,0.5,0.5,1e-3,1,\n" for s in (25, 50, 75)))
    run = RunDir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = run.plot_curves().read_bytes()
    assert run.plot_curves(reference=tmp_path / "missing.csv").read_bytes() == plain
    assert run.plot_curves(reference=ref).read_bytes() != plain


def test_every_reference_curve_is_shipped_with_its_steps():
    """Each preset's reference log exists and covers at least 200 steps of training."""
    import csv

    from fromage_mini.paths import resolve
    from fromage_mini.presets import PRESETS, REFERENCE_CURVES

    for preset, name in REFERENCE_CURVES.items():
        assert preset in PRESETS
        rows = list(csv.DictReader(open(resolve(name))))
        assert int(rows[-1]["step"]) >= 200 and all(float(r["loss"]) > 0 for r in rows), preset


def test_cli_names_the_presets_reference_run():
    from fromage_mini.train.loop import _reference_curves

    assert _reference_curves("toy") == "data_samples/reference_curves/toy.csv"
    assert _reference_curves("opt-125m") is None  # no reference run for it
