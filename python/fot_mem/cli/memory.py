"""What the model-driven commands add to a memory folder (`folder.MemoryFolder`): committed
lengths, and `Bounded`, a read-only view of a memory's first tokens. Needs torch."""

from __future__ import annotations

from typing import Any

import torch

from ..exceptions import InvalidValueError
from ..store import Document
from ..torch.retrieval import StoreRetriever, _per_query
from .folder import META, MemoryFolder

__all__ = ["META", "Bounded", "MemoryFolder", "committed"]


def committed(document: Document, layers: list[int]) -> dict[int, int]:
    return {layer: document.length(layer) if document.exists else 0 for layer in layers}


class Bounded(StoreRetriever):
    """Top-k among the first `limit` tokens of each layer: the store's search widened by the
    tokens past the limit, which are then dropped. With the exact backend the result is the
    store's own top-k of the first `limit` tokens: the same ids in the same order (ties too,
    the store's order is kept), the same scores, padded with -1 to k columns, as a search of a
    store holding only them. With hnsw it is approximate, as hnsw is. (Resuming an ingest cut
    inside a window; a prompt taken from the document's end.)"""

    def __init__(self, document: Document, limit: int, **search: Any) -> None:
        super().__init__(document, **search)
        self.limit = max(0, int(limit))

    def length(self, layer: int) -> int:
        return min(super().length(layer), self.limit)

    def retrieve(self, layer: int, queries: torch.Tensor, k: int) -> Any:
        n = super().length(layer)
        lim = min(n, self.limit)
        if lim == 0:
            return None
        q = queries.detach().float().cpu()
        wide = k + (n - lim)  # at most n - lim of the store's top `wide` lie past the limit
        scores, ids = self.document.search(layer, q, wide, backend=self.backend, ef=self.ef)
        s, i = torch.from_numpy(scores), torch.from_numpy(ids)
        keep = (i >= 0) & (i < lim)
        # the kept hits first, in the store's order (a stable sort), then k columns of them
        order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices[..., :k]
        keep = keep.gather(-1, order)
        s = s.gather(-1, order).masked_fill(~keep, float("-inf"))
        i = i.gather(-1, order).masked_fill(~keep, -1)
        _, values = self.document.gather(layer, i.numpy())  # id -1 gives zeros
        dev = queries.device
        return _per_query(s.to(dev), i.to(dev), torch.from_numpy(values).to(dev), queries.dtype)

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        raise InvalidValueError("a bounded view of a memory is read-only")
