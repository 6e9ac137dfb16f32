"""The offline photo loader (scikit-image / matplotlib / scikit-learn samples)."""
import pytest

from fromage_mini.toyworld.photos import load_photos


def test_photos_are_rgb_with_captions():
    photos = load_photos(quiet=True)
    if not photos:
        pytest.skip("none of scikit-image, matplotlib, scikit-learn is installed")
    names = [n for n, _, _ in photos]
    assert len(names) == len(set(names))
    for name, image, caption in photos:
        assert image.mode == "RGB" and min(image.size) > 32, name
        assert isinstance(caption, str) and len(caption.split()) >= 3, name


def test_skimage_photos_when_installed():
    pytest.importorskip("skimage")
    names = {n for n, _, _ in load_photos(quiet=True)}
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= names


def test_square_resize():
    photos = load_photos(size=48, quiet=True)
    if not photos:
        pytest.skip("no photo package installed")
    assert all(im.size == (48, 48) for _, im, _ in photos)


def test_missing_package_is_skipped_with_a_message(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("skimage"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    photos = load_photos()
    assert "scikit-image is not installed" in capsys.readouterr().err
    assert all(n != "astronaut" for n, _, _ in photos)
