"""Crash safety: SIGKILL the feature-cache build at several points; every file on disk stays whole
and a rerun resumes. Also: NaN/inf rows inside a cache file are skipped and counted by the trainer."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch

from fromage_mini.data.cache import FeatureCache

BUILD = textwrap.dedent("""
    import sys, time, numpy as np, torch
    from types import SimpleNamespace
    from PIL import Image
    from fromage_mini import Fromage, FromageConfig
    from fromage_mini.data.cache import build_cache
    lm, vis, out, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    torch.manual_seed(0)
    m = Fromage(FromageConfig(lm=lm, vision=vis, ret_dim=8))
    def samples():
        rng = np.random.default_rng(0)
        for i in range(96):
            time.sleep(delay)
            yield SimpleNamespace(key=f"k{i}", caption=f"caption {i}",
                                  image=Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    build_cache(out, samples(), m, batch_size=4, shard_size=8, progress=False)
""")


def run_build(tiny_lm_path, tiny_vision_path, out, delay, wait=True):
    cmd = [sys.executable, "-c", BUILD, tiny_lm_path("opt"), tiny_vision_path("clip"), str(out), str(delay)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
        return None
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shards_done(folder):
    try:
        return len(json.loads((folder / "index.json").read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_during_cache_build_then_resume(tiny_lm_path, tiny_vision_path, tmp_path):
    """A cache build killed twice (after shard 1, then its resumed build after shard 5) ends as an uninterrupted one."""
    ref = tmp_path / "ref"
    run_build(tiny_lm_path, tiny_vision_path, ref, 0.0)
    out = tmp_path / "killed"
    for kill_after in (1, 5):  # the second kill hits a resumed build
        p = run_build(tiny_lm_path, tiny_vision_path, out, 0.02, wait=False)
        deadline = time.time() + 200
        while shards_done(out) < kill_after and time.time() < deadline:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # what is on disk is whole: the index parses, lists only complete shards, each loads
        partial = FeatureCache(out)
        assert kill_after <= len(partial.info["shards"]) < 12 and not partial.info["complete"]
        assert len(partial) == 8 * len(partial.info["shards"])
        for f in out.glob("feat_*.npy"):
            np.load(f, allow_pickle=False)  # a stray unlisted shard is still a whole file
    run_build(tiny_lm_path, tiny_vision_path, out, 0.0)  # resume
    full, want = FeatureCache(out), FeatureCache(ref)
    assert full.info["complete"] and len(full) == len(want) == 96
    assert full.keys == want.keys
    torch.testing.assert_close(full.all_features(), want.all_features())


def test_non_finite_rows_in_a_cache_file_are_skipped_by_the_trainer(tiny_lm_path, tiny_vision_path, tmp_path):
    from fromage_mini import FromageConfig
    from fromage_mini.presets import TrainConfig
    from fromage_mini.train.loop import train

    sys.path.insert(0, os.path.dirname(__file__))
    from test_train import write_split

    tr, va = write_split(tmp_path, "train", 16, 0), write_split(tmp_path, "val", 8, 1)
    mcfg = FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=8, concat_prob=0.0)
    tcfg = TrainConfig(train_data=str(tr), val_data=str(va), cache_dir=str(tmp_path / "cache"), batch_size=8,
                       max_steps=1, val_every=1, ckpt_every=1, log_every=1, caption_eval=0)
    train(mcfg, tcfg, tmp_path / "run0", log=lambda *a: None)  # builds the caches
    (feat,) = [p for p in (tmp_path / "cache").rglob("feat_00000.npy") if "train" in str(p.parent)]
    arr = np.load(feat).copy()
    arr[0, 0], arr[3, 1] = np.nan, np.inf
    np.save(feat, arr)
    m = train(mcfg, TrainConfig(**{**tcfg.to_dict(), "max_steps": 4}), tmp_path / "run1", log=lambda *a: None)
    assert m["skips"]["training_rows"]["non_finite_feature"] >= 2
    assert np.isfinite(m["t2i"]["R@1"])
