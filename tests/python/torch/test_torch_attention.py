"""FoT memory attention against a plain float64 reference.

The reference (`ref_attend`) is written for reading, not speed: for every batch slot, query head
and query it joins the logits of the memory slots it may see and of its causal local keys into
one softmax. Memory keys carry no rotation (position 0); local keys and queries are rotated at
their local positions; query head h reads kv head h // (H / Hkv).

The central property (the FoT paper's): with memory = the previous window of the same document
and k >= its length, memory attention is dense attention over [previous window at position 0,
local window], checked here at the layer level in both memory layouts and at the model level
through a `MemoryStore` and `LongDocumentReader`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

torch = pytest.importorskip("torch")

import fot_mem  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fot_mem.torch import FotAttention, FotConfig, FotForCausalLM, Memory  # noqa: E402
from fot_mem.torch.attention import memory_attention  # noqa: E402
from fot_mem.torch.reader import LongDocumentReader  # noqa: E402
from fot_mem.torch.rope import RotaryEmbedding  # noqa: E402
from torch_models import random_model  # noqa: E402

F64 = torch.float64
KV = tuple[torch.Tensor, torch.Tensor]

# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def ref_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotates `x [..., T, D]` (float64) at `positions [T]`, HF's rotate_half convention."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=F64) / d)
    angles = positions.to(F64)[:, None] * inv[None, :]
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1)
    rotated_half = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
    return x * cos + rotated_half * sin


def ref_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mem_k: torch.Tensor | None = None,
    mem_v: torch.Tensor | None = None,
    mem_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """float64 `[B, H, T, Dv]`. `q [B, H, T, D]` scaled and rotated; `k [B, Hkv, S, D]` rotated,
    `v [B, Hkv, S, Dv]`, of which the last T belong to the queries; per-query memory
    `mem_k [B, H, T, K, D]`, `mem_v [B, H, T, K, Dv]`, `mem_mask [B, H, T, K]` (True: seen)."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    b, h, t, _ = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    past = s - t
    out = torch.zeros(b, h, t, v.shape[-1], dtype=F64)
    for bi in range(b):
        for hi in range(h):
            kvh = hi // (h // kv_heads)
            for ti in range(t):
                query = q[bi, hi, ti]
                keys = k[bi, kvh, : past + ti + 1]
                values = v[bi, kvh, : past + ti + 1]
                if mem_k is not None:
                    assert mem_v is not None
                    seen = (
                        torch.ones(mem_k.shape[3], dtype=torch.bool)
                        if mem_mask is None
                        else mem_mask[bi, hi, ti].bool()
                    )
                    keys = torch.cat((mem_k[bi, hi, ti][seen].to(F64), keys))
                    values = torch.cat((mem_v[bi, hi, ti][seen].to(F64), values))
                p = torch.softmax(keys @ query, dim=0)
                out[bi, hi, ti] = p @ values
    return out


def per_query(shared: torch.Tensor, heads: int, tokens: int) -> torch.Tensor:
    """Shared memory `[B, Hkv, M, dim]` -> the per-query layout `[B, H, T, M, dim]`: every query
    of query head h gets all of kv head h // (H / Hkv)."""
    group = heads // shared.shape[1]
    return shared.repeat_interleave(group, dim=1)[:, :, None].expand(-1, -1, tokens, -1, -1)


