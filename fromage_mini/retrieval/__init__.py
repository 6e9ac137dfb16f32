"""Image retrieval: the folder index (build, save, memory-mapped load, exact top-k) and the small
in-memory :class:`TensorIndex`; both are an :class:`ImageIndex` (``search(queries, k, exclude)``,
``metadata(i)``, ``len()``, defined once in ``infer/tensor_index.py``)."""
from ..infer.tensor_index import ImageIndex, TensorIndex
from .index import RetrievalIndex

__all__ = ["ImageIndex", "RetrievalIndex", "TensorIndex"]
