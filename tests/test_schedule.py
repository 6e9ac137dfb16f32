"""The learning-rate schedule: warm-up, then constant or cosine to zero at max_steps."""
import math

import pytest

from fromage_mini.errors import FromageError
from fromage_mini.presets import TrainConfig
from fromage_mini.train.schedule import lr_at


def test_constant_after_warmup_by_default():
    c = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100)
    assert lr_at(c, 0) == pytest.approx(1e-4)
    assert lr_at(c, 9) == pytest.approx(1e-3)
    assert lr_at(c, 99) == pytest.approx(1e-3)


def test_cosine_reaches_half_midway_and_zero_at_the_end():
    c = TrainConfig(lr=2e-3, warmup_steps=10, max_steps=110, lr_decay="cosine")
    assert lr_at(c, 10) == pytest.approx(2e-3)
    assert lr_at(c, 60) == pytest.approx(1e-3)
    assert lr_at(c, 35) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)))
    assert lr_at(c, 110) == pytest.approx(0.0, abs=1e-12)
    assert all(lr_at(c, s) >= lr_at(c, s + 1) for s in range(10, 120))


def test_none_from_the_command_line_means_constant():
    c = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=10, lr_decay=None)  # what `--set lr_decay=none` gives
    assert lr_at(c, 9) == pytest.approx(1e-3)


def test_unknown_decay_is_a_clear_error():
    with pytest.raises(FromageError, match="lr_decay"):
        lr_at(TrainConfig(lr_decay="linear", warmup_steps=0), 5)
