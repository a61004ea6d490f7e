"""Perplexity against memory size on held-out long documents (the paper's Table 4 / Fig. 5).

Protocol, per evaluated document of at least P + E tokens (P = the largest memory size, E =
`span`):

1. The prefix `tokens[:P]` is read ONCE by a `LongDocumentReader` into a store document (every
   memory layer's keys and values), with exact retrieval (on the mirror if one is given), so that
   every backend is scored against the same memory.
2. For each memory size M, a fresh store document gets a copy of the prefix's last M tokens'
   keys and values (read back from the store, no model forward). These keys were computed while
   the reader had the whole prefix so far in memory, not only M tokens of it: the memory is the
   document's own, truncated to its last M tokens.
3. The evaluation span `tokens[P:P + E]` is read over that document, window by window, by a
   reader with `backend` (hnsw indexes are built before the span is read). As in the paper the
   span's own finished windows enter memory too, so M = 0 means "no memory from before the
   span", not "no memory at all". The span's first token (predicted from the prefix's last
   token, which no reader window holds) is not scored: E - 1 tokens per document.

Every M is scored on the same tokens at the same positions (the span starts a fresh window), so
sizes differ only in what the memory holds. Documents shorter than P + E are skipped (listed in
the result); `limit_memory=True` first drops the sizes that not even the longest document
allows (listed too).

Multi-document memory (`distractors`): each distractor's first `distractor_tokens` tokens are
read once (on their own, exact retrieval); every memory document then holds, in this order, all
distractors' keys and values and then the document's own last M tokens. With distractors, M = 0
means a memory of the distractors alone. A distractor with the evaluated document's id is left
out of that document's memory.

`fot-mem eval perplexity --model SPEC --data DIR --memory 0,2048,8192 --span 2048 --json out.json
--png out.png` (`eval.perplexity_run`); `--plot a.json b.json --png out.png` draws saved results
together.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import backends
from ..store import Document, MemoryStore
from ..torch import FotForCausalLM
from ..torch.reader import LongDocumentReader, create_store
from .common import pyplot, save_figure
from .perplexity_plan import Plan, copy_memory, plan, positive_int


@dataclass
class _Setup:
    """How documents are read and scored."""

    model: FotForCausalLM
    window: int
    k: int
    backend: str
    ef: int | None
    mirror: str | None
    options: dict[str, Any] = field(default_factory=dict)  # create_store's (chunk_tokens)

    def reader(self, document: Document, *, exact: bool = False) -> LongDocumentReader:
        """Exact readers fill memories (on the mirror if any); scoring uses `backend`; a mirror
        searches exactly, so it serves scoring only with backend "exact"."""
        mirror = self.mirror if exact or self.backend == "exact" else None
        backend = "exact" if exact else self.backend
        return LongDocumentReader(
            self.model,
            document,
            window=self.window,
            k=self.k,
            backend=backend,
            ef=None if exact else self.ef,
            mirror=mirror,
        )


def _ids(tokens: Any) -> torch.Tensor:
    """Token ids as int64 (shards hold uint16/uint32, which torch reduces poorly)."""
    return torch.from_numpy(np.asarray(tokens, dtype=np.int64))


def log(progress: bool, message: str) -> None:
    if progress:
        print(f"[perplexity] {message}", file=sys.stderr, flush=True)


def span_losses(
    setup: _Setup,
    source: Document,
    target_store: MemoryStore,
    name: str,
    span: torch.Tensor,
    sizes: Sequence[int],
    distractors: Sequence[Document] = (),
    *,
    keep: bool = False,
) -> dict[int, dict[str, Any]]:
    """Per memory size M: the losses `[len(span) - 1]` of `span` read over a memory of the
    distractors and `source`'s last M tokens (document `name`-m{M} of `target_store`), with
    seconds (copy + scoring) and, for hnsw, the tokens its graphs answer for."""
    layer = target_store.layers[0]
    have = source.length(layer)
    out: dict[int, dict[str, Any]] = {}
    for m in sizes:
        t0 = time.perf_counter()
        doc = target_store.document(f"{name}-m{m}")
        doc.delete()  # a kept store from an earlier run
        for d in distractors:
            copy_memory(d, doc, 0, d.length(layer))
        copy_memory(source, doc, have - m, have)
        if setup.backend == "hnsw" and target_store.hnsw is not None:
            target_store.build_indexes()  # every full span searched by its graphs
        indexed = doc.indexed_tokens(layer) if setup.backend == "hnsw" and doc.exists else 0
        losses = setup.reader(doc).read(span)
        out[m] = {"losses": losses, "seconds": time.perf_counter() - t0, "indexed": indexed}
        if not keep:
            doc.delete()
    return out


def _summary(loss_sum: float, tokens: int, seconds: float) -> dict[str, Any]:
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "seconds": seconds}


def _total(per_doc: list[dict[str, Any]], j: int) -> dict[str, Any]:
    """Summary over all documents' scored tokens of the j-th memory size."""
    rows = [d["by_memory"][j] for d in per_doc]
    loss_sum = sum(r["loss"] * r["tokens"] for r in rows)
    return _summary(loss_sum, sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows))


