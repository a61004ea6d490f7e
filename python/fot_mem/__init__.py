"""fot_mem: persistent long-context memory for Focused Transformer (FoT) models.

`MemoryStore` keeps, per document and memory layer, the keys and values of every token a model has
read, in memory-mapped chunk files that survive across runs, and finds the top-k keys of a query by
inner product. Every error derives from `FotMemError` (see `fot_mem.exceptions`).
"""

from __future__ import annotations

from . import exceptions
from ._core import DEFAULT_CHUNK_TOKENS, FORMAT_VERSION, MAX_K, __version__, exact_kernel_info
from .exceptions import *  # noqa: F403 (the exception classes, listed in exceptions.__all__)
from .store import Document, MemoryStore

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "FORMAT_VERSION",
    "MAX_K",
    "Document",
    "MemoryStore",
    "__version__",
    "exact_kernel_info",
    "exceptions",
    *exceptions.__all__,
]
