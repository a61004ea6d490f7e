"""What the model-driven commands add to a memory folder (`folder.MemoryFolder`): committed
lengths; `Bounded` (a read-only view of a memory's first tokens) is `torch.retrieval`'s."""

from __future__ import annotations

from ..document import Document
from ..torch.retrieval import Bounded
from .folder import META, MemoryFolder

__all__ = ["META", "Bounded", "MemoryFolder", "committed"]


def committed(document: Document, layers: list[int]) -> dict[int, int]:
    return {layer: document.length(layer) if document.exists else 0 for layer in layers}
