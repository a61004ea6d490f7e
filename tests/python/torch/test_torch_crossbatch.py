"""Crossbatch attention (FoT training) against a naive reference written with explicit loops."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from fot_mem import InvalidValueError, ShapeError  # noqa: E402
from fot_mem.torch import Crossbatch, FotConfig, FotForCausalLM, Memory  # noqa: E402
from fot_mem.torch.crossbatch import crossbatch_attention  # noqa: E402


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(q, k, v, k0, v0, slots: int, d: int, prev: int) -> torch.Tensor:
    """Loops: each query's logits over [contexts of slots i..i+d-1 (current rows only), causal
    local keys], one softmax, weighted sum of the matching values."""
    rows, heads, w, _ = q.shape
    group = heads // k.shape[1]
    n = slots * prev
    out = torch.zeros(rows, heads, w, v.shape[-1], dtype=torch.float64)
    for r in range(rows):
        for h in range(heads):
            kh = h // group
            for t in range(w):
                logits, values = [], []
                if r >= n:
                    for j in range(d):
                        s = (r - n + j) % slots
                        for p in range(prev):
                            for u in range(w):
                                logits.append(q[r, h, t] @ k0[s * prev + p, kh, u])
                                values.append(v0[s * prev + p, kh, u])
                for u in range(t + 1):
                    logits.append(q[r, h, t] @ k[r, kh, u])
                    values.append(v[r, kh, u])
                weights = torch.softmax(torch.stack(logits), dim=0)
                out[r, h, t] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


def inputs(slots: int, prev: int, heads: int = 4, kv: int = 2, w: int = 3, dim: int = 5):
    rows = slots * (prev + 1)
    return (
        rand(rows, heads, w, dim, seed=1),
        rand(rows, kv, w, dim, seed=2),
        rand(rows, kv, w, dim, seed=3),
        rand(rows, kv, w, dim, seed=4),
        rand(rows, kv, w, dim, seed=5),
    )


@pytest.mark.parametrize("slots, d, prev", [(3, 1, 1), (3, 2, 1), (4, 3, 2), (2, 2, 1)])
def test_equals_the_naive_reference(slots: int, d: int, prev: int) -> None:
    q, k, v, k0, v0 = inputs(slots, prev)
    spec = Crossbatch(slots=slots, d=d, prev=prev)
    got = crossbatch_attention(q, k, v, k0, v0, spec)
    torch.testing.assert_close(got, reference(q, k, v, k0, v0, slots, d, prev))


def test_gradients_reach_the_negatives_and_only_with_d_above_1() -> None:
    for d, reached in ((2, True), (1, False)):
        q, k, v, k0, v0 = inputs(3, 1)
        k0.requires_grad_(True)
        v0.requires_grad_(True)
        out = crossbatch_attention(q, k, v, k0, v0, Crossbatch(slots=3, d=d))
        out[3].sum().backward()  # current window of slot 0: positive slot 0, negative slot 1
        assert k0.grad is not None and v0.grad is not None
        assert k0.grad[0].abs().sum() > 0 and v0.grad[0].abs().sum() > 0  # the positive
        assert bool(k0.grad[1].abs().sum() > 0) is reached
        assert bool(v0.grad[1].abs().sum() > 0) is reached
        assert k0.grad[2].abs().sum() == 0  # slot 2 is no context of slot 0 (d <= 2)


def test_d_1_sees_only_its_own_previous_window() -> None:
    q, k, v, k0, v0 = inputs(3, 1)
    spec = Crossbatch(slots=3, d=1)
    before = crossbatch_attention(q, k, v, k0, v0, spec)
    k0b, v0b = k0.clone(), v0.clone()
    k0b[1:] += 10  # other slots' previous windows
    v0b[1:] -= 10
    after = crossbatch_attention(q, k, v, k0b, v0b, spec)
    torch.testing.assert_close(after[3], before[3])  # slot 0's current window: unchanged
    assert not torch.allclose(after[4], before[4])  # slot 1's: its own context changed


def test_blind_slots_read_no_memory_and_the_others_are_unchanged() -> None:
    q, k, v, k0, v0 = inputs(3, 1)
    seeing = crossbatch_attention(q, k, v, k0, v0, Crossbatch(slots=3, d=2))
    blind = torch.tensor([False, True, False])
    k0.requires_grad_(True)
    got = crossbatch_attention(q, k, v, k0, v0, Crossbatch(slots=3, d=2, blind=blind))
    # slot 1's current window (row 4): causal attention to its own window alone
    local = torch.nn.functional.scaled_dot_product_attention(
        q[4:5], k[4:5].repeat_interleave(2, 1), v[4:5].repeat_interleave(2, 1),
        is_causal=True, scale=1.0,
    )  # fmt: skip
    torch.testing.assert_close(got[4:5], local)
    torch.testing.assert_close(got[[0, 1, 2, 3, 5]], seeing[[0, 1, 2, 3, 5]])
    assert torch.isfinite(got).all()
    # its contexts (slots 1 and 2) get no gradient through it
    got[4].sum().backward()
    assert k0.grad is not None and k0.grad.abs().sum() == 0
    with pytest.raises(ShapeError, match="blind"):
        Crossbatch(slots=3, d=2, blind=torch.tensor([True]))
    # The memory holds the seeing slots' contexts alone, equal to theirs in the full memory.
    spec = Crossbatch(slots=3, d=2, blind=blind)
    mem, full = spec.memory(k0[:3], v0[:3]), Crossbatch(slots=3, d=2).memory(k0[:3], v0[:3])
    assert mem.compact and mem.keys is not None and full.keys is not None
    torch.testing.assert_close(mem.keys, full.keys[[0, 2]])
    torch.testing.assert_close(mem.values, full.values[[0, 2]])


def test_previous_windows_attend_causally_to_themselves() -> None:
    q, k, v, k0, v0 = inputs(3, 2)
    out = crossbatch_attention(q, k, v, k0, v0, Crossbatch(slots=3, d=3, prev=2))
    plain = torch.nn.functional.scaled_dot_product_attention(
        q[:6],
        k[:6].repeat_interleave(2, 1),
        v[:6].repeat_interleave(2, 1),
        is_causal=True,
        scale=1.0,
    )
    torch.testing.assert_close(out[:6], plain)


def test_contexts_across_ranks_take_the_global_slots() -> None:
    # Two ranks of 2 slots each: rank 1's slots are global 2 and 3; d = 2.
    own = rand(2, 1, 1, 1, seed=0)
    other = rand(2, 1, 1, 1, seed=1)

    def gather(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((other, x))  # rank 0's tensor, then ours

    ctx = Crossbatch(slots=2, d=2, gather=gather, rank=1).contexts(own)
    assert ctx.shape == (2, 1, 2, 1)
    assert torch.equal(ctx[0, 0, :, 0], torch.stack((own[0, 0, 0, 0], own[1, 0, 0, 0])))
    assert torch.equal(ctx[1, 0, :, 0], torch.stack((own[1, 0, 0, 0], other[0, 0, 0, 0])))


CONFIG = FotConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=16,
    memory_layers=(1, 2),
)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_model_equals_memory_built_from_a_separate_forward(qk_norm: bool) -> None:
    torch.manual_seed(0)
    model = FotForCausalLM(CONFIG.replace(qk_norm=qk_norm)).double()
    slots, d, w = 3, 2, 6
    ids = torch.randint(0, 50, (2 * slots, w))
    spec = Crossbatch(slots=slots, d=d)
    got = model(ids, memory=spec, logits_rows=slice(slots, None)).logits
    assert got.shape == (slots, w, 50)
    # Previous windows read no memory: their keys at each layer are a plain forward's.
    kv = model(ids[:slots]).memory_kv
    memory = {
        layer: Memory(keys=spec.contexts(keys), values=spec.contexts(values))
        for layer, (keys, values) in kv.items()
    }
    want = model(ids[slots:], memory=memory).logits
    torch.testing.assert_close(got, want)
    plain = model(ids[slots:]).logits
    assert (got - plain).abs().max() > 1e-3  # the contexts do change the current windows


def test_model_trains_through_crossbatch() -> None:
    torch.manual_seed(0)
    model = FotForCausalLM(CONFIG)
    ids = torch.randint(0, 50, (4, 8))
    out = model(ids[:, :-1], memory=Crossbatch(slots=2, d=2), logits_rows=slice(2, None))
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 50), ids[2:, 1:].reshape(-1))
    assert math.isfinite(loss.item())
    loss.backward()
    k_proj = model.model.layers[1].self_attn.k_proj.weight.grad
    assert k_proj is not None and k_proj.abs().sum() > 0


def test_errors() -> None:
    q, k, v, k0, v0 = inputs(3, 1)
    with pytest.raises(ShapeError, match="rows"):
        crossbatch_attention(q[:5], k[:5], v[:5], k0[:5], v0[:5], Crossbatch(slots=3))
    with pytest.raises(InvalidValueError, match="exceeds"):
        Crossbatch(slots=2, d=3)
    with pytest.raises(InvalidValueError, match="positive"):
        Crossbatch(slots=0)
    with pytest.raises(InvalidValueError, match="positive"):
        Crossbatch(slots=2, prev=True)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = FotForCausalLM(CONFIG).double()
        model.checkpointing = checkpointing
        ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(1))
        out = model(ids, memory=Crossbatch(slots=2, d=2), logits_rows=slice(2, None))
        out.logits.square().mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_trains_under_bfloat16_autocast() -> None:
    # The RoPE tables are float32 under autocast while v is bf16; the fused kernels need one dtype.
    for qk_norm in (False, True):
        torch.manual_seed(0)
        model = FotForCausalLM(CONFIG.replace(qk_norm=qk_norm))
        ids = torch.randint(0, 50, (4, 8))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, memory=Crossbatch(slots=2, d=2), logits_rows=slice(2, None))
            kv = out.memory_kv[1]
        assert kv[0].dtype == kv[1].dtype == torch.bfloat16
        out.logits.float().square().mean().backward()
        assert model.model.layers[1].self_attn.k_proj.weight.grad is not None


def test_layers_above_the_last_memory_layer_skip_the_previous_windows() -> None:
    config = CONFIG.replace(num_layers=4, memory_layers=(1,))
    torch.manual_seed(0)
    model = FotForCausalLM(config).double()
    slots, prev = 2, 2
    ids = torch.randint(0, 50, (slots * (prev + 1), 6), generator=torch.Generator().manual_seed(2))
    spec = Crossbatch(slots=slots, d=2, prev=prev)
    seen: dict[int, int] = {}
    for i in (1, 2):
        model.model.layers[i].register_forward_hook(
            lambda mod, args, out, i=i: seen.__setitem__(i, out[0].shape[0])
        )
    results = []
    for rows in (slice(slots * prev, None), None):  # trimmed; every row's logits
        model.zero_grad()
        out = model(ids, memory=spec, logits_rows=rows)
        logits = out.logits if rows is not None else out.logits[slots * prev :]
        logits.square().mean().backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        results.append((logits, grads, out.memory_kv[1][0], dict(seen)))
    (trimmed, g_trim, kv_trim, seen_trim), (full, g_full, kv_full, seen_full) = results
    assert seen_trim == {1: 6, 2: 2} and seen_full == {1: 6, 2: 6}
    torch.testing.assert_close(trimmed, full)
    torch.testing.assert_close(g_trim, g_full)
    torch.testing.assert_close(kv_trim, kv_full)
    # rows that include previous windows, or a stride, keep every row
    assert model(ids, memory=spec, logits_rows=slice(1, None)).logits.shape[0] == 5
    assert model(ids, memory=spec, logits_rows=slice(4, None, 2)).logits.shape[0] == 1
