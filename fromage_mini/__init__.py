"""fromage_mini: a compact, teaching-scale reimplementation of FROMAGe (Koh et al., ICML 2023)."""
from .config import FromageConfig
from .io import FromageError
from .model import Fromage, FromageOutput

__version__ = "0.1.0"
__all__ = ["Fromage", "FromageConfig", "FromageOutput", "FromageError", "__version__"]
