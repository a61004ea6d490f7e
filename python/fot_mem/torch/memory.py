"""`Memory`: what a memory layer reads besides its local context, in one of two layouts.

- per query (inference): each query has its own top-k retrieved `[B, H, T, K, dim]` (H query
  heads); `scores [B, H, T, K]` may come precomputed from the search in place of `keys`.
- shared (crossbatch training): one set of `[B, Hkv, M, dim]` (kv heads) that every query of the
  batch slot sees, such as the previous chunks of several documents.
Memory keys carry no rotation (position 0); `mask` marks the slots to attend (True)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Callable, Optional, Union

import torch

from ..exceptions import InvalidValueError, ShapeError


@dataclasses.dataclass
class Memory:
    """Memory keys (or their scores) and values for one memory layer.

    Per query: `values [B, H, T, K, Dv]`, `keys [B, H, T, K, D]` or `scores [B, H, T, K]` (the
    logits q.k with q as the layer scales it), `mask [B, H, T, K]`.
    Shared: `values [B, Hkv, M, Dv]`, `keys [B, Hkv, M, D]`, `mask [B, M]` or `[B, T, M]`;
    `blind` (bool `[B]`, on the CPU): rows that read none of it, which attention runs apart
    instead of masking every key (a mask keeps SDPA off its flash kernel). `compact` (with
    `blind`): keys, values and mask hold the seeing rows alone, in order (`[B - blind, ...]`).
    """

    values: torch.Tensor
    keys: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    blind: torch.Tensor | None = None
    compact: bool = False

    @property
    def per_query(self) -> bool:
        return self.values.dim() == 5

    def check(
        self, batch: int, heads: int, kv_heads: int, tokens: int, dim: int, like: torch.Tensor
    ) -> None:
        """Raises `ShapeError` naming the part of the memory that does not fit the layer (whose
        values are `like`)."""
        v = self.values
        if v.shape[-1] != like.shape[-1]:
            raise ShapeError(f"memory values have dim {v.shape[-1]}, the layer's {like.shape[-1]}")
        parts = (v, self.keys, self.scores, self.mask)
        if any(x is not None and x.device != like.device for x in parts):
            raise InvalidValueError(f"memory tensors must be on the layer's device {like.device}")
        if self.per_query:
            if self.blind is not None:
                raise ShapeError("blind rows are for shared memory; mask per-query slots instead")
            if self.keys is None and self.scores is None:
                raise ShapeError("per-query memory needs keys or scores")
            lead = (batch, heads, tokens)
            if tuple(v.shape[:3]) != lead:
                raise ShapeError(f"memory values {tuple(v.shape)} must start with [B, H, T] {lead}")
            slots = (*lead, v.shape[3])
            if self.keys is not None and tuple(self.keys.shape) != (*slots, dim):
                raise ShapeError(f"memory keys {tuple(self.keys.shape)}, expected {(*slots, dim)}")
            if self.scores is not None and tuple(self.scores.shape) != slots:
                raise ShapeError(f"memory scores {tuple(self.scores.shape)}, expected {slots}")
            if self.mask is not None and tuple(self.mask.shape) != slots:
                raise ShapeError(f"memory mask {tuple(self.mask.shape)}, expected {slots}")
        else:
            if self.compact and self.blind is None:
                raise ShapeError("compact memory holds the seeing rows: it needs `blind`")
            rows = batch
            if self.compact and self.blind is not None and tuple(self.blind.shape) == (batch,):
                rows = batch - int(self.blind.to(torch.bool).sum())
            if v.dim() != 4 or v.shape[0] != rows or v.shape[1] != kv_heads:
                raise ShapeError(
                    f"shared memory values {tuple(v.shape)} must be [B={rows}, Hkv={kv_heads}, "
                    "M, Dv]" + (" (the seeing rows: compact)" if self.compact else "")
                )
            if self.keys is None or tuple(self.keys.shape) != (*v.shape[:3], dim):
                got = None if self.keys is None else tuple(self.keys.shape)
                raise ShapeError(f"shared memory keys {got}, expected {(*v.shape[:3], dim)}")
            m = v.shape[2]
            if self.blind is not None and (
                tuple(self.blind.shape) != (batch,) or self.blind.device.type != "cpu"
            ):
                raise ShapeError(
                    f"shared memory blind {tuple(self.blind.shape)} on {self.blind.device}, "
                    f"expected [B] {(batch,)} on the CPU"
                )
            if self.mask is not None and tuple(self.mask.shape) not in (
                (rows, m),
                (rows, tokens, m),
            ):
                raise ShapeError(
                    f"shared memory mask {tuple(self.mask.shape)}, expected [B, M] {(rows, m)} "
                    f"or [B, T, M] {(rows, tokens, m)}"
                )


# What a model's forward takes as `memory`: tensors per memory layer, or a callable that the
# layer asks with its (scaled, rotated) queries `[B, H, T, D]`, as retrieval at inference does.
MemoryProvider = Callable[[int, torch.Tensor], Optional[Memory]]
MemoryArg = Union[Mapping[int, Memory], MemoryProvider, None]


def memory_for(memory: MemoryArg, layer: int, queries: torch.Tensor) -> Memory | None:
    if memory is None:
        return None
    if isinstance(memory, Mapping):
        return memory.get(layer)
    return memory(layer, queries)
