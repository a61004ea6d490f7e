"""Where a document's memory is read from at inference: the store on the CPU (`StoreRetriever`,
any store backend) or a copy of the document's keys and values on the model's device
(`DeviceMirror`, searched exactly with torch). Both write through to the store, which stays the
durable copy; a mirror is rebuilt from the store when opened."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..document import Document
from ..exceptions import DtypeError, InvalidValueError, ShapeError, UnknownLayerError
from . import fused_search
from .dtypes import DTYPES
from .memory import Memory


def _per_query(
    scores: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, dtype: torch.dtype
) -> Memory:
    """`[T, H, K]` search results and `[T, H, K, Dv]` values -> per-query Memory, batch 1."""
    mask = ids >= 0
    return Memory(
        values=values.permute(1, 0, 2, 3)[None].to(dtype),
        scores=scores.masked_fill(~mask, 0.0).permute(1, 0, 2)[None],
        mask=mask.permute(1, 0, 2)[None],
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _block_topk(scores: torch.Tensor, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k along the last axis, ~2x faster than `topk` over the whole row on a GPU.

    The row is cut into groups; the k groups with the largest maxima hold every top-k element (a
    key outside them is beaten by k group maxima), so `topk` runs over k groups' scores and the
    group maxima only. Padding of the last group scores -inf."""
    n = scores.shape[-1]
    group = min(group, n)
    if n % group:
        scores = F.pad(scores, (0, group - n % group), value=float("-inf"))
    grouped = scores.view(*scores.shape[:-1], -1, group)
    kk = min(k, grouped.shape[-2])
    top_groups = grouped.amax(-1).topk(kk, dim=-1).indices
    pick = top_groups[..., None].expand(*top_groups.shape, group)
    cand = grouped.gather(-2, pick).flatten(-2)
    top_s, pos = cand.topk(min(k, cand.shape[-1]), dim=-1)
    return top_s, top_groups.gather(-1, pos // group) * group + pos % group


class StoreRetriever:
    """Top-k retrieval from a store document on the CPU (`backend`: "exact", "hnsw", "faiss",
    "hnswlib"; `ef` for the graph backends)."""

    def __init__(
        self, document: Document, *, backend: str = "exact", ef: int | None = None
    ) -> None:
        self.document = document
        self.backend = backend
        self.ef = ef

    def length(self, layer: int) -> int:
        return self.document.length(layer)

    def retrieve(self, layer: int, queries: torch.Tensor, k: int) -> Memory | None:
        """`queries [T, H, D]` (as the layer scores them) -> Memory over the top-k, or None
        while the layer's memory is empty."""
        if self.length(layer) == 0:
            return None
        q = queries.detach().float().cpu()
        scores, ids = self.document.search(layer, q, k, backend=self.backend, ef=self.ef)
        _, values = self.document.gather(layer, ids)
        dev = queries.device
        return _per_query(
            torch.from_numpy(scores).to(dev),
            torch.from_numpy(ids).to(dev),
            torch.from_numpy(values).to(dev),
            queries.dtype,
        )

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """`keys [T, Hkv, D]`, `values [T, Hkv, Dv]`: durable in the store on return."""
        self.document.append(layer, keys, values)


def _tensor(view: Any) -> torch.Tensor:
    """A read-only store view as a tensor of its dtype, sharing its memory (only ever read:
    torch's warning about non-writable arrays does not apply)."""
    if view.dtype == np.uint16:  # bfloat16 bits
        view = view.view(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = torch.from_numpy(view)
    return out.view(torch.bfloat16) if out.dtype == torch.int16 else out


class DeviceMirror(StoreRetriever):
    """The document's keys and values of every memory layer, resident on `device`, searched by
    exact blocked matmul + top-k in float32. Appends go to the store and to the mirror.

    `dtype`: the mirror's element type (default: the store's dtype). GPU memory needed:
    tokens x layers x kv_heads x (head_dim + value_dim) x element size. `kernel`: "torch" (the
    default) or "fused" (`fused_search`: bf16 tensor-core scores without the score matrix, then
    float32 rescoring; bf16 mirrors on CUDA; not yet measured on a GPU).
    """

    BLOCK = 1 << 20  # most keys scored per matmul
    # Bound on one block's float32 scores: None = a quarter of the GPU's free memory, at most
    # 16 GiB (1 GiB off the GPU). Larger blocks mean fewer top-k merges.
    SCORE_BYTES: int | None = None
    GROUP = 128  # keys per group of the group-max preselection (see _block_topk)

    def __init__(
        self,
        document: Document,
        device: torch.device | str,
        *,
        dtype: torch.dtype | None = None,
        kernel: str = "torch",
    ) -> None:
        super().__init__(document, backend="exact")
        if kernel not in ("torch", "fused"):
            raise InvalidValueError(f"mirror kernel must be 'torch' or 'fused', got {kernel!r}")
        self.kernel = kernel
        store = document.store
        try:
            self.device = torch.device(device)
            torch.empty(0, device=self.device)
        except (RuntimeError, TypeError) as e:
            raise InvalidValueError(f"mirror device {device!r} is not usable: {e}") from None
        mirrorable = (DTYPES["float32"], DTYPES["float16"], DTYPES["bfloat16"])
        if dtype is not None and dtype not in mirrorable:
            raise DtypeError(f"mirror dtype must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype or DTYPES[store.dtype]
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}
        for layer in store.layers:
            n = document.length(layer) if document.exists else 0
            self._reserve(layer, n, store.kv_heads, store.head_dim, store.value_dim)
            if n:
                self._load(document, layer, n)

    def _load(self, document: Document, layer: int, n: int) -> None:
        """Tokens 0..n of `layer` from the chunk files: a zero-copy view per (kv head, chunk) of
        the store's head-major rows, copied once onto the device in the store's dtype. Reading
        token-major float32 instead (`Document.read`) widened and transposed 32 GB of bf16 keys
        on the CPU: 60-70 s of a 64M-token dictionary's answer on an H100 host."""
        core, name = document.store._core, document.name
        parts = ((core.key_views, self.keys[layer]), (core.value_views, self.values[layer]))
        for views, target in parts:
            for head in range(target.shape[0]):
                for first, view in views(name, layer, head):
                    rows = min(view.shape[0], n - first)
                    if rows <= 0:
                        continue
                    target[head, first : first + rows] = _tensor(view[:rows]).to(self.device)
        self.count[layer] = n

    def _reserve(self, layer: int, need: int, heads: int, dim: int, vdim: int) -> None:
        have = self.keys[layer].shape[1] if layer in self.keys else 0
        self.count.setdefault(layer, 0)
        if need <= have and layer in self.keys:
            return
        cap = max(need, 2 * have, 4096)
        keys = torch.empty(heads, cap, dim, dtype=self.dtype, device=self.device)
        values = torch.empty(heads, cap, vdim, dtype=self.dtype, device=self.device)
        n = self.count.get(layer, 0)
        if n:
            keys[:, :n] = self.keys[layer][:, :n]
            values[:, :n] = self.values[layer][:, :n]
        self.keys[layer], self.values[layer], self.count[layer] = keys, values, n

    def _put(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        n, t = self.count[layer], keys.shape[0]
        self._reserve(layer, n + t, keys.shape[1], keys.shape[2], values.shape[2])
        self.keys[layer][:, n : n + t] = keys.transpose(0, 1).to(self.device, self.dtype)
        self.values[layer][:, n : n + t] = values.transpose(0, 1).to(self.device, self.dtype)
        self.count[layer] = n + t

    def _layer(self, layer: int) -> int:
        if layer not in self.keys:
            raise UnknownLayerError(
                f"layer {layer} is not a memory layer of this store ({sorted(self.keys)})"
            )
        return layer

    def length(self, layer: int) -> int:
        return self.count[self._layer(layer)]

    def _score_budget(self) -> int:
        if self.SCORE_BYTES is not None:
            return self.SCORE_BYTES
        if self.device.type != "cuda":
            return 1 << 30
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1 << 26, min(16 << 30, free // 4))

    @property
    def nbytes(self) -> int:
        """Device bytes the mirror holds (its reserved capacity)."""
        return sum(
            t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values()
        )

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().append(layer, keys, values)
        self._put(layer, keys.detach(), values.detach())

    def search(
        self, layer: int, queries: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k: `queries [T, H, D]` -> scores float32 and ids int64, `[T, H, k]`, best
        first; -inf / -1 beyond the layer's length."""
        layer = self._layer(layer)
        if queries.dim() != 3:
            raise ShapeError(f"queries must be [T, heads, head_dim], got {tuple(queries.shape)}")
        t, h, d = queries.shape
        keys, n = self.keys[layer], self.count[layer]
        kv = keys.shape[0]
        if h % kv or d != keys.shape[2]:
            raise ShapeError(
                f"queries {tuple(queries.shape)}: heads must be a multiple of kv_heads {kv} and "
                f"head_dim {keys.shape[2]}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidValueError(f"k must be a positive integer, got {k!r}")
        g = h // kv
        q = queries.detach().float().to(self.device).view(t, kv, g, d).permute(1, 2, 0, 3)
        q = q.reshape(kv, g * t, d)
        if t and n and self._fused(keys, n, k):
            best_s, best_i = fused_search.fused_topk(q, keys, n, k, self._search_rows)
        else:
            best_s, best_i = self._search_rows(q, keys, n, k)
        # [kv, g*t, k] -> [t, h, k] with h = kv_head * g + j, as the store orders query heads
        best_s = best_s.view(kv, g, t, k).permute(2, 0, 1, 3).reshape(t, h, k)
        best_i = best_i.view(kv, g, t, k).permute(2, 0, 1, 3).reshape(t, h, k)
        return best_s, best_i

    def _fused(self, keys: torch.Tensor, n: int, k: int) -> bool:
        """Whether this search takes the fused kernel (`kernel`: "fused" where it can run;
        small memories, whose float32 scores are cheap, stay on the torch path)."""
        fused = self.kernel == "fused" and fused_search.supported(keys)
        return fused and n > k * fused_search.GROUP

    def _search_rows(
        self, q: torch.Tensor, keys: torch.Tensor, n: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch path: `q [kv, R, D]` float32 against the first `n` of `keys [kv, cap, D]`:
        float32 blocked matmul + top-k; scores and ids `[kv, R, k]`, -inf / -1 past n."""
        kv, r = q.shape[0], q.shape[1]
        best_s = torch.full((kv, r, k), float("-inf"), device=q.device)
        best_i = torch.full((kv, r, k), -1, dtype=torch.int64, device=q.device)
        if r and n:
            most = max(self.GROUP, self._score_budget() // (4 * kv * r))
            # equal blocks of whole groups: a ragged group would cost a padded copy of the scores
            cap = min(self.BLOCK, most)
            block = _ceil_div(n, _ceil_div(n, cap))
            if block > self.GROUP:
                block = _ceil_div(block, self.GROUP) * self.GROUP
            for start in range(0, n, block):
                block_keys = keys[:, start : min(n, start + block)]  # capacity beyond n is garbage
                scores = torch.bmm(q, block_keys.float().transpose(1, 2))
                top_s, top_i = _block_topk(scores, k, self.GROUP)
                del scores  # before the next block's matmul: one score buffer at a time
                best_s, pick = torch.cat((best_s, top_s), dim=-1).topk(k, dim=-1)
                best_i = torch.cat((best_i, top_i + start), dim=-1).gather(-1, pick)
        return best_s, best_i.masked_fill(best_s == float("-inf"), -1)  # padding, never a key

    def retrieve(self, layer: int, queries: torch.Tensor, k: int) -> Memory | None:
        if self.length(layer) == 0:
            return None
        scores, ids = self.search(layer, queries, k)
        h = scores.shape[1]
        kv = self.values[layer].shape[0]
        head = (torch.arange(h, device=self.device) // (h // kv))[None, :, None]
        values = self.values[layer][head, ids.clamp(min=0)]
        return _per_query(scores, ids, values, queries.dtype)


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
