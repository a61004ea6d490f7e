"""CrossbatchBatcher: every window of every document once and in order, slots never mixing
documents, one visit per document and epoch, exact resume, rank sharding, determinism, errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import fot_mem
import numpy as np
import pytest
import torch
from fot_mem.train.batcher import CrossbatchBatch, CrossbatchBatcher
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st


def make_docs(rng: np.random.Generator, n: int = 23, low: int = 0, high: int = 90) -> list:
    """Documents of random lengths, token ids drawn so that windows of different places differ."""
    lengths = rng.integers(low, high, size=n)
    return [rng.integers(0, 50_000, size=int(k), dtype=np.int64) for k in lengths]


def min_tokens(window: int, prev: int) -> int:
    return (prev + 1) * window + 1


def windows_of(length: int, window: int, prev: int) -> int:
    return max(0, (length - 1) // window - prev)


@dataclass
class Life:
    """One document's stay in one slot: the steps, positions and tokens it yielded."""

    slot: int
    doc: int
    steps: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    prevs: list[np.ndarray] = field(default_factory=list)
    currs: list[np.ndarray] = field(default_factory=list)
    ended: bool = False  # a later step of the slot began another document


def lives(batches: list[CrossbatchBatch]) -> list[Life]:
    """Splits a run into lives (in order of their start: step, then slot), checking on the way
    that a slot only switches document on a `first` step."""
    out: list[Life] = []
    current: dict[int, Life] = {}
    for bt in batches:
        for i in range(bt.doc.shape[0]):
            d, p, f = int(bt.doc[i]), int(bt.position[i]), bool(bt.first[i])
            if f or i not in current:
                assert f, f"slot {i} began at step {bt.step} without first"
                if i in current:
                    current[i].ended = True
                current[i] = Life(i, d)
                out.append(current[i])
            life = current[i]
            assert life.doc == d, f"slot {i} switched document {life.doc} -> {d} without first"
            life.steps.append(bt.step)
            life.positions.append(p)
            life.prevs.append(bt.prev[i].numpy())
            life.currs.append(bt.curr[i].numpy())
    return out


def check_life(life: Life, docs: list, window: int, prev: int, *, complete: bool) -> None:
    """The life's windows are the document's, from w*W on, consecutive, each window once, prev
    the w windows just before; a complete life ends at the last full window."""
    tokens = docs[life.doc]
    W, w = window, prev
    k = len(life.positions)
    assert life.steps == list(range(life.steps[0], life.steps[0] + k))
    assert life.positions == [w * W + j * W for j in range(k)]
    expected = windows_of(len(tokens), W, w)
    assert k == expected if complete else k <= expected
    for p, pv, cu in zip(life.positions, life.prevs, life.currs):
        np.testing.assert_array_equal(pv, tokens[p - w * W : p].reshape(w, W))
        np.testing.assert_array_equal(cu, tokens[p : p + W + 1])
    # The inputs of consecutive windows tile the document without gap or overlap.
    inputs = np.concatenate([cu[:-1] for cu in life.currs])
    np.testing.assert_array_equal(inputs, tokens[w * W : w * W + k * W])


def run_all(batcher: CrossbatchBatcher) -> list[CrossbatchBatch]:
    assert not batcher.loop, "only a batcher without loop runs out"
    return list(batcher)


def same(a: CrossbatchBatch, b: CrossbatchBatch) -> bool:
    return (
        a.step == b.step
        and torch.equal(a.prev, b.prev)
        and torch.equal(a.curr, b.curr)
        and torch.equal(a.doc, b.doc)
        and torch.equal(a.position, b.position)
        and torch.equal(a.first, b.first)
    )


@pytest.mark.parametrize(("batch", "window", "prev"), [(1, 4, 1), (3, 5, 1), (4, 3, 2), (2, 7, 3)])
def test_windows_cover_each_document_in_order(
    rng: np.random.Generator, batch: int, window: int, prev: int
) -> None:
    docs = make_docs(rng)
    batches = run_all(CrossbatchBatcher(docs, batch=batch, window=window, prev=prev, loop=False))
    assert batches, "no batch at all"
    ls = lives(batches)
    # Lives ended by a new document, and the slot that ran dry at the stop, are complete; the
    # other slots were cut at the stop.
    complete = 0
    for life in ls:
        full = len(life.positions) == windows_of(len(docs[life.doc]), window, prev)
        check_life(life, docs, window, prev, complete=life.ended)
        complete += full
    assert complete >= len(ls) - (batch - 1)


