"""The paper's dictionary lookup task (FoT, section 5.2 and its appendix), as seeded data.

Tokens: `symbols` plain symbols (ids 0..S-1), then PAD, `<k>`, `<v>`, `<q>`. A definition is
`<k> k1..kK <v> v1..vV`, a query `<q> k1..kK <v> v1..vV` on a defined key. A window of W tokens
holds W // R whole records (R = 2 + K + V) and PAD after them, so a record never straddles a
window: every window is read whole into memory. Loss and accuracy count only the value tokens
of queries (`answer_mask`). Training documents are two windows, definitions then queries on
them (the previous and the current window of crossbatch); an evaluation dictionary is N tokens
of definitions with distinct keys, then query windows on keys defined anywhere in it.

Every draw is a pure function of (seed, index): batch `step` of a run, or query set `i` of a
dictionary, so training resumes exactly and evaluations repeat."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from .batch import CrossbatchBatch


@dataclasses.dataclass(frozen=True)
class DictionaryTask:
    """The task's shape. Defaults are the paper's: 64 symbols, keys and values of 4, windows of
    256 tokens (25 records and 6 PAD)."""

    symbols: int = 64
    key_len: int = 4
    value_len: int = 4
    window: int = 256

    def __post_init__(self) -> None:
        for name in ("symbols", "key_len", "value_len", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"DictionaryTask.{name} must be >= 1, got {value!r}")
        if self.symbols < 2:
            raise InvalidValueError(f"DictionaryTask.symbols must be >= 2, got {self.symbols}")
        if self.records < 1:
            raise InvalidValueError(
                f"a window of {self.window} tokens holds no record of {self.record} tokens"
            )
        if self.keyspace < 2 * self.records:
            raise InvalidValueError(
                f"{self.symbols}^{self.key_len} keys are too few for {self.records} distinct "
                "keys a window"
            )

    @classmethod
    def of_run(cls, run: Mapping[str, Any]) -> DictionaryTask:
        """The task of a training run (`TrainConfig` fields, e.g. its config.json): with
        memory a window of definitions then one of queries; without (prev 0) one window of
        the run holds both."""
        return cls(
            symbols=run["dict_symbols"],
            key_len=run["dict_key"],
            value_len=run["dict_value"],
            window=run["window"] if run["prev"] else run["window"] // 2,
        )

    # -- token ids ------------------------------------------------------------------------
    @property
    def pad(self) -> int:
        return self.symbols

    @property
    def key_mark(self) -> int:
        return self.symbols + 1

    @property
    def value_mark(self) -> int:
        return self.symbols + 2

    @property
    def query_mark(self) -> int:
        return self.symbols + 3

    @property
    def vocab_size(self) -> int:
        return self.symbols + 4

    @property
    def record(self) -> int:
        """Tokens of one record."""
        return 2 + self.key_len + self.value_len

    @property
    def records(self) -> int:
        """Records in one window."""
        return self.window // self.record

    @property
    def keyspace(self) -> int:
        return self.symbols**self.key_len

    # -- pieces ---------------------------------------------------------------------------
    def digits(self, numbers: np.ndarray, length: int) -> np.ndarray:
        """Integers `[...]` -> their `length` base-`symbols` digits `[..., length]`."""
        powers = self.symbols ** np.arange(length - 1, -1, -1, dtype=np.int64)
        return (numbers[..., None] // powers) % self.symbols

    def distinct_keys(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Key numbers `shape`, distinct along the last axis."""
        return self._distinct(rng, rng.integers(0, self.keyspace, size=shape, dtype=np.int64))

    def near_keys(self, rng: np.random.Generator, shape: tuple[int, ...], near: int) -> np.ndarray:
        """Key numbers `shape`, distinct along the last axis, in families of `near` + 1: a
        random key and `near` copies of it with one symbol changed, spread at random. Hard
        negatives: a uniform draw almost never puts two keys this close in one batch (3,200
        of 16.7M keys), while a dictionary of 64M tokens holds about 100 such neighbours of
        every key."""
        k, s = self.key_len, self.symbols
        if isinstance(near, bool) or not isinstance(near, int) or not 0 <= near <= k * (s - 1):
            raise InvalidValueError(f"near must be in 0..{k * (s - 1)} (keys one symbol apart)")
        count = int(np.prod(shape))
        families = -(-count // (near + 1))
        base = self.digits(rng.integers(0, self.keyspace, size=families, dtype=np.int64), k)
        # `near` distinct edits a family: (position, nonzero shift of the symbol there)
        edits = rng.random((families, k * (s - 1))).argsort(axis=1)[:, :near]
        place, shift = edits // (s - 1), edits % (s - 1) + 1
        copies = np.repeat(base[:, None], near, axis=1)
        f, c = np.indices((families, near))
        copies[f, c, place] = (copies[f, c, place] + shift) % s
        digits = np.concatenate((base[:, None], copies), axis=1).reshape(-1, k)
        numbers = digits @ (s ** np.arange(k - 1, -1, -1, dtype=np.int64))
        return self._distinct(rng, rng.permutation(numbers)[:count].reshape(shape))

    def _distinct(self, rng: np.random.Generator, keys: np.ndarray) -> np.ndarray:
        """`keys` with the rows (last axis) that repeat a key redrawn until none does."""
        rows = keys.reshape(-1, keys.shape[-1])
        while True:  # rare for uniform keys: 25 of 16.7M
            ordered = np.sort(rows, axis=1)
            bad = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
            if not bad.any():
                return rows.reshape(keys.shape)
            rows[bad] = rng.integers(0, self.keyspace, size=(int(bad.sum()), rows.shape[1]))

    def windows(self, mark: int, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Records of key and value numbers `[n, records]` -> windows `[n, W]` int64 whose
        records start with `mark` (`<k>` for definitions, `<q>` for queries)."""
        n, r = keys.shape
        rec = np.empty((n, r, self.record), dtype=np.int64)
        rec[..., 0] = mark
        rec[..., 1 : 1 + self.key_len] = self.digits(keys, self.key_len)
        rec[..., 1 + self.key_len] = self.value_mark
        rec[..., 2 + self.key_len :] = self.digits(values, self.value_len)
        out = np.full((n, self.window), self.pad, dtype=np.int64)
        out[:, : r * self.record] = rec.reshape(n, -1)
        return out

    def answer_mask(self, tokens: np.ndarray) -> np.ndarray:
        """bool, same shape: True at the value tokens of queries (what loss and accuracy count).
        Every window starts at a record boundary, so a record's place is its offset mod R."""
        position = np.arange(tokens.shape[-1])
        where = position % self.window
        in_record = where % self.record
        whole = where < self.records * self.record
        value = whole & (in_record >= 2 + self.key_len)
        start = position - in_record  # the record's first token
        return value & (np.take(tokens, start, axis=-1) == self.query_mark)

    # -- training documents ---------------------------------------------------------------
    def training_batch(
        self, seed: int, step: int, batch: int, *, whole: bool = False, near: int = 0
    ) -> CrossbatchBatch:
        """Batch `step`: `batch` documents, each a window of definitions (`prev`) and a window
        of queries on all its keys in a random order (`curr`, one PAD more for the last
        target); `mask` marks the targets that count. `whole`: both windows in `curr` (for a
        model without memory), `prev` empty. `near` > 0: the batch's keys come in families of
        keys one symbol apart (`near_keys`), spread over its documents, so crossbatch's
        negatives hold near misses of every key; 0: uniform keys (the paper)."""
        rng = np.random.default_rng((seed, step))
        if near:
            keys = self.near_keys(rng, (batch, self.records), near)
        else:
            keys = self.distinct_keys(rng, (batch, self.records))
        values = rng.integers(0, self.symbols**self.value_len, size=keys.shape, dtype=np.int64)
        order = rng.permuted(np.tile(np.arange(self.records), (batch, 1)), axis=1)
        rows = np.arange(batch)[:, None]
        defs = self.windows(self.key_mark, keys, values)
        queries = self.windows(self.query_mark, keys[rows, order], values[rows, order])
        parts = (defs, queries) if whole else (queries,)
        curr = np.concatenate((*parts, np.full((batch, 1), self.pad)), axis=1)
        prev = defs[:, :0, None].reshape(batch, 0, curr.shape[1] - 1) if whole else defs[:, None]
        return CrossbatchBatch(
            prev=torch.from_numpy(np.ascontiguousarray(prev)),
            curr=torch.from_numpy(curr),
            doc=torch.full((batch,), step, dtype=torch.int64),
            position=torch.full((batch,), 0 if whole else self.window, dtype=torch.int64),
            first=torch.ones(batch, dtype=torch.bool),
            step=step,
            mask=torch.from_numpy(self.answer_mask(curr)[:, 1:]),
        )

    # -- evaluation dictionaries ----------------------------------------------------------
    def dictionary(self, tokens: int, seed: int) -> Dictionary:
        """N = `tokens` tokens of definitions (a multiple of the window) with distinct keys."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < self.window:
            raise InvalidValueError(f"a dictionary needs >= {self.window} tokens, got {tokens!r}")
        if tokens % self.window:
            raise InvalidValueError(
                f"dictionary tokens {tokens} must be a multiple of the window {self.window}"
            )
        n = tokens // self.window * self.records
        if n > self.keyspace:
            raise InvalidValueError(
                f"{n} definitions need {n} distinct keys; there are {self.keyspace}"
            )
        rng = np.random.default_rng((seed, tokens, 1))
        keys = rng.choice(self.keyspace, size=n, replace=False).astype(np.int64)
        values = rng.integers(0, self.symbols**self.value_len, size=n, dtype=np.int64)
        return Dictionary(self, keys, values, seed)


@dataclasses.dataclass
class Dictionary:
    """An evaluation dictionary: `keys` and `values` (numbers) of its definitions, in order."""

    task: DictionaryTask
    keys: np.ndarray
    values: np.ndarray
    seed: int

    @property
    def tokens(self) -> int:
        return len(self.keys) // self.task.records * self.task.window

    def definitions(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Windows `start..stop` of the definitions, `[windows, W]` int64 (the whole dictionary
        is N / W windows; generate it in parts when N is large)."""
        r = self.task.records
        total = len(self.keys) // r
        stop = total if stop is None else min(stop, total)
        keys = self.keys[start * r : stop * r].reshape(-1, r)
        values = self.values[start * r : stop * r].reshape(-1, r)
        return self.task.windows(self.task.key_mark, keys, values)

    def queries(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Query window `index`: (tokens `[W + 1]` with a PAD after, answer mask of the targets
        `[W]`) on `records` distinct keys drawn uniformly from the whole dictionary."""
        rng = np.random.default_rng((self.seed, self.tokens, 2, index))
        pick = rng.choice(len(self.keys), size=self.task.records, replace=False)
        window = self.task.windows(
            self.task.query_mark, self.keys[pick][None], self.values[pick][None]
        )[0]
        tokens = np.concatenate((window, [self.task.pad]))
        return tokens, self.task.answer_mask(tokens)[1:]
