"""Perplexity against memory size (`fot_mem.eval.perplexity`) on the CPU: a tiny random model
with memory layers on tiny byte-level documents. The protocol is checked against independent
readings: a memory as large as the prefix gives the losses of reading the document straight
through, M = 0 those of the span read alone; the memory documents hold copies of the right rows
(distractors first, then the document's last M tokens); hnsw agrees with exact; bad options
raise; the CLI writes JSON and PNG for a trained checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from fot_mem import FotMemError, InvalidValueError, MemoryStore  # noqa: E402
from fot_mem.cli.eval import perplexity as ppl_cli  # noqa: E402
from fot_mem.data.shards import write_shards  # noqa: E402
from fot_mem.eval import perplexity as ppl  # noqa: E402
from fot_mem.eval.common import documents  # noqa: E402
from fot_mem.torch import FotConfig, FotForCausalLM  # noqa: E402
from fot_mem.torch.reader import LongDocumentReader, create_store  # noqa: E402
from fot_mem.train.loop import Trainer  # noqa: E402
from tiny import tiny_config  # noqa: E402

CFG = FotConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    memory_layers=(1, 2),
    max_position_embeddings=16,
    memory_k=8,
    tie_word_embeddings=False,
)
LAYERS = CFG.memory_layers
WINDOW = 8
SIZES = [0, 16, 48]  # the largest is the prefix: 6 whole windows
SPAN = 24  # 3 windows
OPTIONS: dict[str, Any] = dict(
    window=WINDOW, span=SPAN, store_dtype="float32", progress=False, store_options={}
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls: one thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def text(i: int, n: int) -> str:
    """Document i: n bytes of varied code-like lines (its own seed)."""
    rng = np.random.default_rng(i)
    words = ["def", "return", "x", "y", "self", "(", ")", ":", "=", "+", "if", "for", "in", "#"]
    out = []
    while sum(map(len, out)) < n:
        out.append(" ".join(rng.choice(words, size=rng.integers(2, 8))) + "\n")
    return "".join(out)[:n]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """val: four documents of 100-300 bytes and one of 40 (too short for prefix + span);
    train: enough for a 2-step training run."""
    out = tmp_path_factory.mktemp("data")
    val = {"a": 100, "b": 300, "short": 40, "c": 150, "d": 120}
    docs = [(k, text(i, n)) for i, (k, n) in enumerate(val.items())]
    docs += [(f"t{i}", text(100 + i, 400)) for i in range(8)]
    write_shards(docs, out, "bytes", lambda d: "val" if d in val else "train", progress=False)
    return str(out)


@pytest.fixture(scope="module")
def docs(data: str) -> list[tuple[str, np.ndarray]]:
    return documents(data, "val")


@pytest.fixture(scope="module")
def model() -> FotForCausalLM:
    """Random weights of std 0.15 (not the 0.02 init): logits spread and memory matters."""
    torch.manual_seed(0)
    m = FotForCausalLM(CFG)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return m.eval()


def ids(tokens: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(tokens, dtype=np.int64))


def fresh_read(model: FotForCausalLM, path: Path, tokens: np.ndarray) -> tuple[Any, torch.Tensor]:
    """An independent reading: a new store, one document read straight through."""
    store = create_store(path, model, dtype="float32")
    doc = store.document("x")
    losses = LongDocumentReader(model, doc, window=WINDOW, k=CFG.memory_k).read(ids(tokens))
    return store, losses


def by_memory(result: dict[str, Any], doc: int = 0) -> dict[int, dict[str, Any]]:
    return {r["memory"]: r for r in result["documents"][doc]["by_memory"]}


def test_whole_prefix_memory_reads_straight_through_and_zero_reads_the_span_alone(
    model: FotForCausalLM, docs: list, tmp_path: Path
) -> None:
    result = ppl.perplexity(model, docs, SIZES, **OPTIONS, max_docs=2)
    assert [d["id"] for d in result["documents"]] == ["a", "b"]
    assert result["skipped"] == [{"id": "short", "tokens": 40}]
    p = SIZES[-1]
    for j, (_, tokens) in enumerate(docs[:2]):  # a, b
        rows = by_memory(result, j)
        # M = the whole prefix: what a reader gives reading prefix + span straight through
        store, whole = fresh_read(model, tmp_path / f"whole{j}", tokens[: p + SPAN])
        store.close()
        assert rows[p]["tokens"] == SPAN - 1
        assert rows[p]["loss"] == pytest.approx(float(whole[p:].double().mean()), abs=1e-6)
        # M = 0: the span read alone, over an empty memory
        store, alone = fresh_read(model, tmp_path / f"alone{j}", tokens[p : p + SPAN])
        store.close()
        assert rows[0]["loss"] == pytest.approx(float(alone.double().mean()), abs=1e-6)
        assert rows[0]["perplexity"] == pytest.approx(math.exp(rows[0]["loss"]))
        assert rows[0]["loss"] != pytest.approx(rows[p]["loss"], abs=1e-4)  # memory matters
    # the totals are over every scored token of every document
    total = result["by_memory"][-1]
    per_doc = [by_memory(result, j)[p] for j in range(2)]
    assert total["tokens"] == 2 * (SPAN - 1)
    mean = sum(r["loss"] * r["tokens"] for r in per_doc) / total["tokens"]
    assert total["loss"] == pytest.approx(mean)
    assert json.loads(json.dumps(result)) == result  # JSON-able as it is


def test_span_losses_per_token(model: FotForCausalLM, docs: list, tmp_path: Path) -> None:
    """Token by token (not only means): each memory size against an independent reading."""
    tokens = docs[1][1]
    p = SIZES[-1]
    setup = ppl._Setup(model, WINDOW, CFG.memory_k, "exact", None, None)
    prefix_store, whole = fresh_read(model, tmp_path / "p", tokens[: p + SPAN])
    # the prefix document holds the span too now: a source with the prefix only
    source = create_store(tmp_path / "src", model, dtype="float32").document("s")
    ppl.copy_memory(prefix_store.document("x"), source, 0, p)
    target = create_store(tmp_path / "t", model, dtype="float32")
    span = ids(tokens[p : p + SPAN])
    out = ppl.span_losses(setup, source, target, "d", span, [0, 8, p])
    torch.testing.assert_close(out[p]["losses"], whole[p:], rtol=0, atol=1e-6)
    # M = 8: a memory document made by hand from the prefix's last 8 tokens
    hand = create_store(tmp_path / "h", model, dtype="float32").document("h")
    for layer in LAYERS:
        hand.append(layer, *source.read(layer, p - 8, p))
    expected = LongDocumentReader(model, hand, window=WINDOW).read(span)
    torch.testing.assert_close(out[8]["losses"], expected, rtol=0, atol=1e-6)
    assert "d-m8" not in target  # not kept


def test_memory_documents_hold_copies_of_the_last_rows(
    model: FotForCausalLM, docs: list, tmp_path: Path
) -> None:
    stores = tmp_path / "stores"
    result = ppl.perplexity(
        model, docs[:2], SIZES, **{**OPTIONS, "store_dtype": "bfloat16"}, stores=stores
    )
    assert result["stores"] == str(stores)
    p = SIZES[-1]
    with (
        MemoryStore.open(stores / "prefix", readonly=True) as prefix,
        MemoryStore.open(stores / "memory", readonly=True) as memory,
    ):
        assert memory.dtype == "bfloat16"
        for layer in LAYERS:
            whole_k, whole_v = prefix.document("doc1").read(layer)
            assert whole_k.shape[0] == p
            for m in SIZES:
                doc = memory.document(f"doc1-m{m}")
                assert doc.length(layer) == m + SPAN  # the copy, then the span as it was read
                k, v = doc.read(layer, 0, m)
                np.testing.assert_array_equal(k, whole_k[p - m :])
                np.testing.assert_array_equal(v, whole_v[p - m :])
    # the prefix keys themselves are what a fresh reader of the prefix stores
    store, _ = fresh_read(model, tmp_path / "fresh", docs[1][1][:p])
    with MemoryStore.open(stores / "prefix", readonly=True) as prefix:
        for layer in LAYERS:
            fresh = store.document("x").read(layer)[0]
            kept = prefix.document("doc1").read(layer)[0]
            np.testing.assert_allclose(kept, fresh, rtol=1e-2, atol=1e-2)  # bfloat16
    store.close()


def test_distractors_come_first_and_change_the_losses(
    model: FotForCausalLM, docs: list, tmp_path: Path
) -> None:
    own = docs[:2]
    distractors = [docs[3], docs[0]]  # "c", and "a": left out of a's own memory
    stores = tmp_path / "stores"
    base = ppl.perplexity(model, own, SIZES, **OPTIONS)
    multi = ppl.perplexity(
        model, own, SIZES, **OPTIONS, distractors=distractors, distractor_tokens=20, stores=stores
    )
    assert multi["settings"]["distractors"] == ["c", "a"]
    assert multi["settings"]["distractor_tokens"] == [20, 20]
    assert [r["memory_tokens"] for r in multi["by_memory"]] == [m + 40 for m in SIZES]
    assert [d["distractors"] for d in multi["documents"]] == [1, 2]
    for m in SIZES:  # M = 0 too: the memory holds the distractors
        assert by_memory(multi, 1)[m]["loss"] != pytest.approx(by_memory(base, 1)[m]["loss"])
    p = SIZES[-1]
    with (
        MemoryStore.open(stores / "prefix", readonly=True) as prefix,
        MemoryStore.open(stores / "memory", readonly=True) as memory,
    ):
        for layer in LAYERS:
            first, second = (prefix.document(f"distractor{j}").read(layer)[0] for j in (0, 1))
            own_keys = prefix.document("doc1").read(layer)[0]
            keys = memory.document("doc1-m16").read(layer)[0]
            np.testing.assert_array_equal(keys[:20], first)
            np.testing.assert_array_equal(keys[20:40], second)
            np.testing.assert_array_equal(keys[40:56], own_keys[p - 16 :])
            keys_a = memory.document("doc0-m16").read(layer)[0]  # a: only c before its own
            np.testing.assert_array_equal(keys_a[:20], first)
            np.testing.assert_array_equal(
                keys_a[20:36], prefix.document("doc0").read(layer)[0][p - 16 :]
            )
        # a distractor's keys are its first 20 tokens read on their own
        store, _ = fresh_read(model, tmp_path / "fresh", docs[3][1][:20])
        for layer in LAYERS:
            np.testing.assert_array_equal(
                store.document("x").read(layer)[0],
                prefix.document("distractor0").read(layer)[0],
            )
        store.close()


def test_hnsw_runs_and_agrees_with_exact(model: FotForCausalLM, docs: list) -> None:
    # chunks of 8 tokens, graphs over spans of 16: the larger memories are searched by graphs
    options = {**OPTIONS, "store_options": {"chunk_tokens": 8, "hnsw": {"span_tokens": 16}}}
    exact = ppl.perplexity(model, docs[1:2], SIZES, **options)
    hnsw = ppl.perplexity(model, docs[1:2], SIZES, **options, backend="hnsw", ef=64)
    assert hnsw["settings"]["backend"] == "hnsw"
    rows = by_memory(hnsw)
    assert [rows[m]["indexed_tokens"] for m in SIZES] == [0, 16, 48]
    for a, b in zip(exact["by_memory"], hnsw["by_memory"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)  # tiny graphs, ef 64: exact


def test_bad_options_raise(model: FotForCausalLM, docs: list) -> None:
    bad: list[dict[str, Any]] = [
        {"memory": [0, 16, 16]},
        {"memory": [16, 0]},
        {"memory": [-1, 16]},
        {"memory": []},
        {"memory": [0, 1.5]},
        {"span": 0},
        {"span": 1},
        {"memory": [0, 1000]},  # no document has 1000 + span tokens
        {"backend": "nope"},
        {"window": 17},  # beyond max_position_embeddings
        {"k": 0},
        {"ef": 0},
        {"distractor_tokens": 0, "distractors": docs[:1]},
    ]
    for change in bad:
        args = {**OPTIONS, "memory": SIZES, **change}
        with pytest.raises(FotMemError):
            ppl.perplexity(model, docs, **args)
    with pytest.raises(InvalidValueError, match="memory sizes must be strictly ascending"):
        ppl.perplexity(model, docs, [0, 16, 8], **OPTIONS)
    with pytest.raises(InvalidValueError, match="no documents"):
        ppl.perplexity(model, [], SIZES, **OPTIONS)
    # limit_memory drops what no document fits and says so
    result = ppl.perplexity(model, docs, [0, 16, 1000], **OPTIONS, limit_memory=True, max_docs=1)
    assert result["memory_dropped"] == [1000]
    assert result["settings"]["memory"] == [0, 16]
    assert result["settings"]["prefix_tokens"] == 16
    assert [d["id"] for d in result["documents"]] == ["a"]


def test_plot_draws_several_results(model: FotForCausalLM, docs: list, tmp_path: Path) -> None:
    result = ppl.perplexity(model, docs[:1], SIZES, **OPTIONS)
    png = ppl.plot({"fot": result, "control": result}, tmp_path / "plot" / "ppl.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = ppl.plot(result, tmp_path / "one.png")
    assert single.stat().st_size > 1000


def test_cli_on_a_trained_checkpoint(data: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(data, run, eval_d="1,2", warmup=1, eval_every=2, checkpoint_every=2)
    Trainer(cfg).run(progress=False)
    out = tmp_path / "out"
    argv = [
        "--model", str(run), "--name", "tiny", "--data", data, "--memory", "0,16,32",
        "--span", "16", "--window", "8", "--docs", "2", "--multi-doc", "1",
        "--distractor-tokens", "24", "--device", "cpu", "--quiet",
        "--json", str(out / "r.json"), "--png", str(out / "r.png"),
    ]  # fmt: skip
    ppl_cli.main(argv)
    result = json.loads((out / "r.json").read_text())
    assert result["name"] == "tiny" and result["settings"]["memory"] == [0, 16, 32]
    assert [d["id"] for d in result["documents"]] == ["a", "b"]
    assert result["settings"]["distractors"] == ["short"]  # the first document not evaluated
    assert all(r["tokens"] == 2 * 15 and r["perplexity"] > 1 for r in result["by_memory"])
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
    # --only: the documents by id prefix; distractors still come from the whole split
    only = ppl_cli.main([*argv[:-4], "--only", "b,zz"])
    assert [d["id"] for d in only["documents"]] == ["b"] and only["settings"]["only"] == ["b", "zz"]
    assert only["settings"]["distractors"] == ["a"]
    with pytest.raises(InvalidValueError, match="no document id of the split starts with 'zz'"):
        ppl_cli.main([*argv[:-4], "--only", "zz"])
    # the module's entry point: saved results plotted together
    done = subprocess.run(
        [sys.executable, "-m", "fot_mem", "eval", "perplexity", "--plot", str(out / "r.json"),
         str(out / "r.json"), "--png", str(out / "both.png")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "both.png").read_bytes()[:4] == b"\x89PNG"


def test_shared_prefixes_are_read_once_and_give_the_same_losses(
    model: FotForCausalLM, docs: list
) -> None:
    plain = ppl.perplexity(model, docs[:2], SIZES, **OPTIONS)
    multi = ppl.perplexity(model, docs[:2], SIZES, **OPTIONS, distractors=[docs[3]])
    ppl.share_prefixes(True)
    try:
        first = ppl.perplexity(model, docs[:2], SIZES, **OPTIONS)
        again = ppl.perplexity(model, docs[:2], SIZES, **OPTIONS, distractors=[docs[3]])
        other = ppl.perplexity(model, docs[:2], SIZES, **{**OPTIONS, "window": 4})
        assert len(ppl._PREFIXES) == 2  # a store per (model, window, ...)
    finally:
        ppl.share_prefixes(False)
    assert not ppl._PREFIXES and ppl._PREFIX_DIR is None
    assert [d["prefix_reused"] for d in first["documents"]] == [False, False]
    assert [d["prefix_reused"] for d in again["documents"]] == [True, True]
    assert [d["prefix_reused"] for d in other["documents"]] == [False, False]
    for a, b in ((plain, first), (multi, again)):
        for x, y in zip(a["by_memory"], b["by_memory"]):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-12)
