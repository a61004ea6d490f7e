"""The dictionary lookup task's generator (fot_mem.train.dictionary) and its masked loss in the
training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fot_mem.data.dictionary import DictionaryTask
from fot_mem.exceptions import InvalidValueError
from fot_mem.torch import Crossbatch
from fot_mem.train.config import TrainConfig
from fot_mem.train.dictionary import DictionaryBatches
from fot_mem.train.loop import IGNORE, Trainer, rows

TASK = DictionaryTask()

# a training run on a small task, for the loop's tests
SMALL: dict[str, object] = dict(
    data="",
    task="dictionary",
    dict_symbols=8,
    dict_key=1,
    dict_value=1,
    window=16,
    hidden_size=16,
    intermediate_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    memory_layers="1",
    batch=4,
    d_schedule="0:1",
    steps=1,
    eval_every=100,
    eval_d="1",
    device="cpu",
    dtype="float32",
)


def small(out: object, **changes: object) -> TrainConfig:
    return TrainConfig(out=str(out), **{**SMALL, **changes})  # type: ignore[arg-type]


def records(window: np.ndarray, task: DictionaryTask = TASK) -> np.ndarray:
    """A window's whole records `[records, R]`."""
    return window[: task.records * task.record].reshape(task.records, task.record)


def test_paper_shape() -> None:
    assert (TASK.vocab_size, TASK.record, TASK.records) == (68, 10, 25)
    b = TASK.training_batch(seed=3, step=5, batch=4)
    assert b.prev.shape == (4, 1, 256) and b.curr.shape == (4, 257) and b.mask.shape == (4, 256)
    for i in range(4):
        defs, queries = records(b.prev[i, 0].numpy()), records(b.curr[i, :-1].numpy())
        assert (defs[:, 0] == TASK.key_mark).all() and (queries[:, 0] == TASK.query_mark).all()
        assert (defs[:, 5] == TASK.value_mark).all() and (queries[:, 5] == TASK.value_mark).all()
        assert (defs[:, 1:5] < 64).all() and (defs[:, 6:] < 64).all()
        assert (b.prev[i, 0, 250:] == TASK.pad).all() and (b.curr[i, 250:] == TASK.pad).all()
        keys = {tuple(r[1:5]) for r in defs}
        assert len(keys) == 25  # distinct keys in a window
        # every query asks a defined key, each once, and its value is the definition's
        defined = {tuple(r[1:5]): tuple(r[6:]) for r in defs}
        asked = [tuple(r[1:5]) for r in queries]
        assert sorted(asked) == sorted(defined)
        assert all(defined[tuple(r[1:5])] == tuple(r[6:]) for r in queries)
        # the mask counts exactly the value tokens of queries (as targets: shifted by one)
        target = b.curr[i, 1:].numpy()
        where = np.flatnonzero(b.mask[i].numpy())
        assert len(where) == 100
        assert ((where + 1) % 10 >= 6).all() and (target[where] < 64).all()
    # a pure function of (seed, step)
    again = TASK.training_batch(seed=3, step=5, batch=4)
    assert torch.equal(again.curr, b.curr) and torch.equal(again.prev, b.prev)
    assert not torch.equal(TASK.training_batch(seed=3, step=6, batch=4).curr, b.curr)


def test_whole_documents_for_the_model_without_memory() -> None:
    b = TASK.training_batch(seed=0, step=0, batch=2, whole=True)
    split = TASK.training_batch(seed=0, step=0, batch=2)
    assert b.prev.shape == (2, 0, 512) and b.curr.shape == (2, 513)
    assert torch.equal(b.curr[:, :256], split.prev[:, 0])
    assert torch.equal(b.curr[:, 256:], split.curr)
    assert torch.equal(b.mask[:, 256:], split.mask) and not b.mask[:, :256].any()