def test_shapes_and_dtypes(rng: np.random.Generator) -> None:
    docs = [d.astype(np.uint16) for d in make_docs(rng, n=12, low=40, high=80)]
    bt = next(CrossbatchBatcher(docs, batch=3, window=6, prev=2, seed=5))
    assert bt.prev.shape == (3, 2, 6) and bt.prev.dtype == torch.long
    assert bt.curr.shape == (3, 7) and bt.curr.dtype == torch.long
    assert bt.doc.shape == bt.position.shape == bt.first.shape == (3,)
    assert bt.first.dtype == torch.bool and bool(bt.first.all()) and bt.step == 0
    assert bt.prev.is_contiguous() and bt.curr.is_contiguous()
    for i in range(3):
        d = docs[int(bt.doc[i])]
        np.testing.assert_array_equal(bt.curr[i].numpy(), d[12:19].astype(np.int64))
    moved = bt.to("cpu")
    assert same(moved, bt)


def test_slots_never_mix_documents(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=30)
    W, w = 4, 1
    batches = list(
        b for _, b in zip(range(60), CrossbatchBatcher(docs, batch=3, window=W, prev=w, seed=1))
    )
    for a, b in zip(batches, batches[1:]):
        for i in range(3):
            assert bool(b.first[i]) == (int(b.position[i]) == w * W)
            if b.first[i]:
                # The slot's previous document had no full window left.
                assert int(a.position[i]) + 2 * W + 1 > len(docs[int(a.doc[i])])
            else:
                assert int(b.doc[i]) == int(a.doc[i])
                assert int(b.position[i]) == int(a.position[i]) + W
    for bt in batches:  # prev and curr of a step are adjacent pieces of one document
        for i in range(3):
            d, p = docs[int(bt.doc[i])], int(bt.position[i])
            np.testing.assert_array_equal(bt.prev[i, -1].numpy(), d[p - W : p])
            np.testing.assert_array_equal(bt.curr[i].numpy(), d[p : p + W + 1])


def starts(batches: list[CrossbatchBatch]) -> list[int]:
    """Documents begun, in the order they were taken (step, then slot)."""
    return [int(b.doc[i]) for b in batches for i in range(b.doc.shape[0]) if b.first[i]]


def test_every_document_once_per_epoch(rng: np.random.Generator) -> None:
    W, w = 5, 1
    docs = make_docs(rng, n=40)
    eligible = sorted(i for i, d in enumerate(docs) if len(d) >= min_tokens(W, w))
    short = set(range(len(docs))) - set(eligible)
    assert short and eligible, "the test data should have both kinds"
    batcher = CrossbatchBatcher(docs, batch=4, window=W, prev=w, seed=3)
    n = len(eligible)
    batches: list[CrossbatchBatch] = []
    while batcher.stats["epoch"] < 3:
        batches.append(next(batcher))
    s = starts(batches)
    epochs = [s[k * n : (k + 1) * n] for k in range(3)]
    for e in epochs:
        assert sorted(e) == eligible
    assert epochs[0] != epochs[1] != epochs[2], "shuffle must reorder per epoch"
    assert not short & {int(d) for b in batches for d in b.doc}
    st_ = batcher.stats
    assert st_["skipped_short"] == len(short) and st_["eligible"] == n
    assert st_["started"] == len(s) and st_["step"] == len(batches)
    assert st_["windows_per_epoch"] == sum(windows_of(len(docs[i]), W, w) for i in eligible)


def test_no_loop_stops_after_one_epoch(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=25)
    eligible = sorted(i for i, d in enumerate(docs) if len(d) >= min_tokens(3, 2))
    batcher = CrossbatchBatcher(docs, batch=3, window=3, prev=2, loop=False, seed=9)
    batches = run_all(batcher)
    begun = starts(batches)
    # Each document at most once; the stop may leave fewer than `batch` documents unbegun (the
    # step that would need them cannot fill all its slots).
    assert len(set(begun)) == len(begun) and set(begun) <= set(eligible)
    assert len(eligible) - 3 < len(begun) <= len(eligible)
    state = batcher.state_dict()
    with pytest.raises(StopIteration):
        next(batcher)
    assert batcher.state_dict() == state, "a stop must leave the state as it was"