def ref_layer(
    attn: FotAttention,
    x: torch.Tensor,
    theta: float,
    memory: KV | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, KV]:
    """`attn` computed in float64 on `x [B, T, hidden]` at positions 0..T-1, with `memory` the
    unrotated (keys, values) `[B, Hkv, M, dim]` every query sees (`mask [B, T, M]`). Returns the
    output and the unrotated (keys, values) of x."""
    b, t, _ = x.shape
    hd, heads, kv_heads = attn.head_dim, attn.heads, attn.kv_heads
    x = x.to(F64)
    q = (x @ attn.q_proj.weight.to(F64).T).view(b, t, heads, hd).transpose(1, 2)
    k = (x @ attn.k_proj.weight.to(F64).T).view(b, t, kv_heads, hd).transpose(1, 2)
    v = (x @ attn.v_proj.weight.to(F64).T).view(b, t, kv_heads, hd).transpose(1, 2)
    if attn.qk_norm:
        temperature = attn.log_temperature.detach().to(F64).exp()
        q = q / q.norm(dim=-1, keepdim=True) * temperature[None, :, None, None]
        k = k / k.norm(dim=-1, keepdim=True)
    else:
        q = q / math.sqrt(hd)
    unrotated = (k, v)
    pos = torch.arange(t)
    q, k = ref_rope(q, pos, theta), ref_rope(k, pos, theta)
    mk = mv = mm = None
    if memory is not None:
        mk = per_query(
            ref_rope(memory[0].to(F64), torch.zeros(memory[0].shape[2]), theta), heads, t
        )
        mv = per_query(memory[1].to(F64), heads, t)
        if mask is not None:
            mm = mask[:, None].expand(-1, heads, -1, -1)
    out = ref_attend(q, k, v, mk, mv, mm)
    out = out.transpose(1, 2).reshape(b, t, heads * hd)
    return out @ attn.o_proj.weight.to(F64).T, unrotated


def ref_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(F64)


def ref_model(
    model: FotForCausalLM, ids: torch.Tensor, memory: Mapping[int, KV]
) -> tuple[torch.Tensor, dict[int, KV]]:
    """The model's forward in float64 from its weights and `ref_layer`: logits and the memory
    layers' unrotated (keys, values) of these tokens."""
    c = model.config
    x = model.model.embed_tokens.weight.to(F64)[ids]
    kv: dict[int, KV] = {}
    for i, layer in enumerate(model.model.layers):
        h = ref_rms(x, layer.input_layernorm.weight, c.rms_norm_eps)
        out, kv_i = ref_layer(layer.self_attn, h, c.rope_theta, memory.get(i))
        if i in c.memory_layers:
            kv[i] = kv_i
        x = x + out
        h = ref_rms(x, layer.post_attention_layernorm.weight, c.rms_norm_eps)
        mlp = layer.mlp
        gate = h @ mlp.gate_proj.weight.to(F64).T
        up = h @ mlp.up_proj.weight.to(F64).T
        x = x + (F.silu(gate) * up) @ mlp.down_proj.weight.to(F64).T
    x = ref_rms(x, model.model.norm.weight, c.rms_norm_eps)
    return x @ model.lm_head.weight.to(F64).T, kv


