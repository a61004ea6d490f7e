"""The `hnswlib` search backend: approximate top-k over HNSW graphs built with the hnswlib package
(an optional dependency: `pip install hnswlib`), mirroring the native HNSW backend.

A document-layer's tokens are cut into spans of `span_tokens` tokens (span s holds tokens
`[s * span_tokens, (s + 1) * span_tokens)`). Every sealed (full) span gets, per kv head, one
hnswlib index (inner product space, labels = token ids) over that span's keys; the unsealed tail
after the last full span is scanned exactly. Results are merged per query row with the native
conventions: best first, ties to the lower id, -1 / -inf padding.

Built indexes are cached in this process (`_CACHE`, keyed by the document-layer's directory, the
span and the kv head; the directory is unique per incarnation of a document, so a deleted and
re-created document never reuses a stale graph). A writable handle also saves each index beside
the chunk files as `hnswlib-<span:06d>-h<kv_head>.bin` (written under a temporary name, synced,
then renamed into place), and any handle, read-only ones included, loads such a file instead of
building the graph again. hnswlib trusts what it loads (a damaged link crashes the process), so
each file has a seal beside it, `hnswlib-<span:06d>-h<kv_head>.seal` (size, CRC-32, parameters;
written after the file), and is loaded only when the seal matches and the core has checked the
file's structure (`_core.hnswlib_check`). A file without a matching seal, or that does not describe
exactly the span's tokens, is rebuilt (and, by a writable handle, overwritten and sealed).

Parameters come from the store's `hnsw` configuration when it has one (m, ef_construction,
ef_search, span_tokens); otherwise from `_DEFAULTS`, with span_tokens rounded up to a multiple of
the store's chunk_tokens.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from ..exceptions import (
    BackendUnavailableError,
    FotMemError,
    InvalidValueError,
    StoreCorruptError,
)
from .widen import as_f32

_DEFAULTS: dict[str, int] = {"m": 16, "ef_construction": 200, "ef_search": 64, "span_tokens": 65536}
_PARAM_KEYS = ("m", "ef_construction", "ef_search", "span_tokens")

# Rows of the exact tail scan scored at once (bounds the [rows, tail] score matrix).
_BLOCK_ELEMENTS = 1 << 22


def _hnswlib() -> Any:
    try:
        hnswlib = importlib.import_module("hnswlib")  # no type stubs: used as Any
    except ImportError as e:
        raise BackendUnavailableError(
            'backend="hnswlib" needs the hnswlib package: pip install hnswlib'
        ) from e
    return hnswlib


@dataclass(frozen=True)
class Params:
    m: int
    ef_construction: int
    ef_search: int
    span_tokens: int


def _positive(value: Any, what: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InvalidValueError(f"hnsw {what} must be an integer >= {least}, got {value!r}")
    return int(value)


def params(core: _core.Store, *, span_tokens: int | None = None) -> Params:
    """The HNSW parameters of a store: its `hnsw` configuration if it has a complete one, else
    `_DEFAULTS` (span_tokens rounded up to a multiple of chunk_tokens). `span_tokens` overrides
    the span length (also rounded up to a multiple of chunk_tokens)."""
    config = core.config
    chunk = int(config["chunk_tokens"])

    def rounded(tokens: Any) -> int:
        tokens = _positive(tokens, "span_tokens")
        return -(-tokens // chunk) * chunk

    hnsw = config.get("hnsw")
    if isinstance(hnsw, dict) and all(key in hnsw for key in _PARAM_KEYS):
        p = Params(
            m=_positive(hnsw["m"], "m", 2),
            ef_construction=_positive(hnsw["ef_construction"], "ef_construction"),
            ef_search=_positive(hnsw["ef_search"], "ef_search"),
            span_tokens=_positive(hnsw["span_tokens"], "span_tokens"),
        )
    else:
        p = Params(
            m=_positive(_DEFAULTS["m"], "m", 2),
            ef_construction=_positive(_DEFAULTS["ef_construction"], "ef_construction"),
            ef_search=_positive(_DEFAULTS["ef_search"], "ef_search"),
            span_tokens=rounded(_DEFAULTS["span_tokens"]),
        )
    if span_tokens is not None:
        p = Params(p.m, p.ef_construction, p.ef_search, rounded(span_tokens))
    return p


@dataclass
class _Entry:
    """A cached span index and the parameters it was built with."""

    index: Any
    span_tokens: int
    m: int
    ef_construction: int
    lock: threading.Lock = field(default_factory=threading.Lock)  # set_ef + knn_query


# (layer_path, span, kv_head) -> index. Entries of deleted documents linger until clear_cache().
_CACHE: dict[tuple[str, int, int], _Entry] = {}
# Builds and loads one at a time (each already uses every core); also guards _CACHE.
_BUILD_LOCK = threading.RLock()


def clear_cache(layer_path: str | None = None) -> None:
    """Forgets cached indexes (all, or those of one document-layer directory); saved files stay."""
    with _BUILD_LOCK:
        for key in [key for key in _CACHE if layer_path is None or key[0] == layer_path]:
            del _CACHE[key]


def index_path(layer_path: str, span: int, kv_head: int) -> str:
    return os.path.join(layer_path, f"hnswlib-{span:06d}-h{kv_head}.bin")


def _gather(views: list[tuple[int, np.ndarray]], start: int, stop: int, dim: int) -> np.ndarray:
    """Keys of tokens `[start, stop)` as one contiguous float32 array."""
    out = np.empty((stop - start, dim), np.float32)
    for first, view in views:
        lo, hi = max(first, start), min(first + view.shape[0], stop)
        if lo < hi:
            out[lo - start : hi - start] = as_f32(view[lo - first : hi - first])
    return out


def _build(hnswlib: Any, keys: np.ndarray, start: int, p: Params) -> Any:
    """An hnswlib index over `keys` (float32 [n, dim]) labelled `start, start + 1, ...`."""
    n, dim = keys.shape
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=p.ef_construction, M=p.m, random_seed=100)
    index.add_items(keys, np.arange(start, start + n, dtype=np.uint64), num_threads=-1)
    return index


def seal_path(path: str) -> str:
    """The seal beside an index file: `hnswlib-<span>-h<head>.seal` (see `_core.hnswlib_seal`)."""
    return path[: -len(".bin")] + ".seal"


def _load(hnswlib: Any, path: str, dim: int, start: int, n: int, p: Params) -> Any | None:
    """The saved index at `path` if there is one and it holds exactly tokens `[start, start+n)`
    built with `p`; None when there is no file or it does not (no seal, other parameters).

    hnswlib trusts the file (a damaged link crashes the process), so it only gets a file whose
    seal matches and whose structure the core has checked; it reads the very inode that was
    checked (`/proc/self/fd/N`), so a file renamed into place meanwhile cannot slip through."""
    seal = seal_path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no file (or an unreadable one)
        return None
    try:
        if not os.path.exists(seal):  # an older fot_mem's file, or a writer that died
            return None
        pinned = f"/proc/self/fd/{fd}"
        if not os.path.exists(pinned):
            pinned = path
        try:
            if not _core.hnswlib_check(pinned, seal, start, n, dim, p.m, p.ef_construction):
                return None  # whole, but built for another span length or parameters
        except StoreCorruptError as e:
            warnings.warn(f"hnswlib index {path}: {e}; rebuilding it", RuntimeWarning, stacklevel=4)
            return None
        index = hnswlib.Index(space="ip", dim=dim)
        try:
            index.load_index(pinned, max_elements=n)
        except (RuntimeError, MemoryError, OSError):
            return None
    finally:
        os.close(fd)
    if index.element_count != n:
        return None
    return index


def _save(index: Any, path: str, start: int, p: Params) -> None:
    """Writes `index` to `path` atomically (a temporary file in the same directory, synced, then
    renamed over `path`), then its seal. The old seal goes first, so a seal never vouches for a
    file written after it. A failure only warns (the index is a cache)."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    seal = seal_path(path)
    try:
        index.save_index(tmp)  # hnswlib does not report failed writes: check the size
        with open(tmp, "rb+") as f:
            if os.fstat(f.fileno()).st_size != index.index_file_size():
                raise OSError(f"short write of {tmp}")
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.remove(seal)
        os.replace(tmp, path)
        dim = int(index.dim)
        _core.hnswlib_seal(path, seal, start, index.element_count, dim, p.m, p.ef_construction)
    except (OSError, RuntimeError, FotMemError) as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        warnings.warn(f"could not save hnswlib index {path}: {e}", RuntimeWarning, stacklevel=3)