def _read_distractors(
    setup: _Setup, store: MemoryStore, distractors: Sequence[tuple[str, Any]], tokens: int
) -> list[tuple[str, Document]]:
    """(id, store document) of each distractor's first `tokens` tokens, read on their own."""
    out = []
    for j, (did, ids) in enumerate(distractors):
        d = store.document(f"distractor{j}")
        setup.reader(d, exact=True).read(_ids(ids[:tokens]), losses=False)
        out.append((str(did), d))
    return out


def _evaluate_document(
    setup: _Setup,
    p: Plan,
    name: str,
    tokens: np.ndarray,
    prefix_store: MemoryStore,
    memory_store: MemoryStore,
    distractors: Sequence[Document],
    keep: bool,
) -> dict[str, Any]:
    """Reads the prefix once, scores the span at every memory size: the document's row."""
    t0 = time.perf_counter()
    shared = None if keep else _shared_prefix(setup, prefix_store, tokens[: p.prefix])
    reused = shared is not None and shared.length(prefix_store.layers[0]) == p.prefix
    prefix = shared if shared is not None else prefix_store.document(name)
    if not reused:
        prefix.delete()  # what a failed read left of a kept prefix
        setup.reader(prefix, exact=True).read(_ids(tokens[: p.prefix]), losses=False)
    prefix_s = time.perf_counter() - t0
    span = _ids(tokens[p.prefix : p.prefix + p.span])
    results = span_losses(setup, prefix, memory_store, name, span, p.sizes, distractors, keep=keep)
    rows = []
    for m, r in results.items():
        loss_sum = float(r["losses"].double().sum())
        row = {"memory": m, **_summary(loss_sum, r["losses"].numel(), r["seconds"])}
        if setup.backend == "hnsw":
            row["indexed_tokens"] = r["indexed"]
        rows.append(row)
    if not keep and shared is None:
        prefix.delete()
    return {
        "tokens": len(tokens),
        "distractors": len(distractors),
        "prefix_seconds": prefix_s,
        "prefix_reused": reused,
        "by_memory": rows,
    }


# Prefix memories kept between `perplexity` calls of one process while `share_prefixes()` is on
# (the suite's single-document, multi-document and hnsw steps of a model read the same prefixes:
# exactly, on the same model, so once is enough). Stores by (model, store dtype, options).
_PREFIXES: dict[tuple[Any, ...], MemoryStore] = {}
_PREFIX_DIR: tempfile.TemporaryDirectory[str] | None = None


def share_prefixes(on: bool = True) -> None:
    """Keeps read prefixes for later calls (off: closes and deletes them)."""
    global _PREFIX_DIR
    if on and _PREFIX_DIR is None:
        _PREFIX_DIR = tempfile.TemporaryDirectory(prefix="fot-perplexity-prefixes-")
    if not on:
        for store in _PREFIXES.values():
            store.close()
        _PREFIXES.clear()
        if _PREFIX_DIR is not None:
            _PREFIX_DIR.cleanup()
            _PREFIX_DIR = None


def _shared_prefix(setup: _Setup, like: MemoryStore, tokens: np.ndarray) -> Document | None:
    """The kept prefix document of `tokens` (empty if not read yet), or None when off."""
    if _PREFIX_DIR is None:
        return None
    options = repr(sorted(setup.options.items()))  # hashable whatever the values
    key = (id(setup.model), setup.window, setup.k, setup.mirror, like.dtype, options)
    if key not in _PREFIXES:
        folder = Path(_PREFIX_DIR.name) / f"store{len(_PREFIXES)}"
        _PREFIXES[key] = create_store(folder, setup.model, dtype=like.dtype, **setup.options)
    digest = hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()
    return _PREFIXES[key].document(f"prefix-{digest[:32]}")


@contextlib.contextmanager
def _store_dir(path: str | Path | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="fot-perplexity-") as tmp:
            yield Path(tmp)


