"""fromage_mini: a compact, teaching-scale reimplementation of FROMAGe (Koh et al., ICML 2023).

Layers, lowest first (``tests/test_layers.py`` keeps them so): errors/files/paths/config/presets;
data, toyworld; model (the paper); infer; retrieval; eval, tools; train; chat, demo, cli.

Inference is functions of the model, not methods (the model layer does not import the inference
layer above it): ``generate(model, prompt)`` and ``caption(model, images)``.
"""
from .chat import Dialogue
from .config import FromageConfig
from .errors import FromageError
from .infer.caption import caption
from .infer.generate import generate
from .model.fromage import Fromage, FromageOutput
from .presets import TrainConfig
from .retrieval.index import RetrievalIndex
from .version import __version__

__all__ = ["Dialogue", "Fromage", "FromageConfig", "FromageError", "FromageOutput", "RetrievalIndex",
           "TrainConfig", "__version__", "caption", "generate"]
