"""The document-aware batcher of FoT crossbatch training (method.md, Part 2).

Invariant: batch slot i holds one document for the document's whole life and moves one window of
W tokens per step. At a step where slot i holds document `doc` at position p it yields

    prev = doc[p - w*W : p]      as [w, W]  (the w windows just before: C_prev)
    curr = doc[p : p + W + 1]    W inputs and their W next-token targets (C_curr)

then p += W. A document starts at p = w*W (its first w windows serve only as the first C_prev)
and ends once p + W + 1 > len(doc), so within a document no window is repeated or skipped, and
prev and curr of a step never come from different documents. A slot whose document ended takes
the next one of the shared order at the next step; slots take documents in slot-index order, so
the run is a pure function of (documents, configuration, seed).

The order of an epoch is this rank's long-enough documents (index i with i % world == rank and
len >= (w + 1) * W + 1), permuted by a generator seeded with (seed, epoch) when `shuffle`. Every
such document is started exactly once per epoch; shorter ones are never yielded (counted in
`stats["skipped_short"]`). Ranks never share a document, but may run through an epoch in different
numbers of steps (their documents differ). With `loop` a new epoch starts when the order runs
out, while the other slots finish their documents of the previous one; a document can then be in
two slots at once only if it comes up again before its previous life ended (only with data of
barely more than `batch` documents). Without `loop` iteration stops at the first step whose slots
needing a document outnumber the documents left: a batch always has `batch` real documents, so
the windows the other slots still held, and those last fewer than `batch` documents, are dropped.

`state_dict()` holds all of this (epoch, cursor into the order, per slot (doc, p), step), so a
batcher built with the same configuration continues after `load_state_dict` with exactly the
batches the uninterrupted run would have produced.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..data.batch import CrossbatchBatch
from ..exceptions import DtypeError, InvalidValueError, ShapeError

__all__ = ["CrossbatchBatch", "CrossbatchBatcher", "DocumentSource"]

STATE_VERSION = 1


class DocumentSource(Protocol):
    """What the batcher reads: `len()` documents, `source[i]` a 1-D integer array of token ids
    (a `TokenDataset` of memory-mapped shards, or a list of numpy arrays)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class CrossbatchBatcher:
    """Yields `CrossbatchBatch`es of `batch` slots, each walking one document window by window
    (see the module docstring for the invariant).

    `window`: W tokens per window. `prev`: w previous windows per step. `seed`: the document
    order (per epoch). `rank` / `world`: this process uses documents i with i % world == rank.
    `shuffle`: permute the order per epoch (else ascending index). `loop`: start a new epoch when
    the order runs out (else stop). `pin_memory`: allocate batches in pinned host memory, for
    `batch.to("cuda", non_blocking=True)`. `sources`: a label per document (e.g. its package):
    the order deals documents round-robin over them (`_interleave`). Document lengths come from
    `documents.lengths` when it has one per document (a `TokenDataset`), else from reading every
    document of this rank.
    Errors: `InvalidValueError` for bad numbers, or fewer long-enough documents than `batch`;
    `ShapeError` / `DtypeError` for a document that is not a 1-D integer array.
    """

    def __init__(
        self,
        documents: DocumentSource,
        *,
        batch: int,
        window: int,
        prev: int = 1,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        loop: bool = True,
        pin_memory: bool = False,
        sources: Sequence[str] | None = None,
    ) -> None:
        self.batch = _positive_int("batch", batch)
        self.window = _positive_int("window", window)
        self.prev = _positive_int("prev", prev)
        self.seed = _positive_int("seed", seed, minimum=0)
        self.world = _positive_int("world", world)
        self.rank = _positive_int("rank", rank, minimum=0)
        if self.rank >= self.world:
            raise InvalidValueError(f"rank {self.rank} must be below world {self.world}")
        self.shuffle = bool(shuffle)
        self.loop = bool(loop)
        if pin_memory and not torch.cuda.is_available():
            # torch would fail at the first batch; say why here instead.
            raise InvalidValueError("pin_memory=True needs CUDA, which torch does not see")
        self.pin_memory = bool(pin_memory)
        self.documents = documents

        # A document is usable when it holds w windows of C_prev, one window and one target.
        self.min_tokens = (self.prev + 1) * self.window + 1
        n_docs = len(documents)
        mine = range(self.rank, n_docs, self.world)
        lengths: dict[int, int] = {}
        known = getattr(documents, "lengths", None)  # a TokenDataset's table: no scan needed
        if known is not None and np.ndim(known) == 1 and len(known) == n_docs:
            table = np.asarray(known, dtype=np.int64)
            for i in mine:
                if table[i] >= self.min_tokens:
                    lengths[i] = int(table[i])
            for i in list(lengths)[:1]:  # dtype and rank as the scan would check them
                self._check_document(i, documents[i])
        else:
            for i in mine:
                n = len(self._check_document(i, documents[i]))
                if n >= self.min_tokens:
                    lengths[i] = n
        self._lengths = lengths
        self._eligible = np.fromiter(lengths, dtype=np.int64, count=len(lengths))
        if len(self._eligible) == 0:
            raise InvalidValueError(
                f"no document of rank {self.rank}/{self.world} ({len(mine)} of {n_docs}) has the "
                f"{self.min_tokens} tokens that prev={self.prev} windows of {self.window}, one "
                f"window and its target need"
            )
        if len(self._eligible) < self.batch:
            # Fewer documents than slots would put one document in two slots of the same step:
            # its own C_prev would then be among the negatives.
            raise InvalidValueError(
                f"only {len(self._eligible)} document(s) of rank {self.rank}/{self.world} have "
                f"{self.min_tokens} tokens; batch={self.batch} needs at least as many"
            )
        if sources is not None and len(sources) != n_docs:
            raise InvalidValueError(f"{len(sources)} sources for {n_docs} documents")
        self._sources = None if sources is None else [str(x) for x in sources]
        self._n_documents = n_docs
        self._skipped_short = len(mine) - len(lengths)
        # Windows each document yields: p = wW + kW while p + W + 1 <= len.
        per_doc = (np.fromiter(lengths.values(), dtype=np.int64) - 1) // self.window - self.prev
        self.windows_per_epoch = int(per_doc.sum())
        # Fingerprint of what this rank reads, so a state of other data is refused on load.
        pairs = np.stack([self._eligible, np.fromiter(lengths.values(), dtype=np.int64)])
        self._fingerprint = zlib.crc32(pairs.tobytes())

        self._epoch = 0
        self._cursor = 0
        self._order = self._make_order(0)
        self._slots: list[tuple[int, int] | None] = [None] * self.batch
        self._step = 0
        self._started = 0

    @staticmethod
    def _check_document(index: int, tokens: Any) -> Any:
        shape = getattr(tokens, "shape", None)
        dtype = getattr(tokens, "dtype", None)
        if shape is None or dtype is None:
            raise DtypeError(f"document {index} is a {type(tokens).__name__}, not an array")
        if len(shape) != 1:
            raise ShapeError(f"document {index} has shape {tuple(shape)}, expected 1-D tokens")
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise DtypeError(f"document {index} has dtype {dtype}, expected integer token ids")
        return tokens

    def _make_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self._eligible
        # Seeded by (seed, epoch) alone, so any epoch's order can be rebuilt on resume.
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self._eligible)
        return order if self._sources is None else self._interleave(order, rng)

    def _interleave(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`order` dealt round-robin over its sources (in a random order of sources), so
        documents next to each other, which the slots hold at the same time and whose windows
        are each other's negatives, come from different sources while any are left."""
        groups: dict[str, list[int]] = {}
        for d in order.tolist():
            groups.setdefault(self._sources[d], []).append(d)  # type: ignore[index]
        lists = list(groups.values())
        queues = [lists[i] for i in rng.permutation(len(lists))]
        dealt: list[int] = []
        depth = 0
        while len(dealt) < len(order):
            dealt.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return np.asarray(dealt, dtype=np.int64)

    def _config(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "window": self.window,
            "prev": self.prev,
            "rank": self.rank,
            "world": self.world,
            "shuffle": self.shuffle,
            "loop": self.loop,
            "documents": self._n_documents,
            "eligible": len(self._eligible),
            "fingerprint": self._fingerprint,
        } | (
            {}
            if self._sources is None
            else {"sources": zlib.crc32("\0".join(self._sources).encode())}
        )

    def _finished(self, slot: tuple[int, int] | None) -> bool:
        return slot is None or slot[1] + self.window + 1 > self._lengths[slot[0]]

    def __iter__(self) -> Iterator[CrossbatchBatch]:
        return self

    def __next__(self) -> CrossbatchBatch:
        return self.next()

    def next(self) -> CrossbatchBatch:
        """The next batch; `StopIteration` once the documents run out (only with loop=False)."""
        b, w, W = self.batch, self.prev, self.window
        need = [i for i, slot in enumerate(self._slots) if self._finished(slot)]
        # Decide before taking any document, so a stop leaves the state untouched.
        if need and not self.loop and self._cursor + len(need) > len(self._order):
            raise StopIteration
        for i in need:  # slot-index order: the tie-break that keeps the run deterministic
            if self._cursor == len(self._order):
                self._epoch += 1
                self._cursor = 0
                self._order = self._make_order(self._epoch)
            self._slots[i] = (int(self._order[self._cursor]), w * W)
            self._cursor += 1
            self._started += 1

        # Filled through numpy views of (optionally pinned) torch memory: one copy per token.
        prev = torch.empty((b, w, W), dtype=torch.long, pin_memory=self.pin_memory)
        curr = torch.empty((b, W + 1), dtype=torch.long, pin_memory=self.pin_memory)
        doc = torch.empty(b, dtype=torch.long)
        position = torch.empty(b, dtype=torch.long)
        prev_np, curr_np = prev.numpy(), curr.numpy()
        for i, slot in enumerate(self._slots):
            assert slot is not None
            d, p = slot
            seg = np.asarray(self.documents[d][p - w * W : p + W + 1])
            if seg.shape != (w * W + W + 1,):
                raise InvalidValueError(
                    f"document {d} is shorter than the {self._lengths[d]} tokens it had when the "
                    f"batcher was built"
                )
            prev_np[i] = seg[: w * W].reshape(w, W)
            curr_np[i] = seg[w * W :]
            doc[i] = d
            position[i] = p
            self._slots[i] = (d, p + W)
        first = position == w * W
        if self.pin_memory:
            doc, position, first = doc.pin_memory(), position.pin_memory(), first.pin_memory()
        out = CrossbatchBatch(prev, curr, doc, position, first, self._step)
        self._step += 1
        return out

    @property
    def stats(self) -> dict[str, int]:
        """Counts: this rank's `documents`, `eligible` (long enough), `skipped_short`, `started`
        (document lives begun so far, all epochs), `epoch`, `step`, `windows_per_epoch`."""
        return {
            "documents": len(range(self.rank, self._n_documents, self.world)),
            "eligible": len(self._eligible),
            "skipped_short": self._skipped_short,
            "started": self._started,
            "epoch": self._epoch,
            "step": self._step,
            "windows_per_epoch": self.windows_per_epoch,
        }

    def state_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict from which `load_state_dict` continues exactly here."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "config": self._config(),
            "epoch": self._epoch,
            "cursor": self._cursor,
            "step": self._step,
            "started": self._started,
            "slots": [None if s is None else [s[0], s[1]] for s in self._slots],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (of a batcher with this configuration, seed and data)."""
        try:
            version, seed, config = state["version"], state["seed"], state["config"]
            epoch, cursor, step = state["epoch"], state["cursor"], state["step"]
            started, slots = state["started"], state["slots"]
        except (KeyError, TypeError) as e:
            raise InvalidValueError(f"not a CrossbatchBatcher state: missing {e}") from None
        if version != STATE_VERSION:
            raise InvalidValueError(
                f"state version {version!r}, this batcher reads {STATE_VERSION}"
            )
        mine = self._config()
        if config != mine:
            diff = sorted(
                k for k in set(config) | set(mine) if config.get(k) != mine.get(k)
            )  # what differs, named in the message
            raise InvalidValueError(
                f"the state is of another configuration or data (differs in {', '.join(diff)}): "
                f"state {config}, batcher {mine}"
            )
        if seed != self.seed:
            raise InvalidValueError(f"the state has seed {seed!r}, this batcher {self.seed}")
        epoch = _positive_int("state epoch", epoch, minimum=0)
        cursor = _positive_int("state cursor", cursor, minimum=0)
        step = _positive_int("state step", step, minimum=0)
        started = _positive_int("state started", started, minimum=0)
        if cursor > len(self._eligible):
            raise InvalidValueError(f"state cursor {cursor} beyond {len(self._eligible)} documents")
        if not isinstance(slots, list) or len(slots) != self.batch:
            raise InvalidValueError(f"state slots must be a list of {self.batch}, got {slots!r}")
        parsed = [None if s is None else self._parse_slot(s) for s in slots]
        self._epoch, self._cursor, self._step, self._started = epoch, cursor, step, started
        self._order = self._make_order(epoch)
        self._slots = parsed

    def _parse_slot(self, slot: object) -> tuple[int, int]:
        if isinstance(slot, (list, tuple)) and len(slot) == 2:
            d, p = slot
            if isinstance(d, int) and isinstance(p, int) and d in self._lengths:
                w, W = self.prev, self.window
                # p is w*W plus whole windows, at most one past the document's last window.
                if w * W <= p <= self._lengths[d] - 1 and (p - w * W) % W == 0:
                    return d, p
        raise InvalidValueError(f"state slot {slot!r} is not a (document, position) of this data")