def test_reference_rope_matches_the_package() -> None:
    """The reference's RoPE is the package's (rotate_half, theta) and leaves position 0 alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=g, dtype=F64)
    cos, sin = RotaryEmbedding(16, 500.0)(torch.arange(7), F64)
    from fot_mem.torch.rope import apply_rope

    # the package computes the angles in float32, as Hugging Face does
    torch.testing.assert_close(
        apply_rope(x, cos, sin), ref_rope(x, torch.arange(7), 500.0), atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(ref_rope(x, torch.zeros(7), 500.0), x)
    assert not torch.allclose(ref_rope(x, torch.arange(7), 500.0), x, atol=0.1)


# ---------------------------------------------------------------------------------------------
# memory_attention on tensors
# ---------------------------------------------------------------------------------------------

B, T, D = 2, 6, 8


def qkv(
    g: torch.Generator, heads: int, kv_heads: int, tokens: int = T, keys: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = tokens if keys is None else keys
    q = torch.randn(B, heads, tokens, D, generator=g)
    k = torch.randn(B, kv_heads, s, D, generator=g)
    v = torch.randn(B, kv_heads, s, D, generator=g)
    return q, k, v


GROUPS = pytest.mark.parametrize("group", [1, 3], ids=["mha", "gqa3"])


@GROUPS
def test_no_memory_is_causal_sdpa(group: int) -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = qkv(g, 2 * group, 2)
    out = memory_attention(q, k, v)
    kr, vr = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    want = F.scaled_dot_product_attention(q, kr, vr, is_causal=True, scale=1.0)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref_attend(q, k, v), atol=1e-5, rtol=1e-5)


def _memories(
    g: torch.Generator, heads: int, kv_heads: int, tokens: int, slots: int
) -> dict[str, Memory]:
    mk = torch.randn(B, kv_heads, slots, D, generator=g)
    mv = torch.randn(B, kv_heads, slots, D, generator=g)
    return {
        "shared": Memory(keys=mk, values=mv),
        "per_query": Memory(keys=per_query(mk, heads, tokens), values=per_query(mv, heads, tokens)),
    }


def _rows(mem: Memory | None, tokens: int) -> Memory | None:
    """The per-query memory of the last `tokens` queries (shared memory is the same for all)."""
    if mem is None or not mem.per_query:
        return mem
    assert mem.keys is not None
    return Memory(keys=mem.keys[:, :, -tokens:], values=mem.values[:, :, -tokens:])


@GROUPS
@pytest.mark.parametrize("layout", [None, "shared", "per_query"])
@pytest.mark.parametrize("new", [1, 3])
def test_cache_gives_the_last_rows(group: int, layout: str | None, new: int) -> None:
    """Queries of the `new` newest tokens against a context that holds earlier ones (past > 0)
    equal the last rows of the whole computation."""
    g = torch.Generator().manual_seed(2)
    q, k, v = qkv(g, 2 * group, 2, tokens=9)
    mem = None if layout is None else _memories(g, 2 * group, 2, 9, 5)[layout]
    full = memory_attention(q, k, v, mem)
    part = memory_attention(q[:, :, -new:], k, v, _rows(mem, new))
    torch.testing.assert_close(part, full[:, :, -new:], atol=1e-6, rtol=1e-5)
    if mem is None:
        want = ref_attend(q[:, :, -new:], k, v)
    else:
        mk = per_query(mem.keys, 2 * group, new) if layout == "shared" else _rows(mem, new).keys
        mv = per_query(mem.values, 2 * group, new) if layout == "shared" else _rows(mem, new).values
        want = ref_attend(q[:, :, -new:], k, v, mk, mv)
    torch.testing.assert_close(part.double(), want, atol=1e-5, rtol=1e-5)


@GROUPS
def test_memory_layouts_agree_with_reference(group: int) -> None:
    """Shared keys, per-query keys and per-query scores give the reference's output; and the
    memory changes the output (it is not ignored)."""
    heads = 2 * group
    g = torch.Generator().manual_seed(3)
    q, k, v = qkv(g, heads, 2)
    mems = _memories(g, heads, 2, T, 5)
    pq = mems["per_query"]
    assert pq.keys is not None
    mems["scores"] = Memory(values=pq.values, scores=torch.einsum("bhtd,bhtkd->bhtk", q, pq.keys))
    want = ref_attend(q, k, v, pq.keys, pq.values)
    for name, mem in mems.items():
        out = memory_attention(q, k, v, mem)
        torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5, msg=name)
    assert (want - ref_attend(q, k, v)).abs().max() > 0.05


@GROUPS
@pytest.mark.parametrize("kind", ["keys", "scores"])
def test_per_query_padding_is_ignored(group: int, kind: str) -> None:
    """Per-query slots with mask False (garbage keys / scores and values, scattered among the
    real ones) give the same output as memory without those slots."""
    heads, real, pad = 2 * group, 4, 3
    g = torch.Generator().manual_seed(4)
    q, k, v = qkv(g, heads, 2)
    mk = torch.randn(B, heads, T, real, D, generator=g)
    mv = torch.randn(B, heads, T, real, D, generator=g)
    slots = real + pad
    # a random placement of the real slots per query
    order = torch.rand(B, heads, T, slots, generator=g).argsort(dim=-1)
    mask = order < real
    pk = 1e3 * torch.randn(B, heads, T, slots, D, generator=g)
    pv = 1e3 * torch.randn(B, heads, T, slots, D, generator=g)
    pk[mask] = mk.reshape(-1, D)
    pv[mask] = mv.reshape(-1, D)

    def memory(keys: torch.Tensor, values: torch.Tensor, m: torch.Tensor | None) -> Memory:
        if kind == "keys":
            return Memory(keys=keys, values=values, mask=m)
        return Memory(values=values, scores=torch.einsum("bhtd,bhtkd->bhtk", q, keys), mask=m)

    padded = memory_attention(q, k, v, memory(pk, pv, mask))
    plain = memory_attention(q, k, v, memory(mk, mv, None))
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.double(), ref_attend(q, k, v, mk, mv), atol=1e-5, rtol=1e-5)
    # the garbage would matter if it were read
    unmasked = memory_attention(q, k, v, memory(pk, pv, None))
    assert (unmasked - plain).abs().max() > 1.0


@GROUPS
def test_shared_mask_per_batch_slot(group: int) -> None:
    """Shared memory with mask [B, M]: each batch slot reads only its unmasked slots, as if the
    others were not there."""
    heads, m = 2 * group, 7
    g = torch.Generator().manual_seed(5)
    q, k, v = qkv(g, heads, 2)
    mk = torch.randn(B, 2, m, D, generator=g)
    mv = torch.randn(B, 2, m, D, generator=g)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [0, 1, 1, 0, 0, 0, 1]], dtype=torch.bool)
    mk[~mask[:, None].expand(-1, 2, -1)] = 1e3
    mv[~mask[:, None].expand(-1, 2, -1)] = -1e3
    out = memory_attention(q, k, v, Memory(keys=mk, values=mv, mask=mask))
    for b in range(B):
        keep = mask[b]
        alone = memory_attention(
            q[b : b + 1],
            k[b : b + 1],
            v[b : b + 1],
            Memory(keys=mk[b : b + 1, :, keep], values=mv[b : b + 1, :, keep]),
        )
        torch.testing.assert_close(out[b : b + 1], alone, atol=1e-5, rtol=1e-5)
        want = ref_attend(
            q[b : b + 1],
            k[b : b + 1],
            v[b : b + 1],
            per_query(mk[b : b + 1, :, keep], heads, T),
            per_query(mv[b : b + 1, :, keep], heads, T),
        )
        torch.testing.assert_close(out[b : b + 1].double(), want, atol=1e-5, rtol=1e-5)


@GROUPS
@pytest.mark.parametrize("blind", [(True, False, True), (True, True, True), (False, False, False)])
def test_blind_rows_equal_a_mask_of_every_slot(group: int, blind: tuple[bool, ...]) -> None:
    """`Memory.blind` (rows that read none of the memory, run apart) gives what masking all of
    those rows' slots gives, gradients included; blind rows equal plain causal attention."""
    heads, m, rows = 2 * group, 6, len(blind)
    g = torch.Generator().manual_seed(9)
    q = torch.randn(rows, heads, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(rows, 2, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(rows, 2, T, D, generator=g, dtype=torch.float64)
    mk = torch.randn(rows, 2, m, D, generator=g, dtype=torch.float64, requires_grad=True)
    mv = torch.randn(rows, 2, m, D, generator=g, dtype=torch.float64)
    dark = torch.tensor(blind)
    got = memory_attention(q, k, v, Memory(keys=mk, values=mv, blind=dark))
    (dq, dk) = torch.autograd.grad(
        got.square().sum(), (q, mk), allow_unused=True, materialize_grads=True
    )
    mask = (~dark)[:, None].expand(rows, m)
    want = memory_attention(q, k, v, Memory(keys=mk, values=mv, mask=mask))
    (wq, wk) = torch.autograd.grad(want.square().sum(), (q, mk))
    for r in range(rows):  # a row with every slot masked: SDPA's masked softmax, local keys only
        if blind[r]:
            plain = memory_attention(q[r : r + 1], k[r : r + 1], v[r : r + 1])
            torch.testing.assert_close(got[r : r + 1], plain)
        else:
            torch.testing.assert_close(got[r], want[r])
    torch.testing.assert_close(dq, wq)
    torch.testing.assert_close(dk, wk)
    assert not dark.all() or bool((dk == 0).all())  # memory nobody reads gets no gradient
    with pytest.raises(fot_mem.ShapeError, match="blind"):
        memory_attention(q, k, v, Memory(keys=mk, values=mv, blind=dark[:2]))
    # Compact: the memory of the seeing rows alone gives the same, gradients included.
    seen = (~dark).nonzero().flatten()
    ck = mk.detach()[seen].requires_grad_(True)
    compact = memory_attention(q, k, v, Memory(keys=ck, values=mv[seen], blind=dark, compact=True))
    torch.testing.assert_close(compact, got)
    (cq, ckg) = torch.autograd.grad(
        compact.square().sum(), (q, ck), allow_unused=True, materialize_grads=True
    )
    torch.testing.assert_close(cq, dq)
    torch.testing.assert_close(ckg, dk[seen])
    if dark.any():  # every row's memory where only the seeing rows' belongs
        with pytest.raises(fot_mem.ShapeError, match="seeing rows"):
            memory_attention(q, k, v, Memory(keys=mk, values=mv, blind=dark, compact=True))
    with pytest.raises(fot_mem.ShapeError, match="needs `blind`"):
        memory_attention(q, k, v, Memory(keys=mk, values=mv, compact=True))


@GROUPS
def test_shared_mask_per_query(group: int) -> None:
    """Shared memory with mask [B, T, M] (each query its own visible slots, some none) equals the
    per-query layout with that mask and the reference."""
    heads, m = 2 * group, 5
    g = torch.Generator().manual_seed(6)
    q, k, v = qkv(g, heads, 2)
    mk = torch.randn(B, 2, m, D, generator=g)
    mv = torch.randn(B, 2, m, D, generator=g)
    mask = torch.rand(B, T, m, generator=g) < 0.5
    mask[0, 0] = False  # a query that sees no memory at all
    mask[1, 2] = True
    out = memory_attention(q, k, v, Memory(keys=mk, values=mv, mask=mask))
    pk, pv = per_query(mk, heads, T), per_query(mv, heads, T)
    pmask = mask[:, None].expand(-1, heads, -1, -1)
    as_pq = memory_attention(q, k, v, Memory(keys=pk, values=pv, mask=pmask))
    torch.testing.assert_close(out, as_pq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.double(), ref_attend(q, k, v, pk, pv, pmask), atol=1e-5, rtol=1e-5
    )
    # query 0 of batch slot 0 sees no memory: plain causal attention there
    plain = memory_attention(q, k, v)
    torch.testing.assert_close(out[0, :, 0], plain[0, :, 0], atol=1e-6, rtol=1e-5)
    assert (out - plain).abs().max() > 0.05


# ---------------------------------------------------------------------------------------------
# FotAttention: memory = the previous window of the same document
# ---------------------------------------------------------------------------------------------

LAYER = 1


def make_layer(group: int, qk_norm: bool, seed: int = 0) -> tuple[FotAttention, FotConfig]:
    config = FotConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_layers=2,
        num_heads=2 * group,
        num_kv_heads=2,
        head_dim=D,
        rope_theta=100.0,  # a small base: rotations by a few positions change the logits a lot
        memory_layers=(LAYER,),
        qk_norm=qk_norm,
    )
    torch.manual_seed(seed)
    attn = FotAttention(config, LAYER)
    if qk_norm:
        with torch.no_grad():  # distinct temperatures per head, large enough to focus
            attn.log_temperature.copy_(torch.linspace(1.0, 2.5, config.num_heads))
    return attn, config


def tables(config: FotConfig, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return RotaryEmbedding(config.head_dim, config.rope_theta)(torch.arange(tokens), torch.float32)


QK_NORM = pytest.mark.parametrize("qk_norm", [False, True], ids=["scaled", "qknorm"])


@GROUPS
@QK_NORM
def test_layer_previous_window_is_dense_attention(group: int, qk_norm: bool) -> None:
    """Window 1, then window 2 with window 1's unrotated keys and values as memory (all of it:
    k >= its length), in every layout, equals the reference's dense attention over
    [window 1 at position 0, window 2 at 0..T-1]."""
    attn, config = make_layer(group, qk_norm)
    heads = config.num_heads
    g = torch.Generator().manual_seed(7)
    x1 = 2 * torch.randn(B, T, config.hidden_size, generator=g)
    x2 = 2 * torch.randn(B, T, config.hidden_size, generator=g)
    cos, sin = tables(config, T)
    with torch.no_grad():
        out1, (k_rot, _), kv1 = attn(x1, cos, sin)
        assert kv1 is not None
        want1, ref_kv1 = ref_layer(attn, x1, config.rope_theta)
        torch.testing.assert_close(out1.double(), want1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kv1[0].double(), ref_kv1[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(kv1[1].double(), ref_kv1[1], atol=1e-6, rtol=1e-5)
        # what the layer caches locally is rotated; what it hands to memory is not
        assert not torch.allclose(k_rot[:, :, 1:], kv1[0][:, :, 1:], atol=1e-3)

        mk, mv = kv1
        pk, pv = per_query(mk, heads, T), per_query(mv, heads, T)

        def scores(layer: int, queries: torch.Tensor) -> Memory:
            assert layer == LAYER and queries.shape == (B, heads, T, D)
            return Memory(values=pv, scores=torch.einsum("bhtd,bhtkd->bhtk", queries, pk))

        want, _ = ref_layer(attn, x2, config.rope_theta, memory=kv1)
        layouts = {
            "shared": {LAYER: Memory(keys=mk, values=mv)},
            "per_query": {LAYER: Memory(keys=pk, values=pv)},
            "scores": scores,
        }
        for name, memory in layouts.items():
            out2 = attn(x2, cos, sin, memory=memory)[0]
            torch.testing.assert_close(out2.double(), want, atol=1e-5, rtol=1e-5, msg=name)
        alone = attn(x2, cos, sin)[0]
    assert (want - alone.double()).abs().max() > 0.05


def test_non_memory_layer_ignores_memory() -> None:
    """A layer outside memory_layers neither reads memory nor returns keys for it."""
    attn, config = make_layer(1, False)
    other = FotAttention(config, 0)
    other.load_state_dict(attn.state_dict())
    g = torch.Generator().manual_seed(8)
    x = torch.randn(B, T, config.hidden_size, generator=g)
    cos, sin = tables(config, T)
    mem = Memory(keys=torch.randn(B, 2, 4, D, generator=g), values=torch.randn(B, 2, 4, D))
    with torch.no_grad():
        out, _, kv = other(x, cos, sin, memory={0: mem, LAYER: mem})
        assert kv is None
        torch.testing.assert_close(out, other(x, cos, sin)[0])
        assert not torch.allclose(attn(x, cos, sin, memory={LAYER: mem})[0], out, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The model: a document read window by window through a MemoryStore
# ---------------------------------------------------------------------------------------------

MODEL_WINDOW = 12


def make_model(qk_norm: bool) -> FotForCausalLM:
    config = FotConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        rope_theta=100.0,
        max_position_embeddings=MODEL_WINDOW,
        tie_word_embeddings=False,
        memory_layers=(1, 2),
        qk_norm=qk_norm,
    )
    return random_model(config, seed=11)  # peaked attention: memory matters


@pytest.mark.parametrize("mirror", [None, "cpu"], ids=["store", "mirror"])
@QK_NORM
def test_reader_equals_dense_reference(make_store, mirror: str | None, qk_norm: bool) -> None:
    """LongDocumentReader with k >= the memory's length: window 3 read against windows 1-2
    gives the reference's logits, where each earlier window sits whole in memory at position 0;
    the losses of reading windows 1-2 and the stored keys and values agree as well."""
    model = make_model(qk_norm)
    c = model.config
    store = make_store(layers=c.memory_layers, kv_heads=c.num_kv_heads, head_dim=c.head_dim)
    doc = store.document("doc")
    reader = LongDocumentReader(model, doc, window=MODEL_WINDOW, k=64, mirror=mirror)
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(0, c.vocab_size, (3 * MODEL_WINDOW,), generator=g)
    w1, w2, w3 = ids.split(MODEL_WINDOW)

    losses = reader.read(ids[: 2 * MODEL_WINDOW])
    got = reader.logits(w3)

    with torch.no_grad():
        ref1, kv1 = ref_model(model, w1[None], {})
        ref2, kv2 = ref_model(model, w2[None], kv1)
        both = {
            i: (torch.cat((kv1[i][0], kv2[i][0]), 2), torch.cat((kv1[i][1], kv2[i][1]), 2))
            for i in c.memory_layers
        }
        ref3, _ = ref_model(model, w3[None], both)
        plain3, _ = ref_model(model, w3[None], {})
    torch.testing.assert_close(got.double(), ref3[0], atol=1e-4, rtol=1e-4)
    assert (ref3 - plain3).abs().max() > 0.1  # the memory matters

    logits12 = torch.cat((ref1[0], ref2[0]))
    want_losses = F.cross_entropy(logits12[:-1], ids[1 : 2 * MODEL_WINDOW], reduction="none")
    assert losses.shape == (2 * MODEL_WINDOW - 1,)
    torch.testing.assert_close(losses.double(), want_losses, atol=1e-4, rtol=1e-4)

    for layer in c.memory_layers:
        assert doc.length(layer) == 2 * MODEL_WINDOW
        keys, values = doc.read(layer, 0, 2 * MODEL_WINDOW)  # [T, Hkv, D]
        torch.testing.assert_close(
            torch.from_numpy(keys).double(), both[layer][0][0].transpose(0, 1), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            torch.from_numpy(values).double(),
            both[layer][1][0].transpose(0, 1),
            atol=1e-5,
            rtol=1e-5,
        )
    # logits() leaves the memory as it was
    assert all(doc.length(layer) == 2 * MODEL_WINDOW for layer in c.memory_layers)


def test_model_with_shared_memory_equals_reference() -> None:
    """The model fed the previous window's memory_kv as shared Memory tensors, batch 2, equals
    the reference model (the same dense attention the reader is checked against)."""
    model = make_model(False)
    c = model.config
    g = torch.Generator().manual_seed(13)
    w1 = torch.randint(0, c.vocab_size, (2, MODEL_WINDOW), generator=g)
    w2 = torch.randint(0, c.vocab_size, (2, MODEL_WINDOW), generator=g)
    with torch.no_grad():
        out1 = model(w1)
        ref1, kv1 = ref_model(model, w1, {})
        torch.testing.assert_close(out1.logits.double(), ref1, atol=1e-4, rtol=1e-4)
        assert set(out1.memory_kv) == set(c.memory_layers)
        memory = {i: Memory(keys=k, values=v) for i, (k, v) in out1.memory_kv.items()}
        out2 = model(w2, memory=memory)
        ref2, _ = ref_model(model, w2, kv1)
    torch.testing.assert_close(out2.logits.double(), ref2, atol=1e-4, rtol=1e-4)


def test_memory_attention_refuses_mismatched_local_tensors() -> None:
    from fot_mem import InvalidValueError, ShapeError

    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    for bad in (
        (q, k[:, :, :3], v[:, :, :3]),  # fewer local keys than queries
        (q, k, v[:, :1]),  # values of another head count
        (q, torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)),  # 3 kv heads do not divide 4
        (q, k[..., :4], v),  # another head_dim
        (q[0], k, v),
    ):
        with pytest.raises(ShapeError):
            memory_attention(*bad)
    mem = Memory(keys=torch.randn(1, 2, 3, 8), values=torch.randn(1, 2, 3, 6))
    with pytest.raises(ShapeError, match="dim 6"):
        memory_attention(q, k, v, mem)
    meta = Memory(keys=torch.randn(1, 2, 3, 8, device="meta"), values=torch.randn(1, 2, 3, 8))
    with pytest.raises(InvalidValueError, match="device"):
        memory_attention(q, k, v, meta)
