"""The windows the distraction measure reads (`eval.distraction`): seeded draws of query windows
C_curr, their positives C_prev and negative windows of other documents, and their tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ..exceptions import InvalidValueError


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidValueError(f"{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Draw:
    """One query window: C_curr = docs[doc][start : start + W], C_prev the W tokens before it;
    `negatives`: (document index, start) of the negative windows, never of `doc`."""

    doc: int
    start: int
    negatives: tuple[tuple[int, int], ...]


def draw_windows(
    docs: Sequence[tuple[str, np.ndarray]],
    windows: int,
    window: int,
    negatives: int,
    seed: int,
    *,
    pool: int | None = None,
) -> list[Draw]:
    """`windows` query windows with `negatives` negative windows each, reproducible by `seed`.

    Query documents go round a shuffled order of those with >= 2 * window tokens (spread over
    documents, repeating when there are fewer than `windows`). Negatives come from one shared
    pool of `pool` windows (default 2 * negatives), each a uniformly drawn window of a uniformly
    drawn document, as crossbatch's negatives are the other slots' windows: every query takes
    `negatives` distinct pool windows of other documents (with repeats only when the pool holds
    too few). A shared pool lets `attention_mass` compute each window's keys once: about
    2 * negatives + windows forwards instead of windows * (negatives + 1)."""
    check_positive("windows", windows)
    check_positive("window", window)
    if negatives < 0:
        raise InvalidValueError(f"negatives must be >= 0, got {negatives}")
    lengths = [len(tokens) for _, tokens in docs]
    queries = [i for i, n in enumerate(lengths) if n >= 2 * window]
    if not queries:
        raise InvalidValueError(
            f"no document has 2 * window = {2 * window} tokens (a previous and a current "
            f"window); longest {max(lengths, default=0)}"
        )
    usable = np.array([i for i, n in enumerate(lengths) if n >= window])
    pool = 2 * negatives if pool is None else pool
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 0:
        raise InvalidValueError(f"pool must be an integer >= 0, got {pool!r}")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(queries) for _ in range(-(-windows // len(queries)))])
    pool_docs = rng.choice(usable, size=pool) if pool and negatives else np.zeros(0, dtype=int)
    shared = [(int(j), int(rng.integers(0, lengths[j] - window + 1))) for j in pool_docs.tolist()]
    out = []
    for doc in order[:windows].tolist():
        start = int(rng.integers(window, lengths[doc] - window + 1))
        others = usable[usable != doc]
        if negatives and not len(others):
            raise InvalidValueError(
                f"d > 1 needs negatives from documents other than the query's; only "
                f"{docs[doc][0]!r} has >= {window} tokens"
            )
        candidates = [w for w in shared if w[0] != doc]
        if len(candidates) >= negatives:
            picks = rng.choice(len(candidates), size=negatives, replace=False).tolist()
            negs = tuple(candidates[i] for i in picks)
        elif candidates:  # a small pool: its windows repeat
            negs = tuple(candidates[i] for i in rng.choice(len(candidates), size=negatives))
        else:  # no pool (pool=0) or none of another document: windows of its own
            negs = tuple(
                (int(j), int(rng.integers(0, lengths[j] - window + 1)))
                for j in rng.choice(others, size=negatives).tolist()
            )
        out.append(Draw(int(doc), start, negs))
    return out


def window_tokens(
    docs: Sequence[tuple[str, np.ndarray]], draws: Sequence[Draw], window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(current `[N, W]`, contexts `[N, 1 + negatives, W]`), the positive first, as int64."""

    def cut(doc: int, start: int) -> np.ndarray:
        return np.asarray(docs[doc][1][start : start + window], dtype=np.int64)

    current = np.stack([cut(d.doc, d.start) for d in draws])
    contexts = np.stack(
        [
            np.stack([cut(d.doc, d.start - window)] + [cut(j, s) for j, s in d.negatives])
            for d in draws
        ]
    )
    return torch.from_numpy(current), torch.from_numpy(contexts)