def _span_index(
    hnswlib: Any,
    core: _core.Store,
    layer_path: str,
    views: list[tuple[int, np.ndarray]],
    span: int,
    kv_head: int,
    dim: int,
    p: Params,
) -> _Entry:
    key = (layer_path, span, kv_head)
    with _BUILD_LOCK:
        entry = _CACHE.get(key)
        if entry is not None and (entry.span_tokens, entry.m, entry.ef_construction) == (
            p.span_tokens,
            p.m,
            p.ef_construction,
        ):
            return entry
        start, n = span * p.span_tokens, p.span_tokens
        path = index_path(layer_path, span, kv_head)
        index = _load(hnswlib, path, dim, start, n, p)
        if index is None:
            index = _build(hnswlib, _gather(views, start, start + n, dim), start, p)
            if not core.readonly:
                _save(index, path, start, p)
        entry = _Entry(index, p.span_tokens, p.m, p.ef_construction)
        _CACHE[key] = entry
        return entry


def _sortable(scores: np.ndarray) -> np.ndarray:
    """int64 keys ordered like the float32 `scores` (-0.0 and 0.0 equal), shifted up 32 bits."""
    bits = (scores + np.float32(0.0)).view(np.int32).astype(np.int64)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)) << 32


def _exact(rows: np.ndarray, keys: np.ndarray, first: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-min(k, n) of `rows` against `keys [n, dim]` (ids from `first`), unordered but
    with ties at the cut resolved to the lower id."""
    n = keys.shape[0]
    kk = min(k, n)
    out_s = np.empty((rows.shape[0], kk), np.float32)
    out_i = np.empty((rows.shape[0], kk), np.int64)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for r in range(0, rows.shape[0], block):
        s = rows[r : r + block] @ keys.T
        if kk < n:
            # Unique keys: score, then the lower id first.
            order = _sortable(s) | (n - 1 - np.arange(n, dtype=np.int64))
            top = np.argpartition(order, n - kk, axis=1)[:, n - kk :]
            out_s[r : r + block] = np.take_along_axis(s, top, 1)
            out_i[r : r + block] = top + first
        else:
            out_s[r : r + block] = s
            out_i[r : r + block] = np.arange(first, first + n, dtype=np.int64)
    return out_s, out_i


def _check_ef(ef: Any) -> int | None:
    if ef is None:
        return None
    if isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef < 1:
        raise InvalidValueError(f"ef must be a positive integer or None, got {ef!r}")
    return int(ef)


def search(
    core: _core.Store,
    doc: str,
    layer: int,
    queries: np.ndarray,
    k: int,
    ef: int | None = None,
    *,
    span_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k of `queries [q, heads, head_dim]` (float32) in one document-layer.

    `ef`: hnswlib's search breadth (None: the store's ef_search); at least k is used.
    `span_tokens` overrides the span length (tests). Returns `[q, heads, k]` scores (float32) and
    ids (int64), best first, ties to the lower id, -1 / -inf padding."""
    hnswlib = _hnswlib()
    ef = _check_ef(ef)
    p = params(core, span_tokens=span_tokens)
    ef_used = max(p.ef_search if ef is None else ef, k)
    q, heads, dim = queries.shape
    kv_heads = int(core.config["kv_heads"])
    group = heads // kv_heads
    scores = np.full((q, heads, k), -np.inf, np.float32)
    ids = np.full((q, heads, k), -1, np.int64)
    layer_path = core.layer_path(doc, layer)
    if layer_path is None or q == 0:
        return scores, ids
    for g in range(kv_heads):
        views = core.key_views(doc, layer, g)
        total = sum(view.shape[0] for _, view in views)
        if total == 0:
            continue
        rows = np.ascontiguousarray(queries[:, g * group : (g + 1) * group].reshape(-1, dim))
        rows = rows.astype(np.float32, copy=False)
        found_s, found_i = [], []
        sealed = total // p.span_tokens
        for span in range(sealed):
            entry = _span_index(hnswlib, core, layer_path, views, span, g, dim, p)
            kk = min(k, p.span_tokens)
            try:
                with entry.lock:
                    entry.index.set_ef(ef_used)
                    labels, distances = entry.index.knn_query(rows, k=kk, num_threads=-1)
            except RuntimeError:
                # hnswlib found fewer than kk neighbours (a poorly connected graph): scan the
                # span exactly rather than fail the search.
                start = span * p.span_tokens
                keys = _gather(views, start, start + p.span_tokens, dim)
                s, i = _exact(rows, keys, start, k)
                found_s.append(s)
                found_i.append(i)
                continue
            # hnswlib's inner-product distance is 1 - <q, x>.
            found_s.append((np.float32(1.0) - distances).astype(np.float32, copy=False))
            found_i.append(labels.astype(np.int64))
        tail_start = sealed * p.span_tokens
        if tail_start < total:
            s, i = _exact(rows, _gather(views, tail_start, total, dim), tail_start, k)
            found_s.append(s)
            found_i.append(i)
        s = np.concatenate(found_s, axis=1)
        i = np.concatenate(found_i, axis=1)
        order = np.lexsort((i, -s), axis=1)[:, :k]  # best first, ties to the lower id
        n = order.shape[1]
        scores[:, g * group : (g + 1) * group, :n] = np.take_along_axis(s, order, 1).reshape(
            q, group, n
        )
        ids[:, g * group : (g + 1) * group, :n] = np.take_along_axis(i, order, 1).reshape(
            q, group, n
        )
    return scores, ids
