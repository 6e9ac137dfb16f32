"""gallery.png at the end of training: what it draws is the model's, every source gives its images, and a
failing picture never costs a finished run."""
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from test_readers import same_data  # noqa: F401  (fixture)
from test_train import settings, tiny_data  # noqa: F401  (fixture)

from fromage_mini.cli import main
from fromage_mini.config import ConfigError, TrainConfig
from fromage_mini.data.cache import cached_split
from fromage_mini.data.readers import read_images
from fromage_mini.infer.generate import TensorIndex, caption
from fromage_mini.train import gallery as gallery_module
from fromage_mini.train.gallery import gallery_for_run, spread, write_gallery
from fromage_mini.train.loop import train
from fromage_mini.train.run_dir import RunDir
from fromage_mini.train.validate import retrieval_vectors


def quiet(*a):
    pass


def test_cli_train_writes_a_gallery_and_ends_with_its_path(tiny_lm_path, tiny_vision_path, tiny_data,  # noqa: F811
                                                           tmp_path, capsys):
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path, max_steps=4, val_every=4)
    sets = [f"lm={mcfg.lm}", f"vision={mcfg.vision}", "ret_dim=16", "n_visual_tokens=1", "image_layout=before_bos",
            "ret_init_text=None", "max_len=24", "center_heads=False", "max_seconds=None"]
    sets += [f"{k}={getattr(tcfg, k)}" for k in ("train_data", "val_data", "cache_dir", "batch_size", "lr",
                                                 "warmup_steps", "max_steps", "val_every", "log_every", "caption_eval")]
    out = tmp_path / "run"
    assert main(["train", "--preset", "toy", "--out", str(out), "--set", *sets]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith("best checkpoint: ")
    assert lines[-2:] == [f"curves: {out / 'curves.png'} (dashed: the loss of the reference run, "
                          "data_samples/reference_curves/toy.csv)", f"gallery: {out / 'gallery.png'}"]
    drawn = (out / "curves.png").read_bytes()  # drawn once, by train(), with the reference run in it
    assert RunDir(out).plot_curves().read_bytes() != drawn  # the same curves without the reference differ
    with Image.open(out / "gallery.png") as im:
        assert im.format == "PNG" and im.width == 1320 and 900 < im.height < 1600  # 12 in at 110 dpi
        assert len(np.unique(np.asarray(im.convert("L")))) > 20  # images and text, not a blank page


@pytest.fixture(scope="module")
def val_cache(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path_factory):  # noqa: F811
    from fromage_mini import Fromage, FromageConfig

    model = Fromage(FromageConfig(lm=tiny_lm_path("opt"), vision=tiny_vision_path("clip"), ret_dim=16))
    return cached_split(model, str(tiny_data[1]), tmp_path_factory.mktemp("cache"), "val", quiet)


def test_gallery_draws_the_models_own_captions_and_index_search(make_model, tiny_data, val_cache,  # noqa: F811
                                                                 tmp_path):
    images = partial(read_images, str(tiny_data[1]))
    drawn = {}
    for seed in (0, 1):
        model = make_model(seed=seed).eval()
        g = write_gallery(model, val_cache, tmp_path / f"g{seed}.png", images=images, n_images=3, queries=3, k=4)
        assert g.queries == spread(8, 3) == [1, 4, 6]  # spread through the 8 validation rows
        t, v = retrieval_vectors(model, val_cache)
        scores, ids = TensorIndex(v).search(t[g.queries], 4)
        assert torch.equal(g.ids, ids) and torch.allclose(g.scores, scores, atol=1e-6)
        assert g.captions == caption(model, val_cache.features(range(3)))
        for j, row in enumerate(g.queries):  # the rank agrees with the top 4 it was drawn beside
            top = g.ids[j].tolist()
            assert (row in top) == (g.ranks[j] <= 4) and (row not in top or top.index(row) == g.ranks[j] - 1)
        assert g.missing == []  # a TSV gives every row's image
        drawn[seed] = np.asarray(Image.open(g.path).convert("RGB"))
    assert drawn[0].shape == drawn[1].shape and (drawn[0] != drawn[1]).any()  # another model, another picture
    g = write_gallery(make_model(seed=0), val_cache, tmp_path / "bare.png", n_images=2, queries=1, k=2)
    assert g.missing == sorted(set([0, 1] + g.ids[0].tolist()))  # no image source: captions stand in


def test_read_images_gives_the_same_images_from_every_source(same_data):  # noqa: F811
    from_tsv = read_images(same_data / "tsv" / "pairs.tsv", ["1", "4", "9"])
    assert sorted(from_tsv) == ["1", "4"]  # a key the source does not have is just absent
    wds = read_images(same_data / "shards", ["000000001", "000000004"])
    hf = read_images(same_data / "saved", ["1", "4"])
    for k in ("1", "4"):
        assert wds[f"00000000{k}"].tobytes() == from_tsv[k].tobytes() == hf[k].tobytes()
    assert sorted(read_images(same_data / "shards", ["000000001", "000000004"], max_scan=3)) == ["000000001"]


def test_a_failing_gallery_is_one_log_line_and_the_run_stands(tiny_lm_path, tiny_vision_path, tiny_data,  # noqa: F811
                                                              tmp_path, monkeypatch):
    mcfg, tcfg = settings(tiny_lm_path, tiny_vision_path, tiny_data, tmp_path, max_steps=2, val_every=2)
    out = tmp_path / "run"
    out.mkdir()
    (out / "gallery.png").write_bytes(b"an older run's picture")

    def broken(*a, **kw):
        raise RuntimeError("no room on the canvas\nsecond line")

    monkeypatch.setattr(gallery_module, "_draw", broken)
    lines = []
    m = train(mcfg, tcfg, out, log=lines.append)
    assert m["steps"] == 2 and (out / "metrics.json").exists() and (out / "curves.png").exists()
    assert [x for x in lines if "gallery" in x] == ["gallery: not written (RuntimeError: no room on the canvas)"]
    assert not (out / "gallery.png").exists()  # the older picture does not pass for this run's


def test_gallery_switch(val_cache, tmp_path):
    with pytest.raises(ConfigError, match="gallery='yes': must be true or false"):
        TrainConfig(gallery="yes")
    (tmp_path / "gallery.png").write_bytes(b"old")
    lines = []
    assert gallery_for_run(None, tmp_path, val_cache, TrainConfig(gallery=False), lines.append) is None
    assert lines == [] and not (tmp_path / "gallery.png").exists()
