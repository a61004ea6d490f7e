"""The chunked LM-head loss (`fot_mem.train.loss`, `TrainConfig.loss_chunk`): the same loss,
accuracy and gradients as the whole logits give."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from fot_mem.data.shards import write_shards  # noqa: E402
from fot_mem.exceptions import InvalidValueError  # noqa: E402
from fot_mem.train.loop import IGNORE, Trainer  # noqa: E402
from fot_mem.train.loss import chunked_cross_entropy  # noqa: E402
from tiny import tiny_config  # noqa: E402


@pytest.mark.parametrize("chunk", [1, 7, 40, 1000])
def test_equals_the_whole_logits(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 12, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 12, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (40,), generator=g)
    targets[::5] = IGNORE
    loss, acc = chunked_cross_entropy(hidden, weight, targets, IGNORE, chunk)
    logits = hidden @ weight.T
    want = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    counted = targets != IGNORE
    torch.testing.assert_close(loss, want.float(), rtol=1e-6, atol=1e-6)
    assert acc == ((logits.argmax(-1) == targets) & counted).sum() / counted.sum()
    loss.backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want.backward()
    torch.testing.assert_close(got[0], hidden.grad)
    torch.testing.assert_close(got[1], weight.grad)


def test_training_with_chunks_matches_the_whole(tmp_path: Path) -> None:
    docs = [(f"d{i}", ("def f(x):\n    return x\n" * 30) + f"# {i}\n") for i in range(8)]
    split = {"d0": "val", "d1": "val"}
    write_shards(docs, tmp_path / "data", "bytes", lambda d: split.get(d, "train"), progress=False)
    whole = Trainer(tiny_config(tmp_path / "data", tmp_path / "a", batch=2))
    chunked = Trainer(tiny_config(tmp_path / "data", tmp_path / "b", batch=2, loss_chunk=5))
    chunked.model.load_state_dict(whole.model.state_dict())
    batch = whole.batcher.next()
    results = []
    for trainer in (whole, chunked):
        trainer.model.train()
        loss, acc = trainer.loss(batch, 2)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        results.append((loss.detach(), acc, grads))
    (l1, a1, g1), (l2, a2, g2) = results
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    assert a1 == a2
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(InvalidValueError, match="loss_chunk"):
        tiny_config(tmp_path / "data", tmp_path / "c", loss_chunk=-1).check()
