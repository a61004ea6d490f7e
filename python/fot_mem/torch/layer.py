"""`FotAttention`: the attention module of a Llama layer (projections, QK-norm, RoPE). In a memory
layer it also reads memory (`Memory` tensors, a provider, or `Crossbatch` in training) and hands
back its keys before rotation, which is what memory keeps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import memory_attention
from .config import FotConfig
from .crossbatch import Crossbatch, crossbatch_attention
from .memory import MemoryArg, memory_for
from .rope import apply_rope


class FotAttention(nn.Module):
    """Llama self-attention (GQA, RoPE); in a memory layer it also reads `Memory`.

    A memory layer hands back its keys before rotation (position 0, as memory keeps them) and its
    values, `[B, Hkv, T, D]`, for the caller to store.
    """

    def __init__(self, config: FotConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.is_memory = layer in config.memory_layers
        self.heads, self.kv_heads, self.head_dim = (
            config.num_heads,
            config.memory_kv_heads if self.is_memory else config.num_kv_heads,
            config.head_dim,
        )
        self.qk_norm = config.qk_norm and self.is_memory
        self.rope = config.memory_rope or not self.is_memory
        hid, hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(hid, self.heads * hd, bias=False)
        self.k_proj = nn.Linear(hid, self.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(hid, self.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.heads * hd, hid, bias=False)
        if self.qk_norm:
            # Learnable temperature per head; starts at sqrt(d), a typical logit range, or
            # where the config says.
            start = config.qk_temperature or math.sqrt(hd)
            self.log_temperature = nn.Parameter(torch.full((self.heads,), math.log(start)))

    def _kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normalised under QK-norm, not rotated) and values `[B, Hkv, T, D]`."""
        b, t, _ = x.shape
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        return (F.normalize(k, dim=-1) if self.qk_norm else k), v

    def memory_kv(self, x: torch.Tensor, sunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """What `forward` hands back for memory, without the attention: `x [B, T, hidden]`
        (normed input) -> unrotated keys and values `[B, Hkv, T - sunk, D]`."""
        k, v = self._kv(x)
        return k[:, :, sunk:].to(v.dtype), v[:, :, sunk:]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        memory: MemoryArg = None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        sunk: int = 0,
    ) -> tuple[
        torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None
    ]:
        """`x [B, T, hidden]` -> (output, new local cache (rotated k, v), memory-layer (k, v)).
        `sunk`: leading sink positions, whose keys and values memory does not get."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = self._kv(x)
        if self.qk_norm:
            q = F.normalize(q, dim=-1) * self.log_temperature.exp().to(q.dtype)[None, :, None, None]
        else:
            q = q * (self.head_dim**-0.5)
        # Under autocast the tables (and QK-norm) are float32 while v is bf16: one dtype for all,
        # as the fused kernels need.
        unrotated = (k[:, :, sunk:].to(v.dtype), v[:, :, sunk:]) if self.is_memory else None
        if self.rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k = q.to(v.dtype), k.to(v.dtype)
        if cache is not None:
            k = torch.cat((cache[0], k), dim=2)
            v = torch.cat((cache[1], v), dim=2)
        if self.is_memory and isinstance(memory, Crossbatch):
            assert unrotated is not None
            out = crossbatch_attention(q, k, v, *unrotated, memory)
        else:
            mem = memory_for(memory, self.layer, q) if self.is_memory else None
            out = memory_attention(q, k, v, mem)
        out = out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.o_proj(out), (k, v), unrotated
