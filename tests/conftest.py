"""Shared fixtures: tiny backbones written to a temp dir once per session.

Every model here is saved with ``save_pretrained`` and reloaded with ``from_pretrained`` — the
same path a user's ``facebook/opt-125m`` takes — so the tests exercise the real loading code.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "FROMAGE_MINI_CACHE" not in os.environ:  # the suite's caches stay out of the user's cache folder
    import atexit
    import shutil
    import tempfile

    os.environ["FROMAGE_MINI_CACHE"] = tempfile.mkdtemp(prefix="fromage-mini-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FROMAGE_MINI_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from fromage_mini.toyworld.tiny import make_tiny_lm, make_tiny_vision, make_tokenizer  # noqa: E402

# one torch thread in each pytest-xdist worker (`make test` starts one worker per core: more threads than
# cores make OpenMP's waiting threads spin against each other); up to two in a single process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    return make_tokenizer(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def tiny_lm_path(tiny_dir, tiny_tokenizer):
    """Paths of tiny LMs by family, built lazily."""
    cache = {}

    def get(family="opt", **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            name = family + "".join(f"-{k}{v}" for k, v in sorted(kw.items()))
            cache[key] = str(make_tiny_lm(tiny_dir / f"lm-{name}", family, tokenizer=tiny_tokenizer, **kw))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_vision_path(tiny_dir):
    cache = {}

    def get(family="clip", **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            name = family + "".join(f"-{k}{v}" for k, v in sorted(kw.items()))
            cache[key] = str(make_tiny_vision(tiny_dir / f"vis-{name}", family, **kw))
        return cache[key]

    return get


@pytest.fixture
def make_model(tiny_lm_path, tiny_vision_path):
    """Build a Fromage on tiny backbones: make_model(lm="opt", vision="clip", **config)."""
    from fromage_mini import Fromage, FromageConfig

    def build(lm="opt", vision="clip", seed=0, **cfg):
        torch.manual_seed(seed)
        cfg.setdefault("ret_dim", 16)
        return Fromage(FromageConfig(lm=tiny_lm_path(lm), vision=tiny_vision_path(vision), **cfg))

    return build
