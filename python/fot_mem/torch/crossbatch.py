"""Crossbatch (FoT training, paper section 2): at a memory layer, the current window of batch slot
i attends in ONE softmax to its causal local keys, to all keys of its own previous window(s) (the
positive) and to those of the d-1 next slots (i+1 ... i+d-1 mod slots: the negatives), all at
position 0 and all differentiable. The batch carries both kinds of window as rows:
`[slots * prev previous windows (slot-major, oldest first), slots current windows]`."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..exceptions import InvalidValueError, ShapeError
from .attention import memory_attention
from .memory import Memory


@dataclasses.dataclass(frozen=True)
class Crossbatch:
    """Pass as `memory=` to `FotForCausalLM.forward` to train with crossbatch.

    `slots`: documents in the batch (b). `d`: contexts each current window sees, its own and d-1
    others (d = 1: the positive only). `prev`: previous windows per slot (w). `gather`: for
    several processes, a function that all-gathers a `[slots * prev, ...]` tensor over ranks
    (keeping gradients, e.g. `torch.distributed.nn.functional.all_gather` concatenated), so the
    negatives come from the global batch; `rank` places this process's slots in it. `blind`:
    bool `[slots]`, True where a current window reads no memory at all (LongLLaMA trains a share
    of rows so, as a model meets an empty memory at inference). `context_grad=False`: the
    previous windows run without gradients up to the last memory layer, and only the memory
    layers' key and value projections of them train (a stop-gradient on the contexts' residual
    stream, which the paper does not have; the contexts then cost a forward pass alone: on an
    H100 the fot-smollm2 recipe's step is 1.24x faster at d = 1, 1.09-1.12x at d = 32-64, where
    attention over the memory dominates).
    """

    slots: int
    d: int = 1
    prev: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    rank: int = 0
    blind: torch.Tensor | None = None
    context_grad: bool = True

    def __post_init__(self) -> None:
        for name in ("slots", "d", "prev"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(
                    f"Crossbatch.{name} must be a positive integer, got {value!r}"
                )
        if self.gather is None and self.d > self.slots:
            raise InvalidValueError(f"d {self.d} exceeds the {self.slots} slots of the batch")
        if self.blind is not None and tuple(self.blind.shape) != (self.slots,):
            raise ShapeError(
                f"Crossbatch.blind must be [slots] = [{self.slots}], got {tuple(self.blind.shape)}"
            )

    @property
    def rows(self) -> int:
        """Rows of the batch: previous windows, then current ones."""
        return self.slots * (self.prev + 1)

    def check_rows(self, rows: int) -> None:
        if rows != self.rows:
            raise ShapeError(
                f"the batch has {rows} rows; Crossbatch(slots={self.slots}, prev={self.prev}) "
                f"needs {self.rows} (previous windows, then current ones)"
            )

    def contexts(self, keys: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        """`[slots * prev, Hkv, W, D]` (this rank's previous windows) -> `[slots, Hkv,
        d * prev * W, D]`: for each current window, its own previous windows first, then those
        of the next d-1 slots of the (global) batch. `slots`: only these of this rank's slots
        (indices), in that order."""
        if self.gather is not None:
            keys = self.gather(keys)
        total = keys.shape[0] // self.prev  # slots of the global batch
        if self.d > total:
            raise InvalidValueError(f"d {self.d} exceeds the {total} slots of the global batch")
        _, heads, w, dim = keys.shape
        per_slot = keys.view(total, self.prev, heads, w, dim).transpose(1, 2)
        per_slot = per_slot.reshape(total, heads, self.prev * w, dim)
        first = self.rank * self.slots
        own = torch.arange(first, first + self.slots, device=keys.device)
        if slots is not None:
            own = own[slots.to(keys.device)]
        pick = (own[:, None] + torch.arange(self.d, device=keys.device)[None, :]) % total
        chosen = per_slot[pick]  # [slots, d, Hkv, prev * W, D]
        return chosen.transpose(1, 2).reshape(len(own), heads, self.d * self.prev * w, dim)

    def memory(self, keys0: torch.Tensor, values0: torch.Tensor) -> Memory:
        """The shared `Memory` of the current windows, from the previous windows' unrotated keys
        and values `[slots * prev, Hkv, W, D]`; a blind slot's window sees none of it, and with
        blind slots the memory holds the seeing slots' contexts alone (`Memory.compact`: no
        copy is made for a slot that reads none of it)."""
        blind = None if self.blind is None else self.blind.to(device="cpu", dtype=torch.bool)
        if blind is None or not bool(blind.any()):
            return Memory(keys=self.contexts(keys0), values=self.contexts(values0))
        seen = (~blind).nonzero().flatten()
        return Memory(
            keys=self.contexts(keys0, seen),
            values=self.contexts(values0, seen),
            blind=blind,
            compact=True,
        )


def crossbatch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keys0: torch.Tensor,
    values0: torch.Tensor,
    spec: Crossbatch,
) -> torch.Tensor:
    """Attention output `[rows, H, W, Dv]` of a memory layer in crossbatch training.

    `q`, `k`, `v`: the layer's scaled, rotated queries and keys and its values, all rows.
    `keys0`, `values0`: its keys before rotation (position 0) and values, `[rows, Hkv, W, D]`.
    Previous windows attend causally to themselves; current windows also see `spec.contexts`.
    """
    spec.check_rows(q.shape[0])
    n = spec.slots * spec.prev
    before = memory_attention(q[:n], k[:n], v[:n])
    now = memory_attention(q[n:], k[n:], v[n:], spec.memory(keys0[:n], values0[:n]))
    return torch.cat((before, now))
