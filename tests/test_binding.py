"""The binding measuring tools: per-cell labels, the probe, and perfect-token prefixes on the toy LM."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fromage_mini.eval.binding import SLOTS, PerfectTokens, cell_labels, linear_probe
from fromage_mini.paths import DATA_SAMPLES
from fromage_mini.toyworld import canonical_caption

SCENE = {"objects": [{"shape": "circle", "colour": "red", "size": "small", "cell": 2},
                     {"shape": "star", "colour": "blue", "size": "large", "cell": 6}]}


def test_cell_labels_mark_empty_cells_and_index_values():
    lab = cell_labels([SCENE])
    assert lab["colour"].shape == (1, 9)
    assert lab["colour"][0].tolist() == [-1, -1, 0, -1, -1, -1, 4, -1, -1]  # red = 0, blue = 4
    assert lab["size"][0, 6] == 1 and (lab["shape"][0] >= 0).sum() == 2


def test_probe_reads_a_linear_code_and_ignores_empty_samples():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g)
    x = torch.randn(600, 8, generator=g) + 3 * torch.nn.functional.one_hot(y, 8).float()
    y_noisy = y.clone()
    y_noisy[::4] = -1  # "empty": must not be trained on or scored
    assert linear_probe(x[:400], y_noisy[:400], x[400:], y_noisy[400:]) > 0.95
    assert linear_probe(torch.randn(400, 8, generator=g), y[:400], torch.randn(200, 8, generator=g), y[400:]) < 0.6


@pytest.fixture(scope="module")
def pt():
    lm = AutoModelForCausalLM.from_pretrained(DATA_SAMPLES / "toy_lm").eval()
    return PerfectTokens(lm, AutoTokenizer.from_pretrained(DATA_SAMPLES / "toy_lm"))


def test_fixed_layout_has_three_slots_per_cell_and_masks_only_empty_ones(pt):
    zeros = torch.zeros(SLOTS, pt.E.shape[1])
    emb, mask = pt.fixed(SCENE, lambda c: zeros, mask_empty=True)
    assert emb.shape == (1 + 9 * SLOTS + 1, pt.E.shape[1])
    assert mask.sum() == 1 + 2 * SLOTS + 1  # BOS, two objects, ":"
    assert torch.equal(emb[1 + 2 * SLOTS], pt.E[pt.ids(" smallredcircle")[0]])  # cell 2's object word


def test_batched_cached_captions_match_one_at_a_time(pt):
    """Prefixes of equal length run as one batch with a KV cache; the result must not depend on it."""
    scenes = [r["scene"] for r in json.loads((DATA_SAMPLES / "shapesworld/scenes_val.json").read_text())[:6]]
    zeros = torch.zeros(SLOTS, pt.E.shape[1])
    prefixes = [pt.fixed(s, lambda c: zeros, mask_empty=True) for s in scenes]
    batched = pt.captions(prefixes)
    assert batched == [pt.captions([p])[0] for p in prefixes]
    # the contiguous summary is the toy LM's pretraining layout: it captions exactly
    assert pt.captions([pt.contiguous(s) for s in scenes]) == [canonical_caption(s) for s in scenes]
