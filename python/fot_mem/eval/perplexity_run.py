"""Perplexity against memory size of one model, end to end: its documents, distractors, JSON and
the plot (`fot-mem eval perplexity`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import InvalidValueError
from ..torch.weights import LoadOptions
from .common import documents, write_json
from .perplexity import log, perplexity, plot
from .perplexity_plan import plan


def distractors(
    docs: list[tuple[str, np.ndarray]], evaluated: list[tuple[str, np.ndarray]], n: int
) -> list[tuple[str, np.ndarray]]:
    """The first `n` documents of the split that are not evaluated."""
    ids = {i for i, _ in evaluated}
    others = [(i, t) for i, t in docs if i not in ids]
    if len(others) < n:
        raise InvalidValueError(
            f"--multi-doc {n} needs {n} documents besides the {len(ids)} evaluated; the split has "
            f"{len(others)}"
        )
    return others[:n]


def chosen(
    docs: list[tuple[str, np.ndarray]], prefixes: Sequence[str] | None
) -> list[tuple[str, np.ndarray]]:
    """The documents whose id starts with one of `prefixes` (None: all), such as the code of a
    split that also holds books."""
    if prefixes is None:
        return docs
    kept = [(i, t) for i, t in docs if str(i).startswith(tuple(prefixes))]
    if not kept:
        raise InvalidValueError(
            f"no document id of the split starts with {', '.join(map(repr, prefixes))}"
        )
    return kept


def run(
    spec: str,
    data: str | os.PathLike[str],
    *,
    name: str | None = None,
    split: str = "val",
    memory: Sequence[int] = (0, 2048, 8192, 32768, 131072),
    span: int = 2048,
    window: int | None = None,
    k: int | None = None,
    backend: str = "exact",
    ef: int | None = None,
    mirror: str | None = None,
    docs: int = 0,
    only: Sequence[str] | None = None,
    multi_doc: int = 0,
    distractor_tokens: int = 8192,
    limit_memory: bool = False,
    store_dtype: str = "bfloat16",
    stores: str | None = None,
    load: LoadOptions | None = None,
    json: str | None = None,
    png: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """`perplexity` of the model `spec` (`load_model`) on `data`'s `split`, labelled with its
    name and settings, written to `json` and plotted to `png`. `only`: evaluate the documents
    whose id starts with one of these. `multi_doc`: that many of the split's documents that are
    not evaluated are distractors in every memory."""
    load = load or LoadOptions()
    model = load.load(spec)
    found = documents(data, split)
    evaluated = chosen(found, only)
    p = plan(memory, span, evaluated, limit_memory=limit_memory, max_docs=docs)
    result = perplexity(
        model,
        evaluated,
        memory,
        span=span,
        window=window,
        k=k,
        backend=backend,
        ef=ef,
        mirror=mirror,
        distractors=distractors(found, p.docs, multi_doc) if multi_doc else None,
        distractor_tokens=distractor_tokens,
        store_dtype=store_dtype,
        stores=stores,
        limit_memory=limit_memory,
        max_docs=docs,
        progress=not quiet,
    )
    result = {"name": name or str(spec), "model": str(spec), **result}
    result["settings"].update(
        device=str(load.device), dtype=load.dtype, data=str(data), only=list(only or [])
    )
    if json:
        write_json(json, result)
    if png:
        plot({result["name"]: result}, png)
    for r in result["by_memory"]:
        log(not quiet, f"M={r['memory']}: perplexity {r['perplexity']:.3f} ({r['tokens']} tokens)")
    log(not quiet, f"done in {result['seconds']:.1f} s")
    return result
