"""One step of crossbatch training data, shared by the batchers (`train`) and the evaluations that
build task batches (`eval.dictionary`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CrossbatchBatch:
    """One step: `prev [b, w, W]`, `curr [b, W + 1]` (inputs `curr[:, :-1]`, targets
    `curr[:, 1:]`), per slot the document index `doc [b]`, the position `position [b]` of
    `curr[:, 0]` in it, and `first [b]` (the slot's first step in this document); `step` counts
    from 0. `mask [b, W]` (bool), when given, marks the targets that loss and accuracy count
    (a task's answers); None counts every target."""

    prev: torch.Tensor
    curr: torch.Tensor
    doc: torch.Tensor
    position: torch.Tensor
    first: torch.Tensor
    step: int
    mask: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CrossbatchBatch:
        """The batch on `device` (`non_blocking` overlaps the copy when the batch is pinned)."""
        return CrossbatchBatch(
            prev=self.prev.to(device, non_blocking=non_blocking),
            curr=self.curr.to(device, non_blocking=non_blocking),
            doc=self.doc.to(device, non_blocking=non_blocking),
            position=self.position.to(device, non_blocking=non_blocking),
            first=self.first.to(device, non_blocking=non_blocking),
            step=self.step,
            mask=None if self.mask is None else self.mask.to(device, non_blocking=non_blocking),
        )
