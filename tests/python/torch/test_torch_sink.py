"""`FotConfig.sink_token`: a token put before every window that starts afresh, whose key and
value memory never gets. The model must equal the same weights run on `[sink] + window` with the
sink's outputs dropped, in every path: memory mappings and providers, the local cache
(generation), crossbatch training (its contexts hold no sink keys) and the store reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fot_mem  # noqa: E402
from fot_mem.torch import Crossbatch, FotConfig, FotForCausalLM, LocalCache, Memory  # noqa: E402
from fot_mem.torch.reader import LongDocumentReader, create_store  # noqa: E402

SINK = 5
CONFIG = FotConfig(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rope_theta=300.0,
    max_position_embeddings=32,
    memory_layers=(1, 2),
)


def pair(seed: int = 0) -> tuple[FotForCausalLM, FotForCausalLM]:
    """(plain model, the same weights with the sink token), float64, peaked attention."""
    torch.manual_seed(seed)
    plain = FotForCausalLM(CONFIG).double().eval()
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[1]) if "embed" not in name else 1.0)
    sunk = FotForCausalLM(CONFIG.replace(sink_token=SINK)).double().eval()
    sunk.load_state_dict(plain.state_dict())
    return plain, sunk


def with_sink(ids: torch.Tensor) -> torch.Tensor:
    return torch.cat((torch.full((ids.shape[0], 1), SINK), ids), dim=1)


def ids(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_forward_equals_the_window_behind_an_explicit_sink() -> None:
    plain, sunk = pair()
    x = ids(2, 9)
    g = torch.Generator().manual_seed(3)
    shape = (2, CONFIG.num_kv_heads, 7, CONFIG.head_dim)
    memory = {
        layer: Memory(
            keys=torch.randn(*shape, generator=g, dtype=torch.float64),
            values=torch.randn(*shape, generator=g, dtype=torch.float64),
        )
        for layer in CONFIG.memory_layers
    }
    got = sunk(x, memory=memory)
    want = plain(with_sink(x), memory=memory)
    assert got.logits.shape == (2, 9, CONFIG.vocab_size)
    torch.testing.assert_close(got.logits, want.logits[:, 1:])
    for layer, (keys, values) in got.memory_kv.items():
        assert keys.shape == (2, CONFIG.num_kv_heads, 9, CONFIG.head_dim)  # no sink key
        torch.testing.assert_close(keys, want.memory_kv[layer][0][:, :, 1:])
        torch.testing.assert_close(values, want.memory_kv[layer][1][:, :, 1:])
    # the sink changes what the window computes, so the comparison above can fail
    assert (got.logits - plain(x, memory=memory).logits).abs().max() > 1e-3


def test_generation_keeps_the_sink_in_the_cache_only() -> None:
    plain, sunk = pair(seed=2)
    prompt, nxt = ids(1, 6, seed=4), ids(1, 1, seed=5)
    cache = LocalCache()
    first = sunk(prompt, cache=cache).logits
    second = sunk(nxt, cache=cache).logits  # a cache that holds tokens: no second sink
    assert cache.length == 1 + 6 + 1
    ref_cache = LocalCache()
    ref_first = plain(with_sink(prompt), cache=ref_cache).logits
    ref_second = plain(nxt, cache=ref_cache).logits
    torch.testing.assert_close(first, ref_first[:, 1:])
    torch.testing.assert_close(second, ref_second)


def test_crossbatch_contexts_hold_no_sink_keys() -> None:
    _, sunk = pair(seed=3)
    slots, d, w = 3, 2, 6
    x = ids(2 * slots, w, seed=6)
    spec = Crossbatch(slots=slots, d=d)
    got = sunk(x, memory=spec, logits_rows=slice(slots, None)).logits
    # the previous windows' memory keys from a separate forward (sinks left out there too)
    kv = sunk(x[:slots]).memory_kv
    assert next(iter(kv.values()))[0].shape[2] == w
    memory = {
        layer: Memory(keys=spec.contexts(keys), values=spec.contexts(values))
        for layer, (keys, values) in kv.items()
    }
    torch.testing.assert_close(got, sunk(x[slots:], memory=memory).logits)
    sunk(x, memory=spec, logits_rows=slice(slots, None)).logits.sum().backward()  # trains


def test_reader_stores_one_key_per_token(tmp_path: Path) -> None:
    _, sunk = pair(seed=4)
    doc_ids = ids(1, 21, seed=7)[0]
    store = create_store(tmp_path / "s", sunk, dtype="float32")
    reader = LongDocumentReader(sunk, store.document("d"), window=8, k=4)
    losses = reader.read(doc_ids)
    assert losses.shape == (20,) and torch.isfinite(losses).all()
    assert reader.memory_tokens() == 21  # no sink keys among them
    # the stored keys are the sink model's memory keys of each window, read against the memory
    # of the windows before it: the first window's need no memory
    first = sunk(doc_ids[None, :8]).memory_kv
    layer = CONFIG.memory_layers[0]
    stored = store.document("d").read(layer, 0, 8)[0].astype(np.float64)
    np.testing.assert_allclose(
        stored, first[layer][0][0].transpose(0, 1).detach().numpy(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("bad", [-1, CONFIG.vocab_size, True, 2.0])
def test_config_refuses_a_bad_sink_token(bad: object) -> None:
    with pytest.raises(fot_mem.InvalidValueError, match="sink_token"):
        CONFIG.replace(sink_token=bad)


def test_training_config_passes_the_sink_token() -> None:
    from fot_mem.train.config import TrainConfig
    from fot_mem.train.model import build_model

    shape = dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    cfg = TrainConfig(data="-", out="-", memory_layers="1", window=8, sink_token=3, **shape)
    assert build_model(cfg, vocab=61).config.sink_token == 3
    cfg.sink_token = None
    assert build_model(cfg, vocab=61).config.sink_token is None
    cfg.sink_token = -2
    with pytest.raises(fot_mem.InvalidValueError, match="sink_token"):
        cfg.check()