def test_no_shuffle_takes_ascending_order(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=20)
    eligible = [i for i, d in enumerate(docs) if len(d) >= min_tokens(4, 1)]
    batcher = CrossbatchBatcher(docs, batch=2, window=4, shuffle=False, seed=11)
    batches = []
    while batcher.stats["epoch"] < 2:
        batches.append(next(batcher))
    assert starts(batches)[: 2 * len(eligible)] == eligible + eligible


@pytest.mark.parametrize("prev", [1, 2])
def test_resume_continues_exactly(rng: np.random.Generator, prev: int) -> None:
    docs = make_docs(rng, n=18)
    kw = dict(batch=3, window=4, prev=prev, seed=21)
    reference = CrossbatchBatcher(docs, **kw)
    ref = [next(reference) for _ in range(400)]
    # The step where epoch 1 begins: the first step that starts a document beyond epoch 0.
    probe = CrossbatchBatcher(docs, **kw)
    boundary = 0
    while probe.stats["epoch"] == 0:
        next(probe)
        boundary += 1
    boundary -= 1  # the step that began epoch 1
    assert 5 < boundary < 380
    for n in [0, 1, 7, boundary - 3, boundary, boundary + 1, 250]:
        a = CrossbatchBatcher(docs, **kw)
        for _ in range(n):
            next(a)
        state = json.loads(json.dumps(a.state_dict()))
        b = CrossbatchBatcher(docs, **kw)
        b.load_state_dict(state)
        assert b.stats == a.stats
        for k in range(n, min(n + 30, len(ref))):
            assert same(next(b), ref[k]), f"resumed at {n}, differs at step {k}"


