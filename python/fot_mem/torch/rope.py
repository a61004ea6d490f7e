"""Rotary position embedding, in Hugging Face Llama's convention (rotate_half, frequencies
computed in float32), so pretrained Llama weights give the same numbers here as there.

The frequencies stay float32 whatever dtype the model is cast to: rounded to bfloat16 they
would put the phases of late positions off by radians."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos / sin tables for positions; `theta` is the base (Llama 2: 1e4, SmolLM2: 1e5)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        # Not a buffer: `model.to(torch.bfloat16)` must not round it.
        self._inv_freq = 1.0 / (theta**exponents)
        self._on: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """The float32 frequencies on `device` (copied there once)."""
        if device not in self._on:
            self._on[device] = self._inv_freq.to(device)
        return self._on[device]

    @torch.no_grad()
    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`positions [T]` -> cos, sin `[T, head_dim]` in `dtype`."""
        freqs = positions.float()[:, None] * self.inv_freq(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates `x [..., T, head_dim]` by the tables of its T positions."""
    return x * cos + rotate_half(x) * sin