def test_small_tasks_and_their_limits() -> None:
    task = DictionaryTask(symbols=16, key_len=2, value_len=1, window=40)
    assert (task.record, task.records, task.keyspace) == (5, 8, 256)
    b = task.training_batch(0, 0, 8)
    assert int(b.mask.sum()) == 8 * 8
    with pytest.raises(InvalidValueError, match="holds no record"):
        DictionaryTask(window=9)
    with pytest.raises(InvalidValueError, match="too few"):
        DictionaryTask(symbols=4, key_len=1, window=256)
    with pytest.raises(InvalidValueError, match="distinct keys"):
        task.dictionary(40 * 64, 0)  # 512 definitions, 256 keys
    with pytest.raises(InvalidValueError, match="multiple of the window"):
        task.dictionary(100, 0)


def test_evaluation_dictionaries() -> None:
    book = TASK.dictionary(4096, seed=1)
    assert book.tokens == 4096 and len(book.keys) == 16 * 25
    assert len(np.unique(book.keys)) == len(book.keys)
    whole = book.definitions()
    assert whole.shape == (16, 256)
    assert np.array_equal(book.definitions(3, 7), whole[3:7])
    defined = {tuple(r[1:5]): tuple(r[6:]) for w in whole for r in records(w)}
    tokens, mask = book.queries(0)
    assert tokens.shape == (257,) and mask.shape == (256,) and mask.sum() == 100
    queries = records(tokens[:-1])
    assert all(defined[tuple(r[1:5])] == tuple(r[6:]) for r in queries)
    # query sets differ, and repeat by index; the same seed gives the same dictionary
    assert not np.array_equal(book.queries(1)[0], tokens)
    assert np.array_equal(TASK.dictionary(4096, seed=1).queries(0)[0], tokens)
    assert not np.array_equal(TASK.dictionary(4096, seed=2).keys, book.keys)


def test_rows_ignore_all_but_the_answers() -> None:
    b = TASK.training_batch(0, 0, 2)
    inputs, targets = rows(b)
    assert inputs.shape == (4, 256)
    assert torch.equal(targets != IGNORE, b.mask)
    assert torch.equal(targets[b.mask], b.curr[:, 1:][b.mask])


def test_loss_and_accuracy_count_answers_only(tmp_path) -> None:
    cfg = small(tmp_path / "run", batch=3, d_schedule="0:2")
    trainer = Trainer(cfg)
    batch = trainer.batcher.next()
    loss, accuracy = trainer.loss(batch, d=2)
    inputs, _ = rows(batch)

    logits = trainer.model(inputs, memory=Crossbatch(slots=3, d=2), logits_rows=slice(3, None))
    picked = logits.logits[batch.mask]
    want = F.cross_entropy(picked, batch.curr[:, 1:][batch.mask])
    assert torch.allclose(loss, want, atol=1e-6)
    right = (picked.argmax(-1) == batch.curr[:, 1:][batch.mask]).float().mean()
    assert torch.allclose(accuracy, right)


def test_d_until_accuracy_switches_once_and_resumes(tmp_path) -> None:
    run = dict(d_schedule="0:4", steps=6, d_until_accuracy=1.0)
    # an accuracy never met: d = 1 until d_until_step, then the schedule
    log = Trainer(small(tmp_path / "a", d_until_step=3, **run)).run(progress=False)
    assert [r["d"] for r in log[1:]] == [1, 1, 1, 4, 4, 4]
    # a threshold met after the first step (the last 10 steps' accuracy made perfect): d = 1
    # for that step only
    trainer = Trainer(small(tmp_path / "b", **{**run, "d_until_accuracy": 0.9}))
    trainer.recent = [1.0] * 10
    log = trainer.run(progress=False)
    assert [r["d"] for r in log[1:]] == [1, 4, 4, 4, 4, 4]
    # resumed after a checkpoint at step 2: the switch is remembered
    Trainer(small(tmp_path / "c", d_until_step=2, **{**run, "steps": 2})).run(progress=False)
    rest = Trainer(small(tmp_path / "c", d_until_step=2, **run))
    assert rest.step == 2 and rest.switched == 2
    assert [r["d"] for r in rest.run(progress=False)] == [4, 4, 4, 4]


