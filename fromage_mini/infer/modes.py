"""Eval mode without gradients, entered and left in one place: the :func:`eval_mode` context and the
:func:`inference` decorator every inference and evaluation function wears."""
from __future__ import annotations

import contextlib
import functools

import torch


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode (dropout off) inside the block, its previous mode restored after it,
    also when the block raises (so it can be used from inside a training loop). A model already in eval
    mode is left as it is: switching walks every module, which costs milliseconds per call of a
    decoding or scoring loop."""
    was_training = model.training
    if not was_training:
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def inference(fn):
    """Run ``fn(model, ...)`` without gradients and in :func:`eval_mode`."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with eval_mode(model), torch.no_grad():
            return fn(model, *args, **kwargs)

    return wrapper