def perplexity(
    model: FotForCausalLM,
    docs: Sequence[tuple[str, Any]],
    memory: Sequence[int] = (0, 2048, 8192, 32768, 131072),
    *,
    span: int = 2048,
    window: int | None = None,
    k: int | None = None,
    backend: str = "exact",
    ef: int | None = None,
    mirror: str | None = None,
    distractors: Sequence[tuple[str, Any]] | None = None,
    distractor_tokens: int = 8192,
    store_dtype: str = "bfloat16",
    store_options: Mapping[str, Any] | None = None,
    stores: str | Path | None = None,
    limit_memory: bool = False,
    max_docs: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean next-token loss and perplexity per memory size over the spans of `docs` ((id,
    tokens) pairs), following the module's protocol.

    `window`: tokens of local context (default min(2048, max_position_embeddings)); `k`:
    memories per query and head (default `config.memory_k`); `backend` / `ef`: retrieval while
    scoring; `mirror`: a device for exact search (e.g. "cuda"; with backend "hnsw" it serves the
    exact prefix reads only). `store_options`: create_store options (chunk_tokens; hnsw, a dict
    of index options, for backend "hnsw"). `stores`: a folder to keep the stores in (default: a
    temporary one, deleted). `max_docs`: evaluate the first N long-enough documents (0: all).

    Returns a JSON-able dict: `settings`, `by_memory` (per size: memory, loss, perplexity,
    tokens, seconds, memory_tokens (including distractors)), `documents` (per document: id,
    tokens, prefix_seconds, by_memory), `skipped`, `memory_dropped`, `seconds`."""
    t_start = time.perf_counter()
    p = plan(memory, span, docs, limit_memory=limit_memory, max_docs=max_docs)
    c = model.config
    setup = _Setup(
        model,
        min(2048, c.max_position_embeddings) if window is None else window,
        c.memory_k if k is None else k,
        backends.check(backend),
        ef,
        mirror,
    )
    distractors = list(distractors or [])
    distractor_tokens = positive_int(distractor_tokens, "distractor_tokens")
    if ef is not None:
        positive_int(ef, "ef")  # now, not after the prefix is read (prefix reads are exact)
    options = dict(store_options or {})
    hnsw = options.pop("hnsw", True)
    hnsw = hnsw if backend == "hnsw" else None  # only the scored memories are searched by graphs
    options.pop("dtype", None)
    setup.options = options

    keep = stores is not None
    per_doc: list[dict[str, Any]] = []
    with _store_dir(stores) as folder:
        prefix_store = create_store(folder / "prefix", model, dtype=store_dtype, **options)
        memory_store = create_store(
            folder / "memory", model, dtype=store_dtype, hnsw=hnsw, **options
        )
        try:
            read = _read_distractors(setup, prefix_store, distractors, distractor_tokens)
            distractor_lengths = [d.length(c.memory_layers[0]) for _, d in read]
            if read:
                log(progress, f"read {len(read)} distractors ({sum(distractor_lengths)} tokens)")
            for i, (doc_id, tokens) in enumerate(p.docs):
                others = [d for did, d in read if did != doc_id]
                row = _evaluate_document(
                    setup, p, f"doc{i}", tokens, prefix_store, memory_store, others, keep
                )
                per_doc.append({"id": doc_id, **row})
                log(progress, f"{doc_id}: prefix read in {row['prefix_seconds']:.1f} s")
                for r in row["by_memory"]:
                    log(
                        progress,
                        f"{doc_id}: M={r['memory']} loss {r['loss']:.4f} ({r['seconds']:.1f} s)",
                    )
        finally:
            prefix_store.close()
            memory_store.close()
    extra = sum(distractor_lengths)
    return {
        "settings": {
            "memory": p.sizes,
            "span": p.span,
            "scored_tokens_per_document": p.span - 1,
            "prefix_tokens": p.prefix,
            "window": setup.window,
            "k": setup.k,
            "backend": setup.backend,
            "ef": ef,
            "mirror": mirror,
            "store_dtype": store_dtype,
            "distractors": [str(did) for did, _ in distractors],
            "distractor_tokens": distractor_lengths,
        },
        "by_memory": [
            {"memory": m, "memory_tokens": m + extra, **_total(per_doc, j)}
            for j, m in enumerate(p.sizes)
        ],
        "documents": per_doc,
        "skipped": p.skipped,
        "memory_dropped": p.dropped,
        "stores": None if stores is None else str(stores),
        "seconds": time.perf_counter() - t_start,
    }


def plot(results_by_name: Mapping[str, Any], png: str | Path) -> Path:
    """Perplexity against memory tokens (log2 axis), one line per result; M = 0 is a hollow
    marker at the left, joined to its line by a dotted segment. `results_by_name`: name ->
    result of `perplexity`, or one result alone."""
    if "by_memory" in results_by_name:
        results_by_name = {str(results_by_name.get("name", "model")): results_by_name}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    nonzero = [r["memory"] for res in results_by_name.values() for r in res["by_memory"]]
    nonzero = [m for m in nonzero if m > 0]
    zero_x = min(nonzero) / 4 if nonzero else 1.0
    for name, res in results_by_name.items():
        rows = res["by_memory"]
        xs = [r["memory"] for r in rows if r["memory"] > 0]
        ys = [r["perplexity"] for r in rows if r["memory"] > 0]
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        zero = [r["perplexity"] for r in rows if r["memory"] == 0]
        if zero:
            color = line.get_color()
            ax.plot([zero_x], zero, marker="s", mfc="none", color=color, linestyle="none")
            if xs:
                ax.plot([zero_x, xs[0]], [zero[0], ys[0]], linestyle=":", color=color)
    ax.set_xscale("log", base=2)
    ticks = sorted(set(nonzero))
    ax.set_xticks([zero_x, *ticks])
    ax.set_xticklabels(["none", *(_tokens_label(m) for m in ticks)])
    ax.set_xlabel("memory (tokens of the document before the span)")
    ax.set_ylabel("perplexity of the span")
    ax.set_title("Perplexity against memory size")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, png)


def _tokens_label(m: int) -> str:
    if m % (1 << 20) == 0:
        return f"{m >> 20}M"
    if m % (1 << 10) == 0:
        return f"{m >> 10}K"
    return str(m)