def test_batches_resume_and_refuse_another_run() -> None:
    a = DictionaryBatches(TASK, batch=2, seed=1)
    a.next()
    state = a.state_dict()
    b = DictionaryBatches(TASK, batch=2, seed=1)
    b.load_state_dict(state)
    assert torch.equal(a.next().curr, b.next().curr)
    with pytest.raises(InvalidValueError, match="seed"):
        DictionaryBatches(TASK, batch=2, seed=2).load_state_dict(state)


def test_minutes_cap_stops_and_saves(tmp_path) -> None:
    cfg = small(tmp_path / "run", batch=2, steps=10_000, minutes=1e-9)
    log = Trainer(cfg).run(progress=False)
    assert log[-1]["step"] == 1 and "val_acc_d1" in log[-1]
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-0000001"


def hamming(a: np.ndarray, b: np.ndarray, task: DictionaryTask = TASK) -> np.ndarray:
    """Symbols that differ between key numbers `a [n]` and `b [m]`: `[n, m]`."""
    return (task.digits(a, task.key_len)[:, None] != task.digits(b, task.key_len)[None]).sum(-1)


def test_near_keys_come_in_families_of_near_misses() -> None:
    rng = np.random.default_rng(1)
    keys = TASK.near_keys(rng, (1, 3200), 15)[0]
    assert keys.shape == (3200,) and len(np.unique(keys)) == 3200
    assert (keys >= 0).all() and (keys < TASK.keyspace).all()
    apart = hamming(keys, keys)
    ones = (apart == 1).sum(1)
    # every key has a near miss (its family's base or copy); the base has all 15 of its copies
    assert ones.min() >= 1 and ones.max() >= 15
    uniform = TASK.distinct_keys(rng, (1, 3200))[0]
    assert (hamming(uniform, uniform) == 1).sum(1).mean() < 0.1 < ones.mean()


def test_near_batches_spread_families_over_documents() -> None:
    b = TASK.training_batch(seed=2, step=0, batch=64, near=7)
    keys = b.prev[:, 0, : TASK.records * TASK.record].reshape(64, TASK.records, TASK.record)
    numbers = (keys[..., 1:5].numpy() * 64 ** np.arange(3, -1, -1)).sum(-1)  # [docs, records]
    assert all(len(np.unique(row)) == TASK.records for row in numbers)
    apart = hamming(numbers.reshape(-1), numbers.reshape(-1))
    doc = np.repeat(np.arange(64), TASK.records)
    other = doc[:, None] != doc[None, :]
    # most keys meet a near miss in another document: a negative crossbatch will show them
    assert ((apart == 1) & other).any(1).mean() > 0.8
    # queries and answers are still the document's own
    queries = b.curr[:, : TASK.records * TASK.record].reshape(64, TASK.records, TASK.record)
    for i in range(64):
        defined = {tuple(r[1:5]) + tuple(r[6:]) for r in keys[i].tolist()}
        assert {tuple(r[1:5]) + tuple(r[6:]) for r in queries[i].tolist()} == defined
    # near = 0 is the paper's draw, unchanged
    plain = TASK.training_batch(seed=2, step=0, batch=64)
    assert torch.equal(plain.prev, TASK.training_batch(seed=2, step=0, batch=64, near=0).prev)


def test_near_is_checked_and_reaches_the_batches(tmp_path) -> None:
    with pytest.raises(InvalidValueError, match=r"near must be in 0\.\.252"):
        TASK.near_keys(np.random.default_rng(0), (1, 10), 253)
    with pytest.raises(InvalidValueError, match="dict_near"):
        small(tmp_path, dict_near=-1).check()
    trainer = Trainer(small(tmp_path / "near", dict_near=3, dict_symbols=16, dict_key=2))
    assert isinstance(trainer.batcher, DictionaryBatches) and trainer.batcher.near == 3
    assert trainer._val_batcher().near == 0  # validation stays the paper's task
