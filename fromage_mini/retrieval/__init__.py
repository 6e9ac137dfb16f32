"""Image retrieval: the folder index (build, save, memory-mapped load, exact top-k) and the small
in-memory :class:`TensorIndex`; both answer ``search(queries, k, exclude)``, ``metadata(i)``, ``len()``."""
from ..infer.tensor_index import TensorIndex
from .index import RetrievalIndex

__all__ = ["RetrievalIndex", "TensorIndex"]
