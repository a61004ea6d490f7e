"""A CLI memory folder: the store, the documents' token ids and what made them.

MEMORY/store/              the MemoryStore (keys and values of the memory layers)
MEMORY/tokens/NAME.u32     each document's token ids (little-endian uint32), written whole
                           before its first append, so an ingest can resume and `search`
                           can show the text around a hit
MEMORY/fot-mem.json        the model, tokenizer, window and k the store was made with
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from ..exceptions import InvalidValueError, StoreCorruptError
from ..store import Document, MemoryStore
from ..torch.retrieval import StoreRetriever, _per_query

META = "fot-mem.json"


class MemoryFolder:
    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MemoryFolder:
        folder = Path(path)
        meta_path = folder / META
        if not meta_path.is_file():
            what = "does not exist" if not folder.exists() else f"has no {META}"
            raise InvalidValueError(f"{folder} {what}: not a fot-mem memory (make one with ingest)")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta["documents"], dict) or "model" not in meta:
                raise KeyError("documents or model")
        except (ValueError, KeyError, TypeError) as e:
            raise StoreCorruptError(f"{meta_path} is malformed: {e!r}") from e
        return cls(folder, meta)

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any]) -> MemoryFolder:
        folder = Path(path)
        if folder.exists() and any(folder.iterdir()):
            raise InvalidValueError(f"{folder} exists and is not a fot-mem memory")
        (folder / "tokens").mkdir(parents=True, exist_ok=True)
        made = cls(folder, {**meta, "documents": {}})
        made.save()
        return made

    def save(self) -> None:
        """Atomic: a crash leaves the old or the new file, never half of one."""
        tmp = self.path / (META + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        _fsync(tmp)
        tmp.replace(self.path / META)

    def store(self, *, readonly: bool = False) -> MemoryStore:
        return MemoryStore.open(self.path / "store", readonly=readonly)

    # -- documents -------------------------------------------------------------------------
    def tokens_path(self, name: str) -> Path:
        return self.path / "tokens" / (quote(name, safe="") + ".u32")

    def write_tokens(self, name: str, ids: np.ndarray) -> None:
        path = self.tokens_path(name)
        tmp = path.with_suffix(".tmp")
        ids.astype("<u4").tofile(tmp)
        _fsync(tmp)
        tmp.replace(path)

    def tokens(self, name: str) -> np.ndarray:
        if name not in self.meta["documents"]:
            known = ", ".join(sorted(self.meta["documents"])) or "none"
            raise InvalidValueError(f"no document {name!r} in {self.path} (it holds: {known})")
        path = self.tokens_path(name)
        if not path.is_file():
            raise StoreCorruptError(f"{path} is missing: the document's token ids")
        return np.fromfile(path, dtype="<u4").astype(np.int64)

    def only_document(self, name: str | None) -> str:
        """`name`, or the memory's one document when none is given."""
        if name is not None:
            return name
        docs = sorted(self.meta["documents"])
        if len(docs) != 1:
            raise InvalidValueError(
                f"{self.path} holds {len(docs)} documents; name one with --doc ({', '.join(docs)})"
            )
        return docs[0]


def committed(document: Document, layers: list[int]) -> dict[int, int]:
    return {layer: document.length(layer) if document.exists else 0 for layer in layers}


class Bounded(StoreRetriever):
    """Top-k among the first `limit` tokens of each layer: the store's search with a margin of
    the tokens past the limit, which are then dropped. With the exact backend the result is the
    top-k of the first `limit` tokens, scores identical to a search of a store holding only
    them. (Resuming an ingest cut inside a window; a prompt taken from the document's end.)"""

    def __init__(self, document: Document, limit: int, **search: Any) -> None:
        super().__init__(document, **search)
        self.limit = limit

    def length(self, layer: int) -> int:
        return min(super().length(layer), self.limit)

    def retrieve(self, layer: int, queries: torch.Tensor, k: int) -> Any:
        n = super().length(layer)
        lim = min(n, self.limit)
        if lim == 0:
            return None
        q = queries.detach().float().cpu()
        wide = min(n, k + n - lim)
        scores, ids = self.document.search(layer, q, wide, backend=self.backend, ef=self.ef)
        s, i = torch.from_numpy(scores), torch.from_numpy(ids)
        s = s.masked_fill((i >= lim) | (i < 0), float("-inf"))
        s, pick = s.topk(min(k, wide), dim=-1)
        i = i.gather(-1, pick).masked_fill(s == float("-inf"), -1)
        _, values = self.document.gather(layer, i.clamp(min=0).numpy())
        dev = queries.device
        return _per_query(s.to(dev), i.to(dev), torch.from_numpy(values).to(dev), queries.dtype)

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        raise InvalidValueError("a bounded view of a memory is read-only")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