def test_resume_without_loop_reaches_the_same_end(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=15)
    kw = dict(batch=2, window=5, prev=1, seed=2, loop=False)
    ref = run_all(CrossbatchBatcher(docs, **kw))
    a = CrossbatchBatcher(docs, **kw)
    for _ in range(len(ref) // 2):
        next(a)
    b = CrossbatchBatcher(docs, **kw)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    rest = run_all(b)
    assert len(rest) == len(ref) - len(ref) // 2
    assert all(same(x, y) for x, y in zip(rest, ref[len(ref) // 2 :]))


def test_resume_refuses_other_config_or_data(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=15)
    first_long = next(i for i, d in enumerate(docs) if len(d) >= min_tokens(5, 1))
    a = CrossbatchBatcher(docs, batch=2, window=5, seed=4)
    next(a)
    state = a.state_dict()
    others = [
        CrossbatchBatcher(docs, batch=3, window=5, seed=4),
        CrossbatchBatcher(docs, batch=2, window=4, seed=4),
        CrossbatchBatcher(docs, batch=2, window=5, seed=5),
        CrossbatchBatcher(docs, batch=2, window=5, seed=4, shuffle=False),
        CrossbatchBatcher(docs, batch=2, window=5, seed=4, world=2, rank=1),
        # Only one long-enough document is a token shorter (a different tokenisation, say).
        CrossbatchBatcher(
            [d[:-1] if i == first_long else d for i, d in enumerate(docs)],
            batch=2,
            window=5,
            seed=4,
        ),
    ]
    for other in others:
        before = other.state_dict()
        with pytest.raises(fot_mem.InvalidValueError):
            other.load_state_dict(state)
        assert other.state_dict() == before


def test_resume_refuses_malformed_state(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=15, low=30, high=60)
    a = CrossbatchBatcher(docs, batch=2, window=5, seed=4)
    next(a)
    good = a.state_dict()
    bad = []
    for key in good:
        bad.append({k: v for k, v in good.items() if k != key})
    d0, p0 = good["slots"][0]
    bad.append({**good, "slots": [[d0, p0 + 1], good["slots"][1]]})  # not on a window
    bad.append({**good, "slots": [[d0, 0], good["slots"][1]]})  # inside the first C_prev
    bad.append({**good, "slots": [[d0, 10_000], good["slots"][1]]})  # past the end
    bad.append({**good, "slots": [[len(docs) + 1, p0], good["slots"][1]]})  # not a document
    bad.append({**good, "slots": good["slots"][:1]})
    bad.append({**good, "cursor": 10_000})
    bad.append({**good, "epoch": -1})
    bad.append({**good, "version": 99})
    for state in bad:
        b = CrossbatchBatcher(docs, batch=2, window=5, seed=4)
        with pytest.raises(fot_mem.InvalidValueError):
            b.load_state_dict(state)
    b = CrossbatchBatcher(docs, batch=2, window=5, seed=4)
    b.load_state_dict(good)
    assert b.state_dict() == good


def test_fresh_state_is_json_and_resumes(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=10, low=20, high=50)
    a = CrossbatchBatcher(docs, batch=2, window=4, seed=8)
    text = json.dumps(a.state_dict())
    b = CrossbatchBatcher(docs, batch=2, window=4, seed=8)
    b.load_state_dict(json.loads(text))
    assert all(same(next(a), next(b)) for _ in range(20))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_see_disjoint_documents_covering_all(rng: np.random.Generator, world: int) -> None:
    docs = make_docs(rng, n=45)
    eligible = {i for i, d in enumerate(docs) if len(d) >= min_tokens(4, 1)}
    seen = []
    for r in range(world):
        batcher = CrossbatchBatcher(docs, batch=2, window=4, rank=r, world=world)
        batches: list[CrossbatchBatch] = []
        while batcher.stats["epoch"] == 0:
            batches.append(next(batcher))
        epoch0 = starts(batches)[: batcher.stats["eligible"]]
        assert len(set(epoch0)) == len(epoch0)
        assert all(i % world == r for i in epoch0)
        seen.append(set(epoch0))
    for r in range(world):
        for q in range(r + 1, world):
            assert not seen[r] & seen[q]
    assert set().union(*seen) == eligible


def test_same_seed_same_batches_other_seed_other_order(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=30)
    a = CrossbatchBatcher(docs, batch=3, window=4, seed=7)
    b = CrossbatchBatcher(docs, batch=3, window=4, seed=7)
    c = CrossbatchBatcher(docs, batch=3, window=4, seed=8)
    xs = [next(a) for _ in range(50)]
    assert all(same(x, next(b)) for x in xs)
    assert starts(xs) != starts([next(c) for _ in range(50)])


def test_errors(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=10, low=30, high=60)
    bad_args = [
        dict(batch=0, window=4),
        dict(batch=2, window=0),
        dict(batch=2, window=4, prev=0),
        dict(batch=2, window=4, rank=2, world=2),
        dict(batch=2, window=4, rank=-1),
        dict(batch=2, window=4, world=0),
        dict(batch=2, window=4, seed=-1),
        dict(batch=True, window=4),
        dict(batch=2, window=4.0),
        dict(batch=2, window=100),  # no document long enough
        dict(batch=11, window=4),  # fewer documents than slots
    ]
    for kw in bad_args:
        with pytest.raises(fot_mem.InvalidValueError):
            CrossbatchBatcher(docs, **kw)
    with pytest.raises(fot_mem.InvalidValueError, match="no document"):
        CrossbatchBatcher([], batch=1, window=4)
    with pytest.raises(fot_mem.ShapeError):
        CrossbatchBatcher([np.zeros((4, 10), dtype=np.int64)], batch=1, window=2)
    with pytest.raises(fot_mem.DtypeError):
        CrossbatchBatcher([np.zeros(40, dtype=np.float32)], batch=1, window=2)
    with pytest.raises(fot_mem.DtypeError):
        CrossbatchBatcher([list(range(40))], batch=1, window=2)


class WithLengths(list):
    """Documents with a `lengths` table, as a TokenDataset has; counts the documents read."""

    def __init__(self, docs: list) -> None:
        super().__init__(docs)
        self.lengths = np.array([len(d) for d in docs], dtype=np.int64)
        self.reads = 0

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().__getitem__(i)


def test_lengths_table_spares_the_scan(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=30)
    table = WithLengths(docs)
    a = CrossbatchBatcher(table, batch=3, window=4, seed=6)
    assert table.reads <= 1, "the lengths table should stand in for reading every document"
    b = CrossbatchBatcher(docs, batch=3, window=4, seed=6)
    assert a.state_dict() == b.state_dict()
    assert all(same(next(a), next(b)) for _ in range(40))
    with pytest.raises(fot_mem.DtypeError):
        CrossbatchBatcher(WithLengths([d.astype(np.float64) for d in docs]), batch=3, window=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_pin_memory_without_cuda_is_refused(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=10, low=30, high=60)
    with pytest.raises(fot_mem.InvalidValueError, match="pin_memory"):
        CrossbatchBatcher(docs, batch=2, window=4, pin_memory=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory(rng: np.random.Generator) -> None:
    docs = make_docs(rng, n=10, low=30, high=60)
    pinned = next(CrossbatchBatcher(docs, batch=2, window=4, seed=1, pin_memory=True))
    plain = next(CrossbatchBatcher(docs, batch=2, window=4, seed=1))
    assert pinned.prev.is_pinned() and pinned.curr.is_pinned() and pinned.first.is_pinned()
    assert same(pinned, plain)
    assert same(pinned.to("cuda", non_blocking=True).to("cpu"), plain)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(0, 60), min_size=1, max_size=12),
    batch=st.integers(1, 3),
    window=st.integers(1, 5),
    prev=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_coverage(
    lengths: list[int], batch: int, window: int, prev: int, seed: int
) -> None:
    """Over two epochs every long-enough document is begun once per epoch, and each life of
    epoch 0 yields exactly its windows w*W .. the last full one, in order."""
    eligible = sorted(i for i, k in enumerate(lengths) if k >= min_tokens(window, prev))
    assume(len(eligible) >= batch)
    # Distinct tokens per (document, position), so a misplaced window cannot match by chance.
    docs = [np.arange(k, dtype=np.int64) + 1000 * i for i, k in enumerate(lengths)]
    per_epoch = sum(windows_of(lengths[i], window, prev) for i in eligible)
    longest = max(windows_of(lengths[i], window, prev) for i in eligible)
    batcher = CrossbatchBatcher(docs, batch=batch, window=window, prev=prev, seed=seed)
    assert batcher.windows_per_epoch == per_epoch
    # Enough steps for every document begun in epoch 0 to be finished and left.
    batches = [next(batcher) for _ in range(per_epoch + longest + 1)]
    ls = lives(batches)
    n = len(eligible)
    assert sorted(life.doc for life in ls[:n]) == eligible
    if len(ls) >= 2 * n:
        assert sorted(life.doc for life in ls[n : 2 * n]) == eligible
    for life in ls[:n]:
        assert life.ended
        check_life(life, docs, window, prev, complete=True)
    for life in ls[n:]:
        check_life(life, docs, window, prev, complete=life.ended)


def same_source_share(batches: list[CrossbatchBatch], sources: list[str]) -> float:
    """Of the pairs of slots in a batch (each other's negatives), the share from one source."""
    pairs = same = 0
    for b in batches:
        labels = [sources[int(d)] for d in b.doc]
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                pairs += 1
                same += labels[i] == labels[j]
    return same / pairs


def test_sources_are_dealt_round_robin(rng: np.random.Generator) -> None:
    """Documents stored source by source (as a corpus of packages is) fill a batch from few
    sources; dealt round-robin, each batch's slots come from different sources while they last,
    every document still once per epoch, and a resumed run continues exactly."""
    docs = [rng.integers(0, 50_000, size=int(k)) for k in rng.integers(12, 40, size=48)]
    sources = [f"pkg{i // 12}" for i in range(48)]  # 4 sources of 12 documents each
    kw: dict = dict(batch=4, window=3, prev=1, seed=5)
    plain = CrossbatchBatcher(docs, **kw)  # shuffled alone: same-source pairs by chance
    mixed = CrossbatchBatcher(docs, **kw, sources=sources)
    first = next(mixed)
    assert sorted(sources[int(d)] for d in first.doc) == ["pkg0", "pkg1", "pkg2", "pkg3"]
    ran = [first] + [next(mixed) for _ in range(59)]
    assert same_source_share(ran, sources) < 0.6 * same_source_share(
        [next(plain) for _ in range(60)], sources
    )
    epoch = CrossbatchBatcher(docs, **kw, sources=sources)
    began: list[int] = []
    while epoch.stats["epoch"] == 0:
        began += starts([next(epoch)])
    assert sorted(began[:48]) == list(range(48))
    # resume: the order is rebuilt from (seed, epoch) and the sources
    a = CrossbatchBatcher(docs, **kw, sources=sources)
    for _ in range(25):
        next(a)
    b = CrossbatchBatcher(docs, **kw, sources=sources)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert all(same(next(a), next(b)) for _ in range(40))
    with pytest.raises(fot_mem.InvalidValueError, match="sources"):
        CrossbatchBatcher(docs, **kw).load_state_dict(a.state_dict())
    with pytest.raises(fot_mem.InvalidValueError, match="3 sources for 48 documents"):
        CrossbatchBatcher(docs, **kw, sources=sources[:3])
