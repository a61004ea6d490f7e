"""Long-document inference over a `MemoryStore` (`fot_mem.torch.reader`, `fot_mem.torch.retrieval`):
a `LongDocumentReader` reads a document window by window, retrieving top-k memory per query and
head before each window and appending the window's memory-layer keys and values after it; from
the CPU store (any backend) or from a `DeviceMirror` of the document on a torch device; across
processes; generation over the memory; the errors. Tiny random models on the CPU; the CUDA tests
are skipped without a GPU."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import fot_mem
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fot_mem import InvalidValueError, MemoryStore, ShapeError, UnknownLayerError
from fot_mem.store import Document
from fot_mem.torch import FotConfig, FotForCausalLM, Memory
from fot_mem.torch.reader import LongDocumentReader, create_store
from fot_mem.torch.retrieval import DeviceMirror, StoreRetriever
from fot_mem.torch.rope import apply_rope

CFG = FotConfig(
    vocab_size=200,
    hidden_size=64,
    intermediate_size=128,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    memory_layers=(1, 2),
    max_position_embeddings=64,
    memory_k=16,
    tie_word_embeddings=False,
)
LAYERS = CFG.memory_layers
HEADS, KV_HEADS, HEAD_DIM = CFG.num_heads, CFG.num_kv_heads, CFG.head_dim
WINDOW = 16
CHUNK = 8  # tokens per chunk file: a few windows already span several files

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- helpers ---------------------------------------------------------------------------------


def make_model(seed: int = 0, config: FotConfig = CFG) -> FotForCausalLM:
    """A random model in eval mode. Weights std 0.15 (not the 0.02 init) and untied embeddings,
    so that logits spread, greedy decoding does not just repeat its input, and memory matters."""
    model = FotForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def tokens(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> FotForCausalLM:
    return make_model()


Stores = Callable[..., MemoryStore]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    """Factory: `stores(**options)` -> a new store shaped for CFG (create_store options, or
    `layers=` / `kv_heads=` / `head_dim=` for a raw MemoryStore.create). Closed at the end."""
    opened: list[MemoryStore] = []
    counter = iter(range(1_000_000))

    def make(model: FotForCausalLM | None = None, **options: Any) -> MemoryStore:
        path = tmp_path / f"store-{next(counter)}"
        options.setdefault("chunk_tokens", CHUNK)
        if model is not None:
            store = create_store(path, model, **options)
        else:
            options.setdefault("layers", list(LAYERS))
            options.setdefault("kv_heads", KV_HEADS)
            options.setdefault("head_dim", HEAD_DIM)
            store = MemoryStore.create(path, **options)
        opened.append(store)
        return store

    yield make
    for s in opened:
        if not s.closed:
            s.close()


def reference_losses(model: FotForCausalLM, ids: torch.Tensor, window: int) -> torch.Tensor:
    """What read() must give when k covers the whole memory: every window attends to ALL the
    keys of the windows before it, passed as shared memory (the crossbatch path of the
    attention, not the per-query retrieval path)."""
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    values: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    logits = []
    with torch.no_grad():
        for start in range(0, ids.numel(), window):
            memory = None
            if start:
                memory = {
                    layer: Memory(
                        keys=torch.cat(keys[layer], 2), values=torch.cat(values[layer], 2)
                    )
                    for layer in LAYERS
                }
            out = model(ids[start : start + window][None], memory=memory)
            logits.append(out.logits[0])
            for layer, (k, v) in out.memory_kv.items():
                keys[layer].append(k)
                values[layer].append(v)
    return F.cross_entropy(torch.cat(logits)[:-1], ids[1:], reduction="none")


def top_k_losses(model: FotForCausalLM, ids: torch.Tensor, window: int, k: int) -> torch.Tensor:
    """What read() must give with top-k retrieval, k below the memory: a brute-force retrieval
    in the test (every memory key scored, torch top-k, keys and values gathered), handed to the
    model as per-query keys (not precomputed scores)."""
    group = HEADS // KV_HEADS
    keys = {layer: torch.zeros(0, KV_HEADS, HEAD_DIM) for layer in LAYERS}
    values = {layer: torch.zeros(0, KV_HEADS, HEAD_DIM) for layer in LAYERS}

    def provider(layer: int, queries: torch.Tensor) -> Memory | None:
        if keys[layer].shape[0] == 0:
            return None
        key = keys[layer].transpose(0, 1).repeat_interleave(group, dim=0)  # [H, M, D]
        value = values[layer].transpose(0, 1).repeat_interleave(group, dim=0)
        scores = queries[0] @ key.transpose(1, 2)  # [H, T, M]
        top = scores.topk(min(k, scores.shape[-1]), dim=-1).indices  # [H, T, K]
        head = torch.arange(HEADS)[:, None, None]
        return Memory(values=value[head, top][None], keys=key[head, top][None])

    logits = []
    with torch.no_grad():
        for start in range(0, ids.numel(), window):
            out = model(ids[start : start + window][None], memory=provider)
            logits.append(out.logits[0])
            for layer, (k_, v_) in out.memory_kv.items():
                keys[layer] = torch.cat((keys[layer], k_[0].transpose(0, 1)))
                values[layer] = torch.cat((values[layer], v_[0].transpose(0, 1)))
    return F.cross_entropy(torch.cat(logits)[:-1], ids[1:], reduction="none")


def snapshot(doc: Document) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {layer: doc.read(layer) for layer in LAYERS}


def assert_same_memory(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for layer in a:
        np.testing.assert_array_equal(a[layer][0], b[layer][0])
        np.testing.assert_array_equal(a[layer][1], b[layer][1])


def fill(doc: Document, n: int, seed: int, via: StoreRetriever | None = None) -> None:
    """Appends n random tokens to every layer of doc (through `via` if given), in 3 batches."""
    cuts = [0, n // 3, n // 2, n]
    for layer in LAYERS:
        k = rand(n, KV_HEADS, HEAD_DIM, seed=seed + layer)
        v = rand(n, KV_HEADS, HEAD_DIM, seed=seed + 100 + layer)
        for a, b in zip(cuts, cuts[1:]):
            if via is None:
                doc.append(layer, k[a:b], v[a:b])
            else:
                via.append(layer, k[a:b], v[a:b])


# -- read ------------------------------------------------------------------------------------


def test_read_returns_losses_stats_and_fills_memory(model, stores) -> None:
    store = stores(model)
    doc = store.document("book")
    reader = LongDocumentReader(model, doc, window=WINDOW)
    assert reader.memory_tokens() == 0
    n = 4 * WINDOW + 6  # the last window is partial
    losses = reader.read(tokens(n))
    assert losses.shape == (n - 1,) and losses.dtype == torch.float32
    assert losses.device.type == "cpu"
    assert torch.isfinite(losses).all() and (losses > 0).all()
    assert reader.stats["tokens"] == n and reader.stats["windows"] == 5
    assert reader.stats["retrieve_s"] > 0 and reader.stats["append_s"] > 0
    assert reader.memory_tokens() == n
    assert [doc.length(layer) for layer in LAYERS] == [n, n]
    assert store.documents() == ["book"]

    more = reader.read(tokens(10, seed=2))
    assert more.shape == (9,)
    assert reader.stats["tokens"] == n + 10 and reader.stats["windows"] == 6
    assert reader.memory_tokens() == n + 10
    assert [doc.length(layer) for layer in LAYERS] == [n + 10, n + 10]

    assert reader.read([]).shape == (0,)
    assert reader.read([7]).shape == (0,)
    assert reader.memory_tokens() == n + 11


def test_read_without_losses_fills_the_same_memory(model, stores) -> None:
    store = stores(model)
    full, bare = store.document("full"), store.document("bare")
    n = 3 * WINDOW + 5
    LongDocumentReader(model, full, window=WINDOW).read(tokens(n))
    bare_reader = LongDocumentReader(model, bare, window=WINDOW)
    assert bare_reader.read(tokens(n), losses=False).shape == (0,)
    assert bare_reader.stats["tokens"] == n and bare_reader.stats["windows"] == 4
    for layer in LAYERS:
        want, got = full.read(layer, 0, n), bare.read(layer, 0, n)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_read_matches_attending_to_all_earlier_windows(model, stores) -> None:
    """With k >= the memory, top-k retrieval is all of the memory: read() must give the losses of
    a reference loop that passes every earlier window's keys and values as shared memory."""
    ids = tokens(3 * WINDOW + 5, seed=3)
    want = reference_losses(model, ids, WINDOW)
    reader = LongDocumentReader(model, stores(model).document("d"), window=WINDOW, k=128)
    torch.testing.assert_close(reader.read(ids), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mirror", [None, "cpu"])
@pytest.mark.parametrize("k", [3, 16])
def test_read_matches_a_brute_force_top_k(model, stores, k, mirror) -> None:
    ids = tokens(4 * WINDOW + 5, seed=6)
    want = top_k_losses(model, ids, WINDOW, k)
    reader = LongDocumentReader(
        model, stores(model).document("d"), window=WINDOW, k=k, mirror=mirror
    )
    torch.testing.assert_close(reader.read(ids), want, atol=1e-5, rtol=1e-5)
    # k matters: with all of the memory, other losses
    assert (want - reference_losses(model, ids, WINDOW)).abs().max() > 1e-3


def test_first_window_is_a_plain_forward_and_memory_matters(model, stores) -> None:
    ids = tokens(3 * WINDOW, seed=4)
    reader = LongDocumentReader(model, stores(model).document("d"), window=WINDOW)
    losses = reader.read(ids)
    with torch.no_grad():
        first = model(ids[None, :WINDOW]).logits[0]
        second = model(ids[None, WINDOW : 2 * WINDOW]).logits[0]
    # memory is empty for the first window: a forward without memory, to the window's end, and
    # the first token of the next window is predicted from the first window's last logits
    plain = F.cross_entropy(first, ids[1 : WINDOW + 1], reduction="none")
    torch.testing.assert_close(losses[:WINDOW], plain, atol=1e-6, rtol=1e-6)
    # the second window reads the first from memory: not the memoryless forward
    alone = F.cross_entropy(second[:-1], ids[WINDOW + 1 : 2 * WINDOW], reduction="none")
    assert (losses[WINDOW : 2 * WINDOW - 1] - alone).abs().max() > 1e-3


def test_stored_keys_are_the_unrotated_memory_layer_keys(model, stores) -> None:
    ids = tokens(2 * WINDOW + 3, seed=5)
    doc = stores(model).document("d")
    reader = LongDocumentReader(model, doc, window=WINDOW)
    reader.read(ids)
    with torch.no_grad():
        out = model(ids[None, :WINDOW])
        cos, sin = model.model.rotary(torch.arange(WINDOW), torch.float32)
    assert set(out.memory_kv) == set(LAYERS)
    for layer in LAYERS:
        keys, values = out.memory_kv[layer]  # [1, Hkv, T, D]
        got_k, got_v = doc.read(layer, 0, WINDOW)  # [T, Hkv, D]
        np.testing.assert_allclose(got_k, keys[0].transpose(0, 1).numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(got_v, values[0].transpose(0, 1).numpy(), atol=1e-6, rtol=0)
        # unrotated: what RoPE makes of them differs, except at position 0
        rotated = apply_rope(keys[0], cos, sin).transpose(0, 1).numpy()
        np.testing.assert_allclose(rotated[0], got_k[0], atol=1e-6, rtol=0)
        assert np.abs(rotated[1:] - got_k[1:]).max() > 1e-2
        # the second window's keys were made with the first window in memory
        with torch.no_grad():
            alone = model(ids[None, WINDOW : 2 * WINDOW]).memory_kv[layer][0][0]
        later, _ = doc.read(layer, WINDOW, 2 * WINDOW)
        if layer != LAYERS[0]:  # the first memory layer's keys come before any memory is read
            assert np.abs(later - alone.transpose(0, 1).numpy()).max() > 1e-4
        else:
            np.testing.assert_allclose(later, alone.transpose(0, 1).numpy(), atol=1e-5, rtol=0)


# -- DeviceMirror on the CPU -----------------------------------------------------------------


@pytest.mark.parametrize("block", [DeviceMirror.BLOCK, 7])
def test_mirror_search_matches_the_store(stores, block) -> None:
    store = stores()
    doc = store.document("d")
    mirror = DeviceMirror(doc, "cpu")
    mirror.BLOCK = block  # 7: many blocks per search, merged top-k by top-k
    assert mirror.length(LAYERS[0]) == 0
    fill(doc, 150, seed=10, via=mirror)  # written through to the store
    queries = rand(6, HEADS, HEAD_DIM, seed=11)
    for layer in LAYERS:
        assert mirror.length(layer) == doc.length(layer) == 150
        for k in (1, 16, 150):
            want_s, want_i = doc.search(layer, queries, k)
            got_s, got_i = mirror.search(layer, queries, k)
            assert got_s.dtype == torch.float32 and got_i.dtype == torch.int64
            assert got_i.shape == (6, HEADS, k)
            np.testing.assert_array_equal(got_i.numpy(), want_i)
            np.testing.assert_allclose(got_s.numpy(), want_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mirror_dtype", [None, torch.float32])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_mirror_loads_every_head_and_chunk_as_the_store_reads_them(
    stores, dtype, mirror_dtype
) -> None:
    """Opening a mirror of a filled document copies the chunk files' rows straight in: the
    mirror's keys and values equal `Document.read`, head by head, across chunk boundaries."""
    doc = stores(dtype=dtype).document("d")
    fill(doc, 5 * CHUNK + 3, seed=30)
    mirror = DeviceMirror(doc, "cpu", dtype=mirror_dtype)
    for layer in LAYERS:
        keys, values = doc.read(layer)  # [T, Hkv, D] float32
        n = keys.shape[0]
        assert mirror.length(layer) == n == 5 * CHUNK + 3
        want = mirror_dtype or {"float32": torch.float32, "float16": torch.float16}.get(
            dtype, torch.bfloat16
        )
        assert mirror.keys[layer].dtype == want
        got_k = mirror.keys[layer][:, :n].float().transpose(0, 1).numpy()
        got_v = mirror.values[layer][:, :n].float().transpose(0, 1).numpy()
        np.testing.assert_array_equal(got_k, keys)
        np.testing.assert_array_equal(got_v, values)


def test_mirror_retrieve_matches_gather_and_the_store_retriever(stores) -> None:
    doc = stores().document("d")
    fill(doc, 90, seed=20)
    mirror = DeviceMirror(doc, "cpu")
    plain = StoreRetriever(doc)
    queries = rand(5, HEADS, HEAD_DIM, seed=21)
    for layer in LAYERS:
        scores, ids = doc.search(layer, queries, 16)
        _, values = doc.gather(layer, ids)  # [T, H, K, Dv]
        for source in (mirror, plain):
            mem = source.retrieve(layer, queries, 16)
            assert mem is not None and mem.per_query and mem.keys is None
            assert mem.values.shape == (1, HEADS, 5, 16, HEAD_DIM)
            assert bool(mem.mask.all())
            np.testing.assert_allclose(
                mem.values[0].permute(1, 0, 2, 3).numpy(), values, atol=1e-6, rtol=0
            )
            np.testing.assert_allclose(
                mem.scores[0].permute(1, 0, 2).numpy(), scores, rtol=1e-5, atol=1e-5
            )


def test_mirror_pads_when_memory_has_fewer_than_k_tokens(stores) -> None:
    doc = stores().document("d")
    mirror = DeviceMirror(doc, "cpu")
    queries = rand(3, HEADS, HEAD_DIM, seed=30)
    assert mirror.retrieve(LAYERS[0], queries, 8) is None  # nothing in memory yet
    s, i = mirror.search(LAYERS[0], queries, 8)
    assert (i == -1).all() and torch.isneginf(s).all()

    fill(doc, 5, seed=31, via=mirror)
    for layer in LAYERS:
        s, i = mirror.search(layer, queries, 8)
        assert (i[..., 5:] == -1).all() and torch.isneginf(s[..., 5:]).all()
        assert torch.isfinite(s[..., :5]).all()
        assert (i[..., :5].sort(-1).values == torch.arange(5)).all()  # every token, once
        want_s, want_i = doc.search(layer, queries, 8)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-5, atol=1e-5)
        mem = mirror.retrieve(layer, queries, 8)
        assert mem is not None
        assert mem.mask[0].permute(1, 0, 2).tolist() == (i >= 0).tolist()
        assert (mem.scores[~mem.mask] == 0).all()  # padding scores are masked, not -inf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mirror_opened_on_a_filled_store_loads_it(stores, dtype) -> None:
    doc = stores(dtype=dtype).document("d")
    fill(doc, 77, seed=40)
    mirror = DeviceMirror(doc, "cpu")
    assert mirror.dtype == {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    size = torch.tensor([], dtype=mirror.dtype).element_size()
    assert mirror.nbytes >= 77 * len(LAYERS) * KV_HEADS * 2 * HEAD_DIM * size
    queries = rand(4, HEADS, HEAD_DIM, seed=41)
    for layer in LAYERS:
        assert mirror.length(layer) == doc.length(layer) == 77
        keys, values = doc.read(layer)
        np.testing.assert_array_equal(
            mirror.keys[layer][:, :77].transpose(0, 1).float().numpy(), keys
        )
        np.testing.assert_array_equal(
            mirror.values[layer][:, :77].transpose(0, 1).float().numpy(), values
        )
        want_s, want_i = doc.search(layer, queries, 16)
        got_s, got_i = mirror.search(layer, queries, 16)
        np.testing.assert_array_equal(got_i.numpy(), want_i)
        np.testing.assert_allclose(got_s.numpy(), want_s, rtol=1e-5, atol=1e-5)
    # appends go on after what was loaded, in the store and the mirror
    mirror.append(
        LAYERS[0], rand(3, KV_HEADS, HEAD_DIM, seed=42), rand(3, KV_HEADS, HEAD_DIM, seed=43)
    )
    assert mirror.length(LAYERS[0]) == doc.length(LAYERS[0]) == 80


def test_mirror_of_a_document_not_yet_written(stores) -> None:
    store = stores()
    mirror = DeviceMirror(store.document("new"), "cpu")
    assert [mirror.length(layer) for layer in LAYERS] == [0, 0]
    assert mirror.nbytes > 0  # capacity reserved up front
    assert "new" not in store


def test_reader_with_cpu_mirror_matches_the_store_reader(model, stores) -> None:
    store = stores(model)
    ids = tokens(4 * WINDOW + 9, seed=50)
    query = tokens(WINDOW, seed=51)
    by_store = LongDocumentReader(model, store.document("a"), window=WINDOW)
    by_mirror = LongDocumentReader(model, store.document("b"), window=WINDOW, mirror="cpu")
    assert isinstance(by_mirror.source, DeviceMirror) and by_mirror.source.nbytes > 0
    want = by_store.read(ids)
    got = by_mirror.read(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert by_mirror.memory_tokens() == by_store.memory_tokens() == ids.numel()
    # the mirror wrote through to its store document
    for layer in LAYERS:
        np.testing.assert_allclose(
            store.document("b").read(layer)[0], store.document("a").read(layer)[0], atol=1e-5
        )
    torch.testing.assert_close(
        by_mirror.logits(query), by_store.logits(query), atol=1e-5, rtol=1e-5
    )
    assert by_mirror.generate(query[:5], 6) == by_store.generate(query[:5], 6)


# -- other store backends --------------------------------------------------------------------


def test_hnsw_backend_gives_the_exact_logits(model, stores) -> None:
    store = stores(model, hnsw={"span_tokens": 4 * CHUNK, "ef_search": 64})
    doc = store.document("d")
    ids = tokens(100, seed=60)
    LongDocumentReader(model, doc, window=WINDOW).read(ids)
    stats = store.wait_for_indexes()
    assert stats["errors"] == [] and stats["built"] > 0
    for layer in LAYERS:
        assert doc.indexed_tokens(layer) == 96  # 3 full spans of 32 answered through graphs
    query = tokens(WINDOW, seed=61)
    for k in (128, 16):  # 128 >= the memory: the same set as exact, whatever the graph
        exact = LongDocumentReader(model, doc, window=WINDOW, k=k).logits(query)
        hnsw = LongDocumentReader(model, doc, window=WINDOW, k=k, backend="hnsw", ef=256)
        torch.testing.assert_close(hnsw.logits(query), exact, atol=1e-4, rtol=1e-4)
    # reading with the hnsw backend, k covering the memory: the exact reader's losses
    a = LongDocumentReader(model, store.document("a"), window=WINDOW, k=128).read(ids)
    b = LongDocumentReader(
        model, store.document("b"), window=WINDOW, k=128, backend="hnsw", ef=256
    ).read(ids)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_faiss_backend_gives_the_exact_losses_and_logits(model, stores) -> None:
    pytest.importorskip("faiss")
    store = stores(model)
    ids = tokens(3 * WINDOW + 2, seed=70)
    query = tokens(9, seed=71)
    exact = LongDocumentReader(model, store.document("a"), window=WINDOW)
    faiss = LongDocumentReader(model, store.document("b"), window=WINDOW, backend="faiss")
    torch.testing.assert_close(faiss.read(ids), exact.read(ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(faiss.logits(query), exact.logits(query), atol=1e-5, rtol=1e-5)


# -- persistence across processes ------------------------------------------------------------

WRITER = """
import json, sys
import torch
from fot_mem.torch import FotConfig, FotForCausalLM
from fot_mem.torch.reader import LongDocumentReader, create_store

work = sys.argv[1]
config = json.load(open(f"{work}/config.json"))
config["memory_layers"] = tuple(config["memory_layers"])
model = FotForCausalLM(FotConfig(**config))
model.load_state_dict(torch.load(f"{work}/weights.pt"))
model.eval()
data = torch.load(f"{work}/data.pt")
store = create_store(f"{work}/store", model, chunk_tokens=data["chunk"])
reader = LongDocumentReader(model, store.document("book"), window=data["window"])
losses = reader.read(data["first"])
logits = reader.logits(data["query"])
torch.save({"losses": losses, "logits": logits, "memory": reader.memory_tokens()},
           f"{work}/process1.pt")
print("written", reader.memory_tokens())
store.close()
"""


def test_memory_persists_across_processes(model, tmp_path, run_py) -> None:
    n1, n2 = 3 * WINDOW, 2 * WINDOW + 5  # n1 whole windows: the windows line up when continued
    ids = tokens(n1 + n2, seed=80)
    query = tokens(11, seed=81)
    config = dataclasses.asdict(CFG)
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save(
        {"first": ids[:n1], "query": query, "window": WINDOW, "chunk": CHUNK},
        tmp_path / "data.pt",
    )
    proc = run_py(WRITER, str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"written {n1}" in proc.stdout
    first = torch.load(tmp_path / "process1.pt")
    assert first["memory"] == n1

    # read-only, in this process: the same memory, the same logits
    with MemoryStore.open(tmp_path / "store", readonly=True) as ro:
        assert ro.documents() == ["book"]
        reader = LongDocumentReader(model, ro.document("book"), window=WINDOW)
        assert reader.memory_tokens() == n1
        torch.testing.assert_close(reader.logits(query), first["logits"], atol=1e-6, rtol=1e-6)
        mirrored = LongDocumentReader(model, ro.document("book"), window=WINDOW, mirror="cpu")
        assert mirrored.memory_tokens() == n1
        torch.testing.assert_close(mirrored.logits(query), first["logits"], atol=1e-5, rtol=1e-5)

    # read-write: the same logits, and reading on appends after what process 1 read
    with MemoryStore.open(tmp_path / "store") as rw:
        doc = rw.document("book")
        reader = LongDocumentReader(model, doc, window=WINDOW)
        torch.testing.assert_close(reader.logits(query), first["logits"], atol=1e-6, rtol=1e-6)
        more = reader.read(ids[n1:])
        assert reader.memory_tokens() == n1 + n2
        assert [doc.length(layer) for layer in LAYERS] == [n1 + n2] * len(LAYERS)
        head = {layer: doc.read(layer, 0, n1)[0] for layer in LAYERS}

    # the same as one process reading the whole document in one go
    with MemoryStore.create(
        tmp_path / "whole", layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, chunk_tokens=CHUNK
    ) as whole:
        doc = whole.document("book")
        all_losses = LongDocumentReader(model, doc, window=WINDOW).read(ids)
        for layer in LAYERS:
            np.testing.assert_allclose(head[layer], doc.read(layer, 0, n1)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(first["losses"], all_losses[: n1 - 1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(more, all_losses[n1:], atol=1e-5, rtol=1e-5)


# -- generate --------------------------------------------------------------------------------


def brute_force_greedy(reader: LongDocumentReader, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without a local cache: the whole window re-read for every token."""
    new: list[int] = []
    while len(new) < steps and len(prompt) + len(new) <= reader.window:
        new.append(int(reader.logits(prompt + new)[-1].argmax()))
    return new


@pytest.fixture
def read_reader(model, stores) -> LongDocumentReader:
    reader = LongDocumentReader(model, stores(model).document("d"), window=WINDOW)
    reader.read(tokens(2 * WINDOW + 7, seed=90))
    return reader


def test_generate_is_greedy_and_matches_a_loop_without_cache(read_reader) -> None:
    reader = read_reader
    before = snapshot(reader.document)
    prompt = tokens(5, seed=91).tolist()
    out = reader.generate(prompt, 7)
    assert len(out) == 7 and all(type(t) is int and 0 <= t < CFG.vocab_size for t in out)
    assert len(set(out)) > 1  # not a degenerate model that repeats one token
    assert reader.generate(torch.tensor(prompt), 7) == out  # deterministic
    assert out == brute_force_greedy(reader, prompt, 7)
    assert reader.generate(prompt, 3) == out[:3]
    assert reader.generate(prompt, 0) == []
    # memory is read, not written
    assert reader.memory_tokens() == 2 * WINDOW + 7
    assert_same_memory(snapshot(reader.document), before)
    # and it is used: an empty memory gives other logits for the prompt
    with torch.no_grad():
        alone = reader.model(torch.tensor([prompt])).logits[0]
    assert (reader.logits(prompt) - alone).abs().max() > 1e-3


def test_generate_stops_when_the_window_is_full(read_reader) -> None:
    reader = read_reader
    prompt = tokens(WINDOW - 4, seed=92).tolist()
    out = reader.generate(prompt, 100)
    # the window takes the prompt and 4 new tokens; the 5th is predicted from the full window
    assert len(out) == 5
    assert out == brute_force_greedy(reader, prompt, 100)
    assert len(reader.generate(tokens(WINDOW - 1, seed=93), 100)) == 2


def test_generate_stops_at_a_stop_token(read_reader) -> None:
    reader = read_reader
    prompt = tokens(4, seed=94).tolist()
    out = reader.generate(prompt, 10)
    i = next(i for i in range(1, len(out)) if out[i] not in out[:i])
    assert reader.generate(prompt, 10, stop=[out[i], 100_000]) == out[: i + 1]
    assert reader.generate(prompt, 10, stop=(out[0],)) == out[:1]
    unused = next(t for t in range(CFG.vocab_size) if t not in out)
    assert reader.generate(prompt, 10, stop=[unused]) == out


def test_generate_sampling_is_reproducible_with_a_generator(read_reader) -> None:
    reader = read_reader
    prompt = tokens(3, seed=95).tolist()
    a = reader.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = reader.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert a == b and len(a) == 8 and all(0 <= t < CFG.vocab_size for t in a)
    # a near-zero temperature samples the argmax
    cold = reader.generate(prompt, 8, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    assert cold == reader.generate(prompt, 8)


# -- errors ----------------------------------------------------------------------------------


def test_store_must_fit_the_model(model, stores, tmp_path) -> None:
    with pytest.raises(InvalidValueError, match="layers"):
        LongDocumentReader(model, stores(layers=[1]).document("d"))
    with pytest.raises(InvalidValueError, match="layers"):
        LongDocumentReader(model, stores(layers=[0, 2]).document("d"))
    with pytest.raises(ShapeError, match="kv_heads"):
        LongDocumentReader(model, stores(kv_heads=KV_HEADS * 2).document("d"))
    with pytest.raises(ShapeError, match="head_dim"):
        LongDocumentReader(model, stores(head_dim=HEAD_DIM // 2).document("d"))
    plain = make_model(config=CFG.replace(memory_layers=()))
    with pytest.raises(InvalidValueError, match="memory_layers"):
        create_store(tmp_path / "none", plain)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "options",
    [
        {"window": CFG.max_position_embeddings + 1},
        {"window": 0},
        {"window": -3},
        {"k": 0},
        {"k": -1},
    ],
)
def test_bad_reader_options(model, stores, options) -> None:
    with pytest.raises(InvalidValueError):
        LongDocumentReader(model, stores(model).document("d"), **options)


def test_window_defaults_to_the_model_positions(model, stores) -> None:
    reader = LongDocumentReader(model, stores(model).document("d"))
    assert reader.window == CFG.max_position_embeddings and reader.k == CFG.memory_k
    assert (
        LongDocumentReader(model, reader.document, window=CFG.max_position_embeddings).window == 64
    )


def test_bad_tokens_are_refused_before_anything_is_written(model, stores) -> None:
    reader = LongDocumentReader(model, stores(model).document("d"), window=WINDOW)
    for bad in ([1, CFG.vocab_size], [-1, 3], torch.tensor([5, 2000])):
        for call in (reader.read, reader.logits, lambda t: reader.generate(t, 2)):
            with pytest.raises(InvalidValueError, match="token ids"):
                call(bad)
    for call in (reader.read, reader.logits, lambda t: reader.generate(t, 2)):
        with pytest.raises(ShapeError, match="1-d"):
            call([[1, 2], [3, 4]])
    assert reader.memory_tokens() == 0 and not reader.document.exists
    assert reader.stats["windows"] == 0


def test_logits_and_generate_take_one_window(model, stores) -> None:
    reader = LongDocumentReader(model, stores(model).document("d"), window=WINDOW)
    assert reader.logits(tokens(WINDOW)).shape == (WINDOW, CFG.vocab_size)
    with pytest.raises(InvalidValueError, match="logits"):
        reader.logits(tokens(WINDOW + 1))
    with pytest.raises(InvalidValueError, match="logits"):
        reader.logits([])
    with pytest.raises(InvalidValueError, match="prompt"):
        reader.generate([], 3)
    with pytest.raises(InvalidValueError, match="prompt"):
        reader.generate(tokens(WINDOW), 3)
    assert len(reader.generate(tokens(WINDOW - 1), 3)) == 2


def test_mirror_refuses_a_layer_it_does_not_keep(stores) -> None:
    mirror = DeviceMirror(stores().document("d"), "cpu")
    with pytest.raises(UnknownLayerError, match="layer"):
        mirror.search(0, rand(2, HEADS, HEAD_DIM, seed=0), 4)


# -- CUDA ------------------------------------------------------------------------------------


@cuda
def test_cuda_mirror_search_matches_the_store(stores) -> None:
    doc = stores().document("d")
    fill(doc, 300, seed=100)
    mirror = DeviceMirror(doc, "cuda")
    assert mirror.keys[LAYERS[0]].device.type == "cuda"
    fill(doc, 50, seed=101, via=mirror)  # appends after loading, through the mirror
    queries = rand(7, HEADS, HEAD_DIM, seed=102)
    for layer in LAYERS:
        assert mirror.length(layer) == doc.length(layer) == 350
        want_s, want_i = doc.search(layer, queries, 16)
        got_s, got_i = mirror.search(layer, queries.cuda(), 16)
        assert got_i.device.type == "cuda"
        np.testing.assert_array_equal(got_i.cpu().numpy(), want_i)
        np.testing.assert_allclose(got_s.cpu().numpy(), want_s, rtol=1e-4, atol=1e-4)
        mem = mirror.retrieve(layer, queries.cuda(), 16)
        assert mem is not None and mem.values.device.type == "cuda"
        _, values = doc.gather(layer, want_i)
        np.testing.assert_allclose(
            mem.values[0].permute(1, 0, 2, 3).cpu().numpy(), values, atol=1e-6, rtol=0
        )


@cuda
def test_cuda_bfloat16_reader_with_mirror_is_close_to_the_cpu_reader(model, stores) -> None:
    store = stores(model)
    ids = tokens(4 * WINDOW + 3, seed=110)
    query = tokens(WINDOW, seed=111)
    cpu = LongDocumentReader(model, store.document("cpu"), window=WINDOW)
    want = cpu.read(ids)
    gpu_model = copy.deepcopy(model).to("cuda", torch.bfloat16)
    gpu = LongDocumentReader(gpu_model, store.document("gpu"), window=WINDOW, mirror="cuda")
    assert gpu.device.type == "cuda"
    got = gpu.read(ids)
    assert got.device.type == "cpu" and got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
    assert (got - want).abs().mean() < 0.03
    assert gpu.memory_tokens() == ids.numel() == store.document("gpu").length(LAYERS[-1])
    # bfloat16 logits (magnitude ~5) are off by ~0.02 on average, a few by 0.2 to 0.35
    diff = (gpu.logits(query).float().cpu() - cpu.logits(query)).abs()
    assert diff.mean() < 0.05 and diff.max() < 0.6
    # the same model on cuda reading from the CPU store
    by_store = LongDocumentReader(gpu_model, store.document("gpu2"), window=WINDOW)
    assert isinstance(by_store.source, StoreRetriever)
    assert not isinstance(by_store.source, DeviceMirror)
    torch.testing.assert_close(by_store.read(ids), want, atol=0.05, rtol=0.02)
    assert store.document("gpu2").length(LAYERS[0]) == ids.numel()
    assert len(by_store.generate(query[:4], 3)) == 3


@cuda
def test_cuda_float32_reader_matches_the_cpu_reader(model, stores) -> None:
    store = stores(model)
    ids = tokens(3 * WINDOW + 1, seed=120)
    want = LongDocumentReader(model, store.document("cpu"), window=WINDOW).read(ids)
    gpu_model = copy.deepcopy(model).to("cuda")
    for name, mirror in (("mirror", "cuda"), ("store", None)):
        reader = LongDocumentReader(gpu_model, store.document(name), window=WINDOW, mirror=mirror)
        torch.testing.assert_close(reader.read(ids), want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "n, group, k", [(1000, 128, 16), (300, 128, 64), (50, 128, 64), (257, 16, 5)]
)
def test_group_max_preselection_equals_topk(n: int, group: int, k: int) -> None:
    from fot_mem.torch.retrieval import _block_topk

    scores = torch.randn(2, 7, n, generator=torch.Generator().manual_seed(n))
    got_s, got_i = _block_topk(scores, k, group)
    want_s, want_i = scores.topk(min(k, n), dim=-1)
    torch.testing.assert_close(got_s, want_s, rtol=0, atol=0)
    assert torch.equal(got_i.sort(-1).values, want_i.sort(-1).values)
    assert torch.equal(scores.gather(-1, got_i), got_s)


def test_reader_refuses_a_bad_backend_or_ef_before_writing(model, stores) -> None:
    store = stores(model)
    for options in ({"backend": "nope"}, {"ef": -3}, {"ef": 2.5}):
        with pytest.raises(InvalidValueError):
            LongDocumentReader(model, store.document("d"), window=WINDOW, **options)
    assert "d" not in store  # nothing was appended


def test_reader_refuses_a_store_with_another_value_dim(model, stores) -> None:
    store = stores(value_dim=HEAD_DIM * 2)
    with pytest.raises(ShapeError, match="value_dim"):
        LongDocumentReader(model, store.document("d"), window=WINDOW)


def test_reader_refuses_float_token_ids_and_a_float_window(model, stores) -> None:
    doc = stores(model).document("d")
    with pytest.raises(InvalidValueError, match="window"):
        LongDocumentReader(model, doc, window=8.0)  # type: ignore[arg-type]
    reader = LongDocumentReader(model, doc, window=WINDOW)
    with pytest.raises(fot_mem.DtypeError):
        reader.read(torch.tensor([1.5, 2.0]))
    assert reader.read([]).numel() == 0


def test_mirror_refuses_bad_queries_k_and_device(stores) -> None:
    doc = stores().document("d")
    mirror = DeviceMirror(doc, "cpu")
    fill(doc, 20, seed=3, via=mirror)
    layer = LAYERS[0]
    with pytest.raises(ShapeError):
        mirror.search(layer, rand(2, HEADS + 1, HEAD_DIM, seed=0), 4)
    with pytest.raises(ShapeError):
        mirror.search(layer, rand(2, HEADS, HEAD_DIM + 1, seed=0), 4)
    with pytest.raises(ShapeError):
        mirror.search(layer, rand(HEADS, HEAD_DIM, seed=0), 4)
    with pytest.raises(InvalidValueError, match="k must"):
        mirror.search(layer, rand(2, HEADS, HEAD_DIM, seed=0), 0)
    scores, ids = mirror.search(layer, rand(0, HEADS, HEAD_DIM, seed=0), 4)
    assert scores.shape == ids.shape == (0, HEADS, 4)
    with pytest.raises(InvalidValueError, match="device"):
        DeviceMirror(doc, "gpu0")
    with pytest.raises(fot_mem.DtypeError):
        DeviceMirror(doc, "cpu", dtype=torch.int8)
    with pytest.raises(UnknownLayerError):
        mirror.length(0)
