"""What a perplexity evaluation reads (`eval.perplexity`): the memory sizes and the documents long
enough for them, and the copy of a prefix's keys and values into a memory of one size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import InvalidValueError
from ..store import Document

COPY_BLOCK = 1 << 16  # tokens copied per read/append: bounds the float32 buffer


@dataclass(frozen=True)
class Plan:
    """Which memory sizes and documents an evaluation uses."""

    sizes: list[int]  # ascending memory sizes
    span: int  # E: tokens read after the prefix
    prefix: int  # P: tokens read before the span (the largest size)
    docs: list[tuple[str, np.ndarray]]  # evaluated
    skipped: list[dict[str, Any]]  # too short: id, tokens
    dropped: list[int]  # sizes no document allows (limit_memory)


def positive_int(value: Any, what: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InvalidValueError(f"{what} must be an integer >= {least}, got {value!r}")
    return int(value)


def check_memory(memory: Sequence[int]) -> list[int]:
    """Memory sizes: a non-empty, strictly ascending sequence of integers >= 0."""
    sizes = list(memory)
    if not sizes:
        raise InvalidValueError("memory sizes must not be empty")
    for m in sizes:
        positive_int(m, "every memory size", least=0)
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise InvalidValueError(f"memory sizes must be strictly ascending, got {sizes}")
    return [int(m) for m in sizes]


def plan(
    memory: Sequence[int],
    span: int,
    docs: Sequence[tuple[str, Any]],
    *,
    limit_memory: bool = False,
    max_docs: int = 0,
) -> Plan:
    """Checks the options and picks the documents long enough for the largest size + span."""
    sizes = check_memory(memory)
    span = positive_int(span, "span", least=2)  # its first token is not scored
    if not docs:
        raise InvalidValueError("no documents to evaluate")
    lengths = [len(t) for _, t in docs]
    dropped: list[int] = []
    if limit_memory:
        dropped = [m for m in sizes if m + span > max(lengths)]
        sizes = [m for m in sizes if m + span <= max(lengths)]
    if not sizes or max(lengths) < sizes[-1] + span:
        largest = sizes[-1] if sizes else dropped[0]
        raise InvalidValueError(
            f"no document has memory {largest} + span {span} tokens; the longest has "
            f"{max(lengths)} (limit_memory=True drops the sizes that do not fit)"
        )
    prefix = sizes[-1]
    kept = [(str(i), np.asarray(t)) for i, t in docs if len(t) >= prefix + span]
    skipped = [{"id": str(i), "tokens": len(t)} for i, t in docs if len(t) < prefix + span]
    return Plan(sizes, span, prefix, kept[:max_docs] if max_docs else kept, skipped, dropped)


def copy_memory(source: Document, target: Document, start: int, stop: int) -> None:
    """Appends `source`'s tokens `start:stop` (keys and values of every layer) to `target`."""
    for layer in source.store.layers:
        for a in range(start, stop, COPY_BLOCK):
            keys, values = source.read(layer, a, min(stop, a + COPY_BLOCK))
            target.append(layer, keys, values)
