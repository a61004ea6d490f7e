"""FoT memory attention, the function: a query attends to its causal local context and to memory
in ONE softmax, with no gate and no new parameters. Queries arrive already scaled (1/sqrt(d), or
the QK-norm temperature), so a memory score from the store is exactly the logit the softmax
sees."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from ..exceptions import InvalidValueError, ShapeError
from .memory import Memory


def causal_mask(tokens: int, past: int, device: torch.device) -> torch.Tensor:
    """`[T, past + T]` bool: query i (at position past + i) sees keys 0..past + i."""
    q = torch.arange(tokens, device=device)[:, None] + past
    return torch.arange(past + tokens, device=device)[None, :] <= q


def memory_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: Memory | None = None,
) -> torch.Tensor:
    """Attention output `[B, H, T, Dv]`.

    `q [B, H, T, D]`: scaled, rotated queries of the T newest tokens. `k [B, Hkv, S, D]` (rotated)
    and `v [B, Hkv, S, Dv]`: the local context, of which the last T are those tokens (S > T when
    a cache holds earlier ones). `memory`: see `Memory`; None gives plain causal attention.
    """
    _check_local(q, k, v)
    b, h, t, _ = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    past = s - t
    if memory is None:
        if past == 0 or t == 1:
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=t > 1, scale=1.0, enable_gqa=kv_heads != h
            )
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=causal_lower_right(t, s), scale=1.0, enable_gqa=kv_heads != h
        )
    memory.check(b, h, kv_heads, t, q.shape[-1], v)
    if not memory.per_query:
        return _shared(q, k, v, memory, past)
    return _per_query(q, k, v, memory, past)


def _check_local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ShapeError(
            f"q, k, v must be [B, heads, tokens, dim], got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    (b, h, t, d), (bk, hk, s, dk) = q.shape, k.shape
    if bk != b or dk != d or tuple(v.shape[:3]) != (b, hk, s) or h % hk or s < t:
        raise ShapeError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: k and v need the "
            "batch of q, kv heads dividing its heads, q's head_dim (k) and at least its tokens"
        )
    if not q.device == k.device == v.device:
        raise InvalidValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}")


def _shared(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem: Memory, past: int
) -> torch.Tensor:
    """Shared memory goes in front of the local keys; one masked SDPA call (fused kernels).
    Blind rows run apart, as plain causal attention."""
    assert mem.keys is not None
    if mem.blind is not None and (mem.compact or bool(mem.blind.any())):
        return _apart(q, k, v, mem, past)
    b, t, m = q.shape[0], q.shape[2], mem.values.shape[2]
    keys = torch.cat((mem.keys.to(k.dtype), k), dim=2)
    values = torch.cat((mem.values.to(v.dtype), v), dim=2)
    gqa = k.shape[1] != q.shape[1]
    if mem.mask is None:
        # Every memory key visible, local keys causal: that is causal attention aligned to the
        # last key, which the fused (flash / memory-efficient) kernels run without a mask tensor.
        return F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=causal_lower_right(t, m + past + t),
            scale=1.0,
            enable_gqa=gqa,
        )
    local = causal_mask(t, past, q.device).expand(b, t, past + t)
    seen = mem.mask.to(torch.bool)
    seen = seen[:, None, :].expand(b, t, m) if seen.dim() == 2 else seen
    mask = torch.cat((seen, local), dim=2)[:, None]
    return F.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, scale=1.0, enable_gqa=gqa
    )


def _apart(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem: Memory, past: int
) -> torch.Tensor:
    """`_shared` for memory with blind rows: the rows that see it attend without a mask (the
    flash kernel where there is one), the blind ones to their local keys alone, and the outputs
    return to the batch's order."""
    assert mem.keys is not None and mem.blind is not None
    blind = mem.blind.to(torch.bool)
    seen = (~blind).nonzero().flatten()
    dark = blind.nonzero().flatten()
    parts = []
    if len(seen):
        rows = seen.to(q.device)
        if mem.compact:  # the memory holds the seeing rows already
            part = Memory(keys=mem.keys, values=mem.values, mask=mem.mask)
        else:
            mask = None if mem.mask is None else mem.mask[rows]
            part = Memory(keys=mem.keys[rows], values=mem.values[rows], mask=mask)
        parts.append(_shared(q[rows], k[rows], v[rows], part, past))
    rows = dark.to(q.device)
    parts.append(memory_attention(q[rows], k[rows], v[rows]))
    order = torch.argsort(torch.cat((seen, dark))).to(q.device)
    return torch.cat(parts)[order]


def _per_query(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mem: Memory, past: int
) -> torch.Tensor:
    """Each query has its own K memory slots: local and memory logits are joined before one
    float32 softmax."""
    b, h, t, d = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    g = h // kv_heads
    qg = q.view(b, kv_heads, g, t, d)
    local = torch.matmul(qg, k[:, :, None].transpose(-1, -2)).view(b, h, t, s).float()
    local = local.masked_fill(~causal_mask(t, past, q.device), float("-inf"))
    if mem.scores is not None:
        remote = mem.scores.float()
    else:
        assert mem.keys is not None
        remote = torch.einsum("bhtd,bhtkd->bhtk", q, mem.keys.to(q.dtype)).float()
    if mem.mask is not None:
        remote = remote.masked_fill(~mem.mask.to(torch.bool), float("-inf"))
    p = torch.softmax(torch.cat((remote, local), dim=-1), dim=-1)
    kslots = remote.shape[-1]
    p_mem, p_local = p[..., :kslots].to(v.dtype), p[..., kslots:].to(v.dtype)
    out = torch.matmul(p_local.view(b, kv_heads, g, t, s), v[:, :, None]).view(b, h, t, -1)
    return out + torch.einsum("bhtk,bhtkd->bhtd", p_mem, mem.values.to(v.dtype))
