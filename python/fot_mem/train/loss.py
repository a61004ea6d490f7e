"""Next-token loss with the LM head applied a chunk of rows at a time. SmolLM2's vocabulary is
49,152: the float32 logits of a batch of 8 x 1024 tokens are 1.6 GB, held for the backward pass
beside their bfloat16 original. Here each chunk's logits are made, reduced to its loss sum and
right-answer count, and dropped; the backward pass makes them again (activation checkpointing
of the head alone), so memory holds one chunk's logits at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore: int
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = F.linear(hidden, weight).float()
    loss = F.cross_entropy(logits, targets, ignore_index=ignore, reduction="sum")
    right = ((logits.detach().argmax(-1) == targets) & (targets != ignore)).sum()
    return loss, right


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the counted targets and their accuracy (a 0-d tensor), as
    `F.cross_entropy(hidden @ weight.T, targets)` gives, for `hidden [N, H]`, `weight [V, H]`,
    `targets [N]` (`ignore` not counted), `chunk` rows at a time."""
    counted = (targets != ignore).sum().clamp(min=1)
    total = hidden.new_zeros((), dtype=torch.float32)
    right = torch.zeros((), dtype=torch.int64, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        args = (hidden[rows], weight, targets[rows], ignore)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            loss, hits = checkpoint(_chunk, *args, use_reentrant=False)
        else:
            loss, hits = _chunk(*args)
        total = total + loss
        right = right + hits
    return total / counted, right / counted
