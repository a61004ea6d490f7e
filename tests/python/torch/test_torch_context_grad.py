"""Crossbatch with `context_grad=False`: the previous windows run without gradients, and the
result is the same forward pass, with the gradients of the paper's crossbatch wherever the
contexts' residual stream is not involved."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fot_mem import InvalidValueError, ShapeError  # noqa: E402
from fot_mem.torch import Crossbatch, FotForCausalLM  # noqa: E402
from torch_models import SMALL, random_model, tokens  # noqa: E402

SLOTS, PREV, W = 3, 2, 6


def batch(seed: int = 1) -> torch.Tensor:
    return tokens(SMALL, SLOTS * (PREV + 1), W, seed=seed)


def spec(context_grad: bool, **changes: object) -> Crossbatch:
    fields = dict(slots=SLOTS, d=2, prev=PREV, context_grad=context_grad)
    return Crossbatch(**{**fields, **changes})  # type: ignore[arg-type]


def logits(model: FotForCausalLM, crossbatch: Crossbatch, x: torch.Tensor) -> torch.Tensor:
    return model(x, memory=crossbatch, logits_rows=slice(SLOTS * PREV, None)).logits


@pytest.mark.parametrize("sink", [None, 5])
@pytest.mark.parametrize("blind", [None, (True, False, False)])
def test_same_forward_as_the_differentiable_contexts(sink: int | None, blind: tuple | None) -> None:
    model = random_model(SMALL.replace(sink_token=sink)).double()
    mask = None if blind is None else torch.tensor(blind)
    x = batch()
    want = logits(model, spec(True, blind=mask), x)
    got = logits(model, spec(False, blind=mask), x)
    assert got.shape == (SLOTS, W, SMALL.vocab_size)
    torch.testing.assert_close(got, want)
    # memory matters here, so the comparison above can fail
    other = logits(model, spec(False, d=1, blind=mask), x)
    assert (other - want).abs().max() > 1e-3


def grads(
    model: FotForCausalLM, crossbatch: Crossbatch, x: torch.Tensor
) -> dict[str, torch.Tensor]:
    model.zero_grad()
    logits(model, crossbatch, x).pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_above_the_only_memory_layer_are_the_papers() -> None:
    """With one memory layer (2 of 4), nothing of the contexts above it is used, so every
    parameter from that layer up gets the full crossbatch gradient, the key and value
    projections' share through the contexts included; below it, only the current windows'."""
    model = random_model(SMALL.replace(memory_layers=(2,))).double()
    x = batch(seed=2)
    want, got = grads(model, spec(True), x), grads(model, spec(False), x)
    above = [n for n in want if n.startswith(("model.layers.2.", "model.layers.3.", "lm_head"))]
    assert "model.layers.2.self_attn.k_proj.weight" in above
    for name in above:
        torch.testing.assert_close(got[name], want[name], msg=name)
    below = "model.layers.0.self_attn.k_proj.weight"
    assert (got[below] - want[below]).abs().max() > 1e-6  # the contexts' share is gone there


def test_memory_layer_projections_learn_from_the_contexts() -> None:
    """The memory layers' key projections still learn from the contexts: making every slot
    blind to its contexts changes their gradient."""
    model = random_model(SMALL).double()
    x = batch(seed=3)
    seen = grads(model, spec(False), x)
    blind = grads(model, spec(False, blind=torch.ones(SLOTS, dtype=torch.bool)), x)
    for layer in SMALL.memory_layers:
        name = f"model.layers.{layer}.self_attn.k_proj.weight"
        assert (seen[name] - blind[name]).abs().max() > 1e-6, name


def test_contexts_need_current_rows_for_logits() -> None:
    model = random_model(SMALL).double()
    with pytest.raises(InvalidValueError, match="current windows only"):
        model(batch(), memory=spec(False), logits_rows=slice(0, None))
    with pytest.raises(InvalidValueError, match="current windows only"):
        model(batch(), memory=spec(False))
    with pytest.raises(ShapeError, match="needs 9"):
        logits(model, spec(False), batch()[:-1])
