"""About twenty real photographs that ship inside installed Python packages, with short captions.

Sources (nothing is downloaded, ever): scikit-image's bundled ``skimage.data`` images, matplotlib's
``grace_hopper.jpg`` sample, and scikit-learn's ``load_sample_images`` (china.jpg, flower.jpg). A
package that is not installed is skipped with a one-line message. Good for showing what a ShapesWorld
model does with an out-of-distribution image. Licences: scikit-image's photos are public domain / CC0
(see its ``data/README``), matplotlib's sample is public domain, scikit-learn's two are CC-BY 2.0
(attribution in scikit-learn's ``datasets/images/README.txt``).

    from fromage_mini.toyworld.photos import load_photos
    for name, image, caption in load_photos():
        ...
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
from PIL import Image

# (loader name in skimage.data, caption we wrote). Grey images are converted to RGB.
SKIMAGE_PHOTOS = (
    ("astronaut", "an astronaut in an orange suit in front of a flag and a space shuttle"),
    ("chelsea", "a close-up of the face of a tabby cat"),
    ("coffee", "a cup of coffee on a red saucer with a spoon"),
    ("rocket", "a rocket standing on its launch pad at dusk"),
    ("hubble_deep_field", "many small galaxies on a black sky"),
    ("stereo_motorcycle", "a red motorcycle parked in a workshop"),
    ("retina", "a photograph of the back of a human eye"),
    ("immunohistochemistry", "stained tissue seen under a microscope"),
    ("camera", "a black and white photo of a man with a camera on a tripod"),
    ("coins", "a grey photo of old coins on a dark background"),
    ("moon", "the grey cratered surface of the moon"),
    ("clock", "a blurred photo of a wall clock"),
    ("page", "a scanned page of printed text"),
    ("cell", "a single cell floating in liquid under a microscope"),
    ("brick", "a grey brick wall"),
    ("grass", "a grey close-up of grass"),
    ("gravel", "a close-up of grey gravel"),
)
SKLEARN_CAPTIONS = {"china.jpg": "a chinese temple with a pagoda roof beside a lake",
                    "flower.jpg": "an orange dahlia flower"}
MATPLOTLIB_PHOTOS = (("grace_hopper.jpg", "a portrait of an older woman in a navy uniform in front of a flag"),)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"fromage_mini.toyworld.photos: {msg}", file=sys.stderr)


def _rgb(array) -> Image.Image:
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _skimage(quiet: bool) -> list[tuple[str, Image.Image, str]]:
    try:
        from skimage import data
    except ImportError:
        _say("scikit-image is not installed; skipping its photos (pip install scikit-image)", quiet)
        return []
    out = []
    for name, caption in SKIMAGE_PHOTOS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = getattr(data, name)()
        except (ImportError, OSError, ValueError, AttributeError) as e:  # needs pooch/a download, or absent
            _say(f"skimage.data.{name} unavailable offline ({type(e).__name__}); skipped", quiet)
            continue
        if name == "stereo_motorcycle":
            img = img[0]       # (left image, right image, disparity)
        out.append((name, _rgb(img), caption))
    return out


def _matplotlib(quiet: bool) -> list[tuple[str, Image.Image, str]]:
    try:
        from matplotlib import cbook
    except ImportError:
        _say("matplotlib is not installed; skipping grace_hopper.jpg", quiet)
        return []
    out = []
    for fname, caption in MATPLOTLIB_PHOTOS:
        try:
            with cbook.get_sample_data(fname) as f:
                out.append((fname.rsplit(".", 1)[0], Image.open(f).convert("RGB"), caption))
        except (OSError, ValueError) as e:
            _say(f"matplotlib sample {fname} not found ({e}); skipped", quiet)
    return out


def _sklearn(quiet: bool) -> list[tuple[str, Image.Image, str]]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        _say("scikit-learn is not installed; skipping china.jpg and flower.jpg", quiet)
        return []
    bunch = load_sample_images()
    return [(fname.rsplit("/", 1)[-1].rsplit(".", 1)[0], _rgb(img), SKLEARN_CAPTIONS.get(fname.rsplit("/", 1)[-1], ""))
            for fname, img in zip(bunch.filenames, bunch.images)]


def load_photos(size: int | None = None, quiet: bool = False) -> list[tuple[str, Image.Image, str]]:
    """Return ``[(name, RGB PIL image, caption), ...]`` for every photo available offline.

    ``size``: if given, each image is resized so its shorter side is ``size`` and centre-cropped to a
    square (handy for a tiny vision tower). ``quiet`` silences the "package missing" messages.
    """
    photos = _skimage(quiet) + _matplotlib(quiet) + _sklearn(quiet)
    if size is not None:
        photos = [(n, _square(im, size), c) for n, im, c in photos]
    return photos


def _square(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))
