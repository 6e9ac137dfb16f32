"""The frozen-feature cache: equal to live features, resumable, refuses another vision model."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fromage_mini import FromageError
from fromage_mini.data.cache import FeatureCache, build_cache


def samples(n, fail_at=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        if fail_at is not None and i == fail_at:
            raise KeyboardInterrupt("simulated kill")
        px = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        yield SimpleNamespace(key=f"k{i}", caption=f"caption {i}", image=Image.fromarray(px))


def test_cache_matches_live_features(make_model, tmp_path):
    m = make_model("opt", "clip")
    cache = build_cache(tmp_path / "c", samples(10), m, batch_size=4, shard_size=4, progress=False)
    assert len(cache) == 10 and len(cache.info["shards"]) == 3
    live = m.image_features(m.preprocess([s.image for s in samples(10)]))
    torch.testing.assert_close(cache.all_features(), live.half().float())
    assert cache.captions[7] == "caption 7" and cache.keys[7] == "k7"
    assert cache.features([9, 0, 5]).shape == (3, m.vis_dim)


def test_cache_resumes_after_interruption(make_model, tmp_path):
    m = make_model("opt", "clip")
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "c", samples(10, fail_at=9), m, batch_size=4, shard_size=4, progress=False)
    partial = FeatureCache(tmp_path / "c")
    assert len(partial) == 8 and not partial.info["complete"]  # two whole shards survived
    full = build_cache(tmp_path / "c", samples(10), m, batch_size=4, shard_size=4, progress=False)
    ref = build_cache(tmp_path / "ref", samples(10), m, batch_size=4, shard_size=4, progress=False)
    assert full.info["complete"] and len(full) == 10
    torch.testing.assert_close(full.all_features(), ref.all_features())
    assert full.captions == ref.captions


def test_cache_refuses_other_vision_model(make_model, tmp_path):
    build_cache(tmp_path / "c", samples(3), make_model("opt", "clip"), progress=False)
    with pytest.raises(FromageError, match="another vision model"):
        build_cache(tmp_path / "c", samples(3), make_model("opt", "siglip"), progress=False)


def test_non_finite_features_are_skipped_and_counted(make_model, tmp_path, monkeypatch):
    m = make_model("opt", "clip")
    real = m.image_features

    def poisoned(px):
        f = real(px)
        f[0, 0] = float("nan")
        f[1, 1] = float("inf")
        return f

    monkeypatch.setattr(m, "image_features", poisoned)
    cache = build_cache(tmp_path / "c", samples(6), m, batch_size=3, progress=False)
    assert len(cache) == 2 and cache.info["skips"]["non_finite_feature"] == 4
    assert torch.isfinite(cache.all_features()).all()


def test_corrupt_cache_file_is_a_clear_error(make_model, tmp_path):
    build_cache(tmp_path / "c", samples(3), make_model("opt", "clip"), progress=False)
    (tmp_path / "c/feat_00000.npy").write_bytes(b"garbage")
    with pytest.raises(FromageError, match="feat_00000.npy"):
        FeatureCache(tmp_path / "c")


class OnlyTheInterface:
    """A model seen through FeatureSource alone: any other attribute the cache reached for would fail."""

    def __init__(self, model):
        from fromage_mini.data.cache import FeatureSource

        allowed = set(FeatureSource.__annotations__) | {n for n in vars(FeatureSource) if not n.startswith("_")}
        self._model, self._allowed = model, allowed

    def __getattr__(self, name):
        if name not in self._allowed:
            raise AttributeError(f"the feature cache used {name!r}, which FeatureSource does not list")
        return getattr(self._model, name)


@pytest.mark.parametrize("cfg", [{}, {"visual_prefix": "grid", "grid_size": 2}])
def test_the_cache_uses_the_model_only_through_feature_source(make_model, tmp_path, cfg):
    from fromage_mini.data.cache import FeatureSource, cached_split, feature_fingerprint

    m = make_model("opt", "clip", **cfg)
    assert isinstance(m, FeatureSource)
    assert feature_fingerprint(OnlyTheInterface(m)) == feature_fingerprint(m)
    via = build_cache(tmp_path / "via", samples(5), OnlyTheInterface(m), batch_size=2, progress=False)
    ref = build_cache(tmp_path / "ref", samples(5), m, batch_size=2, progress=False)
    assert via.shape == ref.shape == m.feature_shape  # the one notion of a feature's shape: the model's
    torch.testing.assert_close(via.all_features(), ref.all_features())
    tsv = tmp_path / "d.tsv"
    for s in samples(2):
        s.image.save(tmp_path / f"{s.key}.png")
    tsv.write_text("caption\timage\n" + "".join(f"{s.caption}\t{s.key}.png\n" for s in samples(2)))
    for _ in range(2):  # built, then found
        c = cached_split(OnlyTheInterface(m), str(tsv), tmp_path / "root", "val", log=lambda *a: None)
        assert len(c) == 2 and c.shape == m.feature_shape
