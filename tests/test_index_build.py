"""fromage-mini index build/search over a folder of images, and refusal of an index from another model."""
import pytest
import torch
from cli_runner import run_cli

from fromage_mini import FromageError
from fromage_mini.retrieval.build import build_index, load_for, model_fingerprint


def test_build_search_and_fingerprint(make_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, c in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (40, 40), c).save(folder / ("sub" if i % 2 else "") / f"{c}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    m = make_model("opt")
    idx = build_index(m, str(folder), tmp_path / "index", batch_size=3, progress=False)
    assert len(idx) == 4
    paths = sorted(idx.metadata(i)["path"] for i in range(4))
    assert all(p.endswith(".png") for p in paths)
    # searching with an image's own vector returns that image first
    with torch.no_grad():
        v = m.encode_images(m.image_features(m.preprocess([Image.new("RGB", (40, 40), "blue")])))
    scores, ids = idx.search(v.numpy(), k=2)
    assert idx.metadata(int(ids[0, 0]))["path"].endswith("blue.png")
    # the same model loads it; another model (different image head) is refused with one clear line
    assert len(load_for(m, tmp_path / "index")) == 4
    other = make_model("opt", seed=1)
    assert model_fingerprint(other) != model_fingerprint(m)
    with pytest.raises(FromageError, match="another model"):
        load_for(other, tmp_path / "index")


def test_index_cli_round_trip(make_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for c in ["red", "green"]:
        Image.new("RGB", (40, 40), c).save(folder / f"{c}.png")
    m = make_model("opt")
    m.save_pretrained(tmp_path / "ckpt")
    b = run_cli("index", "build", "--model", tmp_path / "ckpt", "--data", folder, "--out", tmp_path / "idx")
    assert b.returncode == 0, b.stderr[-1500:]
    s = run_cli("index", "search", "--model", tmp_path / "ckpt", "--index", tmp_path / "idx", "-k", "2",
                "a red circle.")
    assert s.returncode == 0, s.stderr[-1500:]
    assert len([ln for ln in s.stdout.splitlines() if ln.strip().endswith(".png")]) == 2
