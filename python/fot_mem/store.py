"""The Pythonic face of the store: `MemoryStore` (a directory of documents) and `Document` (one
long-document memory). Arrays go in as numpy or torch and come out as numpy; every call goes to
the Rust core with the GIL released."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import _core, backends, checks
from .arrays import as_float_array
from .document import Document
from .exceptions import (
    DtypeError,
    FotMemError,
)


class MemoryStore:
    """A persistent store of FoT memories: per document and memory layer, the keys
    `[kv_heads, head_dim]` and values `[kv_heads, value_dim]` of every token appended.

    Open one writer (`open(path)`) and any number of readers (`open(path, readonly=True)`, also
    from other processes); readers see what the writer has committed. Use as a context manager, or
    call `close()`.
    """

    def __init__(self, core: _core.Store) -> None:
        self._core = core

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        layers: Sequence[int],
        kv_heads: int,
        head_dim: int,
        value_dim: int | None = None,
        dtype: str = "float32",
        chunk_tokens: int = _core.DEFAULT_CHUNK_TOKENS,
        hnsw: bool | dict[str, Any] | None = None,
    ) -> MemoryStore:
        """Creates a store in `path` (absent or an empty directory) and opens it read-write.

        `layers`: indices of the model's memory layers. `dtype`: storage type of keys and values,
        "float32", "float16" or "bfloat16". `value_dim` defaults to `head_dim`. `chunk_tokens`:
        tokens per chunk file.

        `hnsw`: keep HNSW indexes for `backend="hnsw"`: True for the defaults, or a dict of
        `m` (16), `ef_construction` (100), `ef_search` (128), `span_tokens` (65536 rounded up to
        whole chunks) and `linking` ("hybrid"; or "reduction", "angular", "ip"). Each span of
        `span_tokens` tokens gets its graphs (one per kv head) in the background once it is full.
        """
        if hnsw is True:
            hnsw = {}
        elif hnsw is False:
            hnsw = None
        elif hnsw is not None and not isinstance(hnsw, dict):
            raise DtypeError(f"hnsw must be True, None or a dict of options, got {hnsw!r}")
        if isinstance(dtype, np.dtype) or isinstance(dtype, type):
            dtype = np.dtype(dtype).name
        dtype = str(dtype).removeprefix("torch.")
        return cls(
            _core.Store.create(
                checks.path(path),
                [checks.integer(x, "layers") for x in layers],
                checks.integer(kv_heads, "kv_heads"),
                checks.integer(head_dim, "head_dim"),
                None if value_dim is None else checks.integer(value_dim, "value_dim"),
                dtype,
                checks.integer(chunk_tokens, "chunk_tokens"),
                hnsw,
            )
        )

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, readonly: bool = False, verify_reads: bool = False
    ) -> MemoryStore:
        """Opens an existing store. Read-write takes the writer lock (`StoreLockedError` if
        another handle holds it); read-only never blocks.

        `verify_reads=True` checks every sealed chunk (one whose `chunk_tokens` rows are all
        committed) against its checksum the first time this handle uses its layer, and raises
        `StoreCorruptError` on a mismatch or a missing checksum; each chunk is read once more.
        The open tail chunk of a layer has no checksum, and a chunk sealed by the layer's last
        commit may not have its checksum yet (written just after that commit; a writer killed
        in between leaves it to the next writer): such a chunk is skipped without error and
        checked on a later read once its checksum exists."""
        return cls(
            _core.Store.open(
                checks.path(path),
                checks.flag(readonly, "readonly"),
                checks.flag(verify_reads, "verify_reads"),
            )
        )

    # -- what the store is -------------------------------------------------------------------
    @property
    def path(self) -> str:
        return str(self._core.path)

    @property
    def readonly(self) -> bool:
        return self._core.readonly

    @property
    def closed(self) -> bool:
        return self._core.closed

    @property
    def config(self) -> dict[str, Any]:
        """layers, kv_heads, head_dim, value_dim, dtype, chunk_tokens."""
        return self._core.config

    @property
    def layers(self) -> list[int]:
        return list(self._core.config["layers"])

    @property
    def kv_heads(self) -> int:
        return int(self._core.config["kv_heads"])

    @property
    def head_dim(self) -> int:
        return int(self._core.config["head_dim"])

    @property
    def value_dim(self) -> int:
        return int(self._core.config["value_dim"])

    @property
    def dtype(self) -> str:
        return str(self._core.config["dtype"])

    @property
    def chunk_tokens(self) -> int:
        return int(self._core.config["chunk_tokens"])

    @property
    def hnsw(self) -> dict[str, Any] | None:
        """The hnsw index options, or None when the store keeps no indexes."""
        h = self._core.config["hnsw"]
        return None if h is None else dict(h)

    @property
    def nbytes(self) -> int:
        """Bytes of committed keys and values over all documents and layers."""
        return self._core.nbytes(None)

    # -- hnsw indexes ------------------------------------------------------------------------
    def build_indexes(self, *, wait: bool = True) -> int:
        """Queues a build for every full span lacking an index (spans queue by themselves as
        they fill; this catches up on stores written before or by a process that died), and
        by default waits for all builds. Returns the number of spans queued."""
        queued = self._core.build_indexes()
        if checks.flag(wait, "wait"):
            self._core.wait_for_indexes()
        return queued

    def wait_for_indexes(self) -> dict[str, Any]:
        """Blocks until the background builder is idle; returns its statistics (`pending`,
        `built` spans, `keys` indexed, `seconds` spent, `errors`). Raises if a build failed."""
        return self._core.wait_for_indexes()

    def index_stats(self) -> dict[str, Any]:
        """The background builder's statistics so far, without waiting."""
        return self._core.index_stats()

    # -- checking and describing -------------------------------------------------------------
    @staticmethod
    def verify(path: str | os.PathLike[str], *, deep: bool = True) -> dict[str, Any]:
        """Checks the store at `path` and reports every problem found, changing nothing: no
        lock, no repair, no cleanup (works on a read-only filesystem, and while a writer has the
        store open; then in-flight files may show up as warnings).

        Returns `{"ok": bool, "problems": [...], "checked": {...}}`. `ok` is True when no problem
        is an error. Each problem is `{"severity": "error" | "warning", "path": <relative to the
        store, "/"-separated, "." for the store itself>, "message": str}`. Errors: damage that
        loses or misreads data (a checksum that fails, a missing or truncated chunk, a commit
        point that is unreadable, an index file that does not match its span). Warnings:
        leftovers of a crash or of a writer at work (temp files, chunks past the committed count,
        document directories the manifest does not name, a missing or torn checksum of a chunk
        sealed by its layer's last commit) and unknown files. `checked` counts
        `documents`, `layers` (document-layers), `chunks`, `index_files`, `checksums` (sealed
        chunks with an intact checksum file), `tokens` (committed) and `bytes` (size of the files
        examined).

        Checked: the manifest (version, checksum, configuration, document directories), every
        layer directory and commit point (both slots' checksums), that each chunk the committed
        count needs exists with the exact size, that each sealed chunk has an intact checksum
        file, hnsw index files (header checksum, section bounds, span, size, heads and dim
        against the layer). `deep` (default) also hashes every sealed chunk against its checksum,
        reads every index section against its checksum and every committed key and value, which
        must be finite; `deep=False` reads only metadata, headers and commit points. Not covered:
        the open tail chunk of a layer has no checksum (a flipped bit there that leaves a finite
        number goes unseen), nor do chunks sealed before format 2 (a warning says how many).
        hnswlib's index files are checked against their seals (size; with `deep`, checksum and
        structure too).

        Raises `StoreNotFoundError` when `path` does not exist and `NotAStoreError` when it is a
        file or a directory that holds no store.
        """
        return _core.verify_store(checks.path(path), checks.flag(deep, "deep"))

    def describe(self) -> dict[str, Any]:
        """What the store holds, for `fot-mem info`: its configuration (`path`, `dtype`, `layers`,
        `kv_heads`, `head_dim`, `value_dim`, `chunk_tokens`, `hnsw`), `total_bytes`, and per
        document its `bytes` and per layer `tokens`, `indexed_tokens`, `bytes` (and, for hnsw
        stores, `index_files` built and `pending`: full spans still scanned). `index_files`
        sums those: `{"built": n, "pending": n}`.

        On a read-write handle this opens every document-layer, as any read through it would
        (creating empty layer directories, and queueing builds of spans that lack an index)."""
        config = self.config
        element = 4 if config["dtype"] == "float32" else 2
        token_bytes = self.kv_heads * (self.head_dim + self.value_dim) * element
        hnsw = self.hnsw
        span = int(hnsw["span_tokens"]) if hnsw else 0
        built = pending = 0
        documents: dict[str, Any] = {}
        for doc in self:
            layers: dict[int, dict[str, int]] = {}
            for layer in self.layers:
                tokens = doc.length(layer)
                indexed = doc.indexed_tokens(layer)
                entry = {"tokens": tokens, "indexed_tokens": indexed, "bytes": tokens * token_bytes}
                if span:
                    # Only full spans get an index file; indexed tokens are whole spans.
                    entry["index_files"] = indexed // span
                    entry["pending"] = tokens // span - indexed // span
                    built += entry["index_files"]
                    pending += entry["pending"]
                layers[layer] = entry
            documents[doc.name] = {"bytes": doc.nbytes, "layers": layers}
        return {
            "path": self.path,
            "dtype": self.dtype,
            "layers": self.layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "value_dim": self.value_dim,
            "chunk_tokens": self.chunk_tokens,
            "hnsw": hnsw,
            "documents": documents,
            "total_bytes": self.nbytes,
            "index_files": {"built": built, "pending": pending},
        }

    # -- documents ---------------------------------------------------------------------------
    def document(self, name: str) -> Document:
        """A handle on document `name`; the document is created by its first append."""
        return Document(self, checks.name(name))

    def documents(self) -> list[str]:
        """Names of the documents in the store, sorted."""
        return self._core.documents()

    def delete(self, name: str) -> bool:
        """Deletes a document and its files; returns False if there was none."""
        return self._core.delete_document(checks.name(name))

    def __contains__(self, name: object) -> bool:
        try:
            name = checks.name(name)
        except FotMemError:  # not a valid name: no such document
            return False
        return self._core.contains(name)

    def __iter__(self) -> Iterator[Document]:
        return (Document(self, n) for n in self.documents())

    def __len__(self) -> int:
        return len(self.documents())

    # -- search over a batch of documents ----------------------------------------------------
    def search(
        self,
        documents: Sequence[str | Document],
        layer: int,
        queries: Any,
        k: int = 32,
        *,
        backend: str = "exact",
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k search of B documents at once, one per batch slot.

        `queries`: `[B, q, heads, head_dim]`, where `heads` is a multiple of `kv_heads` (query
        head h searches kv head h // (heads // kv_heads)). Returns `scores` float32 and `ids`
        int64 (token positions), both `[B, q, heads, k]`, best first; -1 / -inf pad slots beyond
        a document's length.

        `backend`: "exact" (default), "hnsw" (graphs of full spans, exact scan of the rest; `ef`
        candidates per query and span, default the store's `ef_search`), "faiss" or "hnswlib".
        """
        ef = None if ef is None else checks.integer(ef, "ef")
        if isinstance(documents, (str, Document)):
            raise DtypeError("documents must be a sequence of names, one per batch slot")
        names = [d.name if isinstance(d, Document) else checks.name(d) for d in documents]
        q = as_float_array(queries, "queries")
        return backends.search_documents(self._core, names, layer, q, k, backend, ef)

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Makes everything written durable (appends already are once they return)."""
        self._core.flush()

    def refresh(self) -> None:
        """Read-only handles: see documents another process created or deleted since."""
        self._core.refresh()

    def close(self) -> None:
        """Releases the files and the writer lock; later calls raise `StoreClosedError`."""
        self._core.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self.closed else ("read-only" if self.readonly else "read-write")
        c = self._core.config
        return (
            f"MemoryStore({self.path!r}, {mode}, layers={c['layers']}, kv_heads={c['kv_heads']}, "
            f"head_dim={c['head_dim']}, value_dim={c['value_dim']}, dtype={c['dtype']!r}, "
            f"chunk_tokens={c['chunk_tokens']})"
        )
