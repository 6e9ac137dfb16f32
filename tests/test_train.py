"""The trainer end to end on tiny backbones and a tiny TSV dataset, including SIGKILL + resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fromage_mini.presets import TrainConfig
from fromage_mini.train.loop import train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
SHAPES = ["circle", "square"]


def write_split(folder: Path, name: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    rows = ["caption\timage"]
    for i in range(n):
        c = list(COLOURS)[i % 4]
        s = SHAPES[(i // 4) % 2]
        img = np.full((32, 32, 3), 240, np.uint8)
        img[8:24, 8:24] = COLOURS[c] if s == "square" else img[8:24, 8:24]
        if s == "circle":
            yy, xx = np.mgrid[:32, :32]
            img[(yy - 16) ** 2 + (xx - 16) ** 2 < 64] = COLOURS[c]
        img = np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / name / f"{i:03d}.png")
        rows.append(f"a {c} {s}.\t{name}/{i:03d}.png")
    tsv = folder / f"{name}.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    return tsv


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return write_split(d, "train", 32, 0), write_split(d, "val", 8, 1)


def settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp, **kw):
    from fromage_mini import FromageConfig

    mcfg = FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16, concat_prob=0.5)
    base = dict(train_data=str(tiny_data[0]), val_data=str(tiny_data[1]), cache_dir=str(tmp / "cache"),
                batch_size=8, lr=1e-2, warmup_steps=2, max_steps=8, val_every=4, ckpt_every=2,
                log_every=2, caption_eval=0)
    tcfg = TrainConfig(**{**base, **kw})
    return mcfg, tcfg


def test_train_writes_metrics_plot_and_checkpoints(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path):
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path)
    m = train(mcfg, tcfg, tmp_path / "run", log=lambda *a: None)
    out = tmp_path / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for d in ("t2i", "i2t"):
        assert set(saved[d]) == {"R@1", "R@5"} or set(saved[d]) >= {"R@1", "R@5"}
        assert 0.0 <= saved[d]["R@1"] <= 1.0
    assert saved["train_seconds"] > 0 and saved["steps"] == 8
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "config.json").exists()
    from fromage_mini import Fromage

    best = out / json.loads((out / "best.json").read_text())["checkpoint"]
    Fromage.from_pretrained(best)  # a best checkpoint loads as a model
    # the cache is reused: a second run computes no features
    m2 = train(mcfg, tcfg.__class__(**{**tcfg.to_dict(), "max_steps": 2}), tmp_path / "run2", log=lambda *a: None)
    assert m2["cache_seconds"] < saved["cache_seconds"] + 5


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path):
    """A run killed twice (SIGKILL after step 4, then its resumed run after step 10) ends as an uninterrupted one."""
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path, max_steps=16, val_every=8)
    sets = [f"lm={mcfg.lm}", f"vision={mcfg.vision}", "ret_dim=16", "concat_prob=0.5", "n_visual_tokens=1",
            "image_layout=before_bos", "ret_init_text=None", "max_len=24", "center_heads=False", "max_seconds=None"]
    sets += [f"{k}={v}" for k, v in tcfg.to_dict().items() if k in
             ("train_data", "val_data", "cache_dir", "batch_size", "lr", "warmup_steps", "max_steps", "val_every",
              "ckpt_every", "log_every", "caption_eval")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def cmd(out, *extra):
        return [sys.executable, "-m", "fromage_mini.cli", "train", "--preset", "toy", "--out", str(out),
                *extra, "--set", *sets]

    def kill_once_past(step, *extra):
        """Start a run, SIGKILL it (no chance to clean up) once its last checkpoint is past ``step``."""
        p = subprocess.Popen(cmd(out, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline:
            last = out / "last.json"
            if last.exists() and json.loads(last.read_text())["checkpoint"] >= f"checkpoints/step_{step:06d}":
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # every file on disk is a complete version: the pointed-to checkpoint loads
        ckpt = out / json.loads((out / "last.json").read_text())["checkpoint"]
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert step <= state["step"] < 16
        assert not (out / "metrics.json").exists()

    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    out = tmp_path / "killed"
    kill_once_past(4)
    kill_once_past(10, "--resume")  # a resumed run killed in turn
    resumed = subprocess.run(cmd(out, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = json.loads((tmp_path / "full/metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["t2i"] == b["t2i"] and a["i2t"] == b["i2t"] and a["best_step"] == b["best_step"]


def test_cli_tour_trains_saves_and_reloads(tmp_path):
    """``fromage-mini tour``: the losses fall on tiny random backbones and the adapters round-trip."""
    from fromage_mini import tour

    out = tour.run(tmp_path, steps=20)
    assert out["reload_identical"]
    assert out["final_loss"] < out["first_loss"]
