"""`Document`: one long-document memory in a `MemoryStore`, per memory layer an append-only run
of tokens' keys and values."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from . import _core, backends, checks
from .arrays import as_float_array, as_ids
from .exceptions import ShapeError, TokenIndexError


class Owner(Protocol):
    """What a document and its users need of the store that handed it out (a `MemoryStore`,
    which imports this module: the arrow runs one way)."""

    _core: _core.Store

    @property
    def closed(self) -> bool: ...
    @property
    def layers(self) -> list[int]: ...
    @property
    def kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def value_dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def chunk_tokens(self) -> int: ...
    def delete(self, name: str) -> bool: ...
    def __contains__(self, name: object) -> bool: ...


class Document:
    """One long-document memory in a store: per memory layer, an append-only run of tokens."""

    def __init__(self, store: Owner, name: str) -> None:
        self.store = store
        self.name = name

    @property
    def exists(self) -> bool:
        """True once the document has had an append (and has not been deleted)."""
        return self.name in self.store

    def append(self, layer: int, keys: Any, values: Any) -> int:
        """Appends tokens to `layer`: `keys [tokens, kv_heads, head_dim]`, `values
        [tokens, kv_heads, value_dim]` (numpy or torch; float32, float16, bfloat16 or float64).
        The tokens are durable when this returns. Returns the layer's new length."""
        k = as_float_array(keys, "keys")
        v = as_float_array(values, "values")
        return self.store._core.append(self.name, checks.layer(layer), k, v)

    def length(self, layer: int) -> int:
        """Committed tokens in `layer` (0 before the first append)."""
        return self.store._core.length(self.name, checks.layer(layer))

    def search(
        self,
        layer: int,
        queries: Any,
        k: int = 32,
        *,
        backend: str = "exact",
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k keys by inner product for `queries [q, heads, head_dim]`. Returns `scores`
        float32 and `ids` int64, `[q, heads, k]`, best first, -1 / -inf padded. `backend` and
        `ef` as in `MemoryStore.search`."""
        ef = None if ef is None else checks.integer(ef, "ef")
        q = as_float_array(queries, "queries")
        if q.ndim != 3:
            raise ShapeError(f"queries must be [q, heads, head_dim], got shape {tuple(q.shape)}")
        return backends.search_document(self.store._core, self.name, layer, q, k, backend, ef)

    def gather(self, layer: int, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values (float32) of token `ids [q, heads, k]` as returned by `search`:
        `[q, heads, k, head_dim]` and `[q, heads, k, value_dim]`; id -1 gives zeros."""
        return self.store._core.gather(self.name, checks.layer(layer), as_ids(ids))

    def read(
        self, layer: int, start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values (float32) of tokens `start:stop` as `[tokens, kv_heads, dim]`."""
        layer = checks.layer(layer)
        start = checks.integer(start, "start", TokenIndexError)
        stop = self.length(layer) if stop is None else checks.integer(stop, "stop", TokenIndexError)
        if start < 0 or stop < 0:
            raise TokenIndexError(f"read range {start}:{stop} must not be negative")
        return self.store._core.read(self.name, layer, start, stop)

    def indexed_tokens(self, layer: int) -> int:
        """Tokens of `layer` that `backend="hnsw"` answers through graphs (full spans whose
        index is built); the rest is scanned exactly."""
        return self.store._core.indexed_tokens(self.name, checks.layer(layer))

    @property
    def nbytes(self) -> int:
        """Bytes of committed keys and values of this document, all layers."""
        return self.store._core.nbytes(self.name)

    def delete(self) -> bool:
        """Deletes this document from the store."""
        return self.store.delete(self.name)

    def __repr__(self) -> str:
        if self.store.closed:
            return f"Document({self.name!r}, store closed)"
        lengths = {layer: self.length(layer) for layer in self.store.layers}
        return f"Document({self.name!r}, lengths={lengths})"
