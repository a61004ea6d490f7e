"""fot_mem.eval.common: models from training checkpoints, held-out documents, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fot_mem import InvalidValueError  # noqa: E402
from fot_mem.data.shards import write_shards  # noqa: E402
from fot_mem.eval.common import documents  # noqa: E402
from fot_mem.torch.weights import load_model  # noqa: E402
from tiny import tiny_run  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("data")
    docs = [(f"doc{i}", "x = 1\n" * (20 + 30 * i)) for i in range(8)]
    split = {"doc1": "val", "doc4": "val", "doc6": "val"}
    write_shards(docs, out, "bytes", lambda d: split.get(d, "train"), progress=False)
    return str(out)


def test_documents_filter_and_limit(data: str) -> None:
    val = documents(data)
    assert [doc_id for doc_id, _ in val] == ["doc1", "doc4", "doc6"]
    assert [len(t) for _, t in val] == [6 * 50, 6 * 140, 6 * 200]  # bytes, no bos/eos
    assert [d for d, _ in documents(data, min_tokens=6 * 140)] == ["doc4", "doc6"]
    assert [d for d, _ in documents(data, "train", limit=2)] == ["doc0", "doc2"]
    with pytest.raises(InvalidValueError, match="no document"):
        documents(data, min_tokens=10**6)


def test_loads_a_training_run(data: str, tmp_path: Path) -> None:
    trainer = tiny_run(data, tmp_path / "run")
    ids = torch.arange(16)[None] % 200
    want = trainer.model.eval()(ids).logits
    for spec in (tmp_path / "run", tmp_path / "run" / "checkpoint-0000002"):
        model = load_model(spec)
        assert model.config.memory_layers == (1,) and not model.training
        torch.testing.assert_close(model(ids).logits, want)
    with pytest.raises(InvalidValueError, match="checkpoint"):
        load_model(tmp_path)
    with pytest.raises(InvalidValueError, match="neither"):
        load_model(tmp_path / "missing.bin")
