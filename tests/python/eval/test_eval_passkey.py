"""Passkey retrieval (`fot_mem.eval.passkey`): prompts of exact length with the key at its depth,
answer parsing, reading prompts with shared prefixes (the same memory as reading each whole,
each shared window read once), scoring, the errors, and the CLI on a tiny trained checkpoint.
Byte tokenizer and tiny models on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fot_mem import InvalidValueError  # noqa: E402
from fot_mem.cli.eval import passkey as pk_cli  # noqa: E402
from fot_mem.eval import passkey as pk  # noqa: E402
from fot_mem.torch import FotConfig, FotForCausalLM  # noqa: E402
from fot_mem.torch.reader import LongDocumentReader, create_store  # noqa: E402

TOK = pk.BytesTokenizer()
WINDOW, TAIL = 64, 48  # the question is 38 bytes
CFG = FotConfig(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    memory_layers=(1,),
    max_position_embeddings=WINDOW,
    memory_k=8,
    tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def model() -> FotForCausalLM:
    """Random weights of std 0.15: spread logits, so that memory changes the answers."""
    model = FotForCausalLM(CFG)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model.eval()


def text(tokens: np.ndarray) -> str:
    return TOK.decode(tokens.tolist())


# -- prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0.0, 0.37, 0.5, 1.0])
def test_prompt_has_exact_length_and_the_key_at_its_depth(depth: float) -> None:
    filler = pk.repeat_filler(TOK, 1000)
    p = pk.build_prompt(TOK, 500, depth, 12345, filler)
    key_sentence = pk.KEY_SENTENCE.format(key=12345)
    # bytes: one token per character, so the prompt is known as a string
    n = 500 - len(pk.INSTRUCTION) - len(key_sentence) - len(pk.QUESTION)
    a = round(depth * n)
    stream = pk.FILLER_SENTENCE * 20
    expected = pk.INSTRUCTION + stream[:a] + key_sentence + stream[a:n] + pk.QUESTION
    assert len(p.tokens) == 500 and text(p.tokens) == expected
    assert text(p.tokens[p.key_start : p.key_end]) == key_sentence
    assert p.key_start == len(pk.INSTRUCTION) + a
    assert abs((p.key_start - len(pk.INSTRUCTION)) / n - depth) <= 0.5 / n
    assert text(p.tokens[p.question_start :]) == pk.QUESTION


def test_cases_are_reproducible_by_seed() -> None:
    def keys(seed: int) -> list[int]:
        cases = pk.make_cases(TOK, [300, 400], [0.1, 0.9], 3, seed=seed)
        return [c.prompt.key for c in cases]

    a, b = keys(0), keys(1)
    assert a == keys(0) and a != b
    assert len(set(a)) == len(a)  # each (length, depth, trial) draws its own key
    assert all(10_000 <= k <= 99_999 for k in a + b)
    cases = pk.make_cases(TOK, [300, 400], [0.1, 0.9], 3, seed=0)
    assert [(c.length, c.depth, c.trial) for c in cases[:4]] == [
        (300, 0.1, 0),
        (300, 0.9, 0),
        (400, 0.1, 0),
        (400, 0.9, 0),
    ]
    assert all(len(c.prompt.tokens) == c.length for c in cases)
    three = pk.make_cases(TOK, [300], [0.5], 1, digits=3)[0]
    assert 100 <= three.prompt.key <= 999


def test_data_filler_is_a_piece_of_a_document_drawn_per_trial() -> None:
    docs = [
        TOK.encode("".join(f"<{d}:{i}>" for i in range(200))).astype(np.int64) for d in range(3)
    ]
    cases = pk.make_cases(TOK, [300, 500], [0.5], 4, filler=docs, seed=2)
    fillers = []
    for c in cases:
        p = c.prompt
        before = text(p.tokens[len(pk.INSTRUCTION) : p.key_start])
        after = text(p.tokens[p.key_end : p.question_start])
        assert any(before + after in text(d) for d in docs)  # contiguous, from one document
        fillers.append((c.trial, c.length, before + after))
    by_trial = {t: [f for tt, _, f in fillers if tt == t] for t in range(4)}
    for short, long in by_trial.values():  # one stream per trial; each length takes its start
        assert long.startswith(short)
    assert len({fs[1] for fs in by_trial.values()}) == 4  # trials draw different pieces
    again = pk.make_cases(TOK, [300, 500], [0.5], 4, filler=docs, seed=2)
    assert all((a.prompt.tokens == b.prompt.tokens).all() for a, b in zip(cases, again))


def test_data_filler_joins_documents_when_none_is_long_enough() -> None:
    docs = [np.arange(10, 20), np.arange(30, 35)]
    out = pk.data_filler(docs, 40, np.random.default_rng(0), np.array([0]))
    assert len(out) == 40
    cycle = np.concatenate([docs[0], [0], docs[1], [0]])
    other = np.concatenate([docs[1], [0], docs[0], [0]])
    assert any((out == np.tile(c, 3)[:40]).all() for c in (cycle, other))
    with pytest.raises(InvalidValueError):
        pk.data_filler([np.zeros(0, np.int64)], 5, np.random.default_rng(0), np.array([0]))


@pytest.mark.parametrize(
    ("answer", "number"),
    [("12345.", 12345), (" 12345", 12345), ("1234 5", 1234), ("is 0042!", 42), ("none", None)],
)
def test_first_number(answer: str, number: int | None) -> None:
    assert pk.first_number(answer) == number


def test_bad_options(model: FotForCausalLM) -> None:
    with pytest.raises(InvalidValueError, match="too short"):
        pk.build_prompt(TOK, 200, 0.5, 12345, pk.repeat_filler(TOK, 500))
    with pytest.raises(InvalidValueError, match="filler has"):
        pk.build_prompt(TOK, 500, 0.5, 12345, pk.repeat_filler(TOK, 10))
    for depth in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(InvalidValueError, match="depth"):
            pk.make_cases(TOK, [300], [depth], 1)  # type: ignore[list-item]
    bad = [
        dict(lengths=[200]),
        dict(lengths=[]),
        dict(lengths=[0]),
        dict(depths=[]),
        dict(trials=0),
        dict(window=1),
        dict(tail=10),  # shorter than the question
        dict(tail=60),  # no room for the answer in the window
        dict(new_tokens=0),
        dict(digits=0),
        dict(backend="nope"),
    ]
    base = dict(lengths=[300], depths=[0.5], trials=1, window=WINDOW, tail=TAIL)
    for change in bad:
        args = {**base, **change}
        with pytest.raises(InvalidValueError):
            pk.passkey(model, TOK, mirror="cpu", **args)  # type: ignore[arg-type]


# -- reading and scoring -----------------------------------------------------------------------


def trie_tokens(parts: list[np.ndarray], window: int) -> int:
    """Tokens in the distinct windows of `parts`, a window named by all tokens up to its end:
    what reading each shared window once costs."""
    nodes = {}
    for part in parts:
        for start in range(0, len(part), window):
            end = min(len(part), start + window)
            nodes[part[:end].tobytes()] = end - start
    return sum(nodes.values())


def test_shared_reading_gives_the_memory_of_whole_reading(model: FotForCausalLM) -> None:
    lengths, depths = [300, 500], [0.2, 1.0]
    common = dict(trials=2, window=WINDOW, tail=TAIL, seed=3)
    shared = pk.passkey(model, TOK, lengths, depths, mirror="cpu", **common)  # type: ignore[arg-type]
    whole = pk.passkey(model, TOK, lengths, depths, mirror="cpu", share=False, **common)  # type: ignore[arg-type]
    answers = [r["answer"] for r in shared["trials"]]
    assert answers == [r["answer"] for r in whole["trials"]]
    assert len(set(answers)) > 1  # the answers depend on the prompt: the check can fail
    cases = pk.make_cases(TOK, lengths, depths, 2, seed=3)
    parts = [c.prompt.tokens[: c.length - TAIL] for c in cases]
    assert whole["tokens_read"] == shared["tokens_in_memory"] == sum(map(len, parts))
    assert shared["tokens_read"] == trie_tokens(parts, WINDOW) < whole["tokens_read"]
    for r, c in zip(shared["trials"], cases):
        assert (r["length"], r["depth"], r["trial"], r["key"]) == (
            c.length,
            c.depth,
            c.trial,
            c.prompt.key,
        )
        assert r["memory_tokens"] == c.length - TAIL
        assert r["key_in_memory"] == (c.prompt.key_end <= c.length - TAIL)
        assert r["correct"] == (pk.first_number(r["answer"]) == c.prompt.key)


@pytest.mark.parametrize("mirror", ["cpu", None])
def test_shared_reader_reads_only_what_differs(
    model: FotForCausalLM, tmp_path: Path, mirror: str | None
) -> None:
    a = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(1)).numpy()
    b = a.copy()
    b[130] = (b[130] + 1) % 256
    with create_store(tmp_path / "s", model) as store:
        r = pk.SharedReader(model, store, window=WINDOW, k=None, backend="exact", mirror=mirror)
        steps = [(a, 200), (a, 0), (b, 200 - 128), (b[:100], 100 - 64), (a, 200 - 64)]
        for tokens, read in steps:
            assert r.load(tokens) == read
            assert r.reader.memory_tokens() == len(tokens)
        assert r.read_tokens == sum(read for _, read in steps)


def test_store_retrieval_copies_the_shared_prefix(model: FotForCausalLM) -> None:
    common = dict(trials=2, window=WINDOW, tail=TAIL, seed=5)
    store = pk.passkey(model, TOK, [300], [0.1, 0.9], mirror=None, **common)  # type: ignore[arg-type]
    mirror = pk.passkey(model, TOK, [300], [0.1, 0.9], mirror="cpu", **common)  # type: ignore[arg-type]
    assert [r["answer"] for r in store["trials"]] == [r["answer"] for r in mirror["trials"]]
    assert store["tokens_read"] == mirror["tokens_read"] < store["tokens_in_memory"]


def test_scoring_with_a_stand_in_generator(model: FotForCausalLM, tmp_path: Path) -> None:
    """The generator sees the memory of everything before the tail (its logits equal those of
    a fresh reader of the prompt) and answers right in trial 0 only: accuracy 1/2 at each
    (length, depth)."""
    checked = []

    def answer(reader: LongDocumentReader, case: pk.Case, tail: np.ndarray, n: int) -> list[int]:
        cut = case.length - len(tail)
        assert (tail == case.prompt.tokens[cut:]).all() and reader.memory_tokens() == cut
        if len(checked) < 3:
            with create_store(tmp_path / f"fresh{len(checked)}", model) as store:
                fresh = LongDocumentReader(model, store.document("d"), window=WINDOW)
                fresh.read(torch.from_numpy(case.prompt.tokens[:cut]))
                want = fresh.logits(torch.from_numpy(tail))
            torch.testing.assert_close(reader.logits(torch.from_numpy(tail)), want)
            checked.append(case)
        key = case.prompt.key if case.trial == 0 else case.prompt.key + 1
        return TOK.encode(f" {key}. And").tolist()[:n]

    res = pk.passkey(
        model, TOK, [260, 420], [0.0, 0.5], 2, WINDOW, tail=TAIL, mirror="cpu",
        new_tokens=9, generate=answer,
    )  # fmt: skip
    assert len(checked) == 3
    assert res["accuracy"] == {"260": 0.5, "420": 0.5}
    assert res["accuracy_by_depth"] == {n: {"0.0": 0.5, "0.5": 0.5} for n in ("260", "420")}
    for r in res["trials"]:
        assert r["correct"] == (r["trial"] == 0)
        assert r["answer"] == f" {r['key'] + r['trial']}. A"  # cut at 9 tokens


# -- plot and CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fot_mem.data.shards import write_shards
    from fot_mem.train.config import TrainConfig
    from fot_mem.train.loop import Trainer

    data = tmp_path_factory.mktemp("data")
    docs = [(f"doc{i}", (pk.FILLER_SENTENCE + f" {i}\n") * 20) for i in range(6)]
    write_shards(
        docs, data, "bytes", lambda d: "val" if d in ("doc0", "doc1") else "train", progress=False
    )
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=str(data), out=str(run), hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, memory_layers="1", batch=2, window=WINDOW, steps=2,
        d_schedule="0:1", warmup=1, eval_every=2, eval_batches=1, eval_d="1", checkpoint_every=2,
        dtype="float32", device="cpu",
    )  # fmt: skip
    Trainer(cfg).run(progress=False)
    return run


def test_cli_writes_json_and_png(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "pk.json"
    png = tmp_path / "pk.png"
    result = pk_cli.main(
        [
            "--model", str(checkpoint), "--name", "tiny", "--tokenizer", "bytes",
            "--lengths", "300,400", "--depths", "0,1", "--trials", "1", "--window", str(WINDOW),
            "--tail", str(TAIL), "--device", "cpu", "--json", str(out), "--png", str(png),
            "--quiet",
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["name"] == "tiny" and set(saved["accuracy"]) == {"300", "400"}
    assert len(saved["trials"]) == 4 and saved["settings"]["mirror"] == "cpu"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = tmp_path / "both.png"
    other = {**saved, "name": "other"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged = pk_cli.main(["--plot", str(out), str(tmp_path / "other.json"), "--png", str(both)])
    assert set(merged) == {"tiny", "other"} and both.stat().st_size > 0
    with pytest.raises(SystemExit):
        pk_cli.main(["--model", str(checkpoint), "--filler", "data"])  # no --filler-data


@pytest.mark.parametrize("option", ["--model", "--name"])
def test_one_model_commands_refuse_a_second_model(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--model a --model b` once evaluated b alone, silently."""
    from fot_mem.cli.eval import passkey, perplexity

    for main in (passkey.main, perplexity.main):
        with pytest.raises(SystemExit) as e:
            main([option, "a", option, "b", "--json", "x.json"])
        assert e.value.code == 2
        assert f"{option} given twice" in capsys.readouterr().err
