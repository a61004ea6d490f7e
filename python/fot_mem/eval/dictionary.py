"""The dictionary lookup evaluation (paper section 5.2): accuracy against memory size N.

For each N, a dictionary of N tokens of definitions goes into a `MemoryStore` document (`fill`,
one process); another process reopens the store and answers query windows on keys defined
anywhere in it, with top-k retrieval (`answer`). The model without memory reads the definitions
and the queries as one local context (`baseline`). `focus` measures r_d on dictionary windows:
the attention on the positive's keys over that on d contexts', at the tokens that predict an
answer. Accuracy counts the answer tokens predicted right (teacher-forced greedy); `exact` the
queries whose value tokens are all right."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dictionary import Dictionary, DictionaryTask
from ..exceptions import InvalidValueError
from ..store import MemoryStore
from ..torch import FotForCausalLM
from ..torch.fill import fill_document
from ..torch.reader import LongDocumentReader, create_store
from .common import pyplot, save_figure
from .distraction import attention_stats

DS = (1, 2, 4, 8, 16, 32, 64, 128)


def document_name(tokens: int) -> str:
    return f"N{tokens}"


def fill(
    model: FotForCausalLM,
    path: str | Path,
    task: DictionaryTask,
    sizes: Sequence[int],
    *,
    seed: int = 0,
    batch_windows: int = 512,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Each size's dictionary into its own document of a store at `path` (made if absent, in
    bfloat16; resumes a document begun before). Returns {N: {"tokens", "seconds",
    "tokens_per_s", "append_s"}}."""
    path = Path(path)
    store = (
        MemoryStore.open(path)
        if path.is_dir() and any(path.iterdir())  # absent or empty: a new store
        else create_store(path, model, dtype="bfloat16", chunk_tokens=1 << 20)
    )
    out: dict[str, Any] = {}
    with store:
        for n in sizes:
            book = task.dictionary(n, seed)
            w = task.window

            def cut(start: int, stop: int, book: Dictionary = book, w: int = w) -> np.ndarray:
                return book.definitions(start // w, -(-stop // w)).reshape(-1)

            found = fill_document(
                model,
                store.document(document_name(n)),
                cut,
                window=w,
                total=n,
                batch_windows=batch_windows,
            )
            found["tokens_per_s"] = found["tokens"] / max(found["seconds"], 1e-9)
            out[str(n)] = found
            if progress is not None:
                progress(
                    f"fill N={n:,}: {found['tokens']:,} tokens in {found['seconds']:.1f}s "
                    f"({found['tokens_per_s'] / 1e6:.2f}M tok/s; append {found['append_s']:.1f}s)"
                )
    return out


def score_window(
    logits: torch.Tensor, tokens: np.ndarray, mask: np.ndarray, task: DictionaryTask
) -> tuple[float, float]:
    """(token accuracy, exact-query accuracy) of one query window: `logits [W, vocab]` for
    inputs `tokens[:-1]`, targets `tokens[1:]` counted where `mask`."""
    pred = logits.float().argmax(-1).cpu().numpy()
    target = tokens[1:]
    right = (pred == target)[mask]
    per_query = right.reshape(-1, task.value_len).all(axis=1)
    return float(right.mean()), float(per_query.mean())


def answer(
    model: FotForCausalLM,
    path: str | Path,
    task: DictionaryTask,
    sizes: Sequence[int],
    *,
    seed: int = 0,
    query_sets: int = 4,
    k: int = 32,
    mirror: str | None = None,
    backend: str = "exact",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Opens the store read-only and answers `query_sets` query windows per size with top-`k`
    retrieval (the CPU store's `backend`, or a `mirror` device). Returns {N: {"accuracy" (mean
    over query sets), "min", "max", "exact", "per_set", "open_s", "answer_s"}}."""
    out: dict[str, Any] = {}
    with MemoryStore.open(path, readonly=True) as store:
        for n in sizes:
            name = document_name(n)
            if name not in store:
                raise InvalidValueError(f"the store at {path} holds no dictionary of {n} tokens")
            book = task.dictionary(n, seed)
            started = time.perf_counter()
            reader = LongDocumentReader(
                model, store.document(name), window=task.window, k=k, backend=backend, mirror=mirror
            )
            if reader.memory_tokens() != n:
                raise InvalidValueError(
                    f"{name} holds {reader.memory_tokens()} tokens, not {n}: fill it first"
                )
            opened = time.perf_counter()
            accs, exact = [], []
            for i in range(query_sets):
                tokens, mask = book.queries(i)
                logits = reader.logits(torch.from_numpy(tokens[:-1]))
                a, e = score_window(logits, tokens, mask, task)
                accs.append(a)
                exact.append(e)
            done = time.perf_counter()
            out[str(n)] = _summary(accs, exact) | {
                "open_s": opened - started,
                "answer_s": done - opened,
            }
            if progress is not None:
                progress(
                    f"answer N={n:,}: accuracy {np.mean(accs):.3f} (min {min(accs):.3f}, max "
                    f"{max(accs):.3f}), exact {np.mean(exact):.3f}; open {opened - started:.1f}s, "
                    f"answer {done - opened:.1f}s"
                )
            del reader
    return out


def _summary(accs: list[float], exact: list[float]) -> dict[str, Any]:
    return {
        "accuracy": float(np.mean(accs)),
        "min": float(min(accs)),
        "max": float(max(accs)),
        "exact": float(np.mean(exact)),
        "per_set": accs,
    }


@torch.no_grad()
def baseline(
    model: FotForCausalLM,
    task: DictionaryTask,
    sizes: Sequence[int],
    *,
    seed: int = 0,
    query_sets: int = 4,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """A model without memory reads each dictionary and a query window as one local context
    (its positions run past those it was trained on). Returns {N: summary}; a size whose
    context does not fit the device's memory ends the list ("out_of_memory": N)."""
    device = next(model.parameters()).device
    out: dict[str, Any] = {}
    for n in sizes:
        book = task.dictionary(n, seed)
        defs = torch.from_numpy(book.definitions().reshape(-1))
        accs, exact = [], []
        started = time.perf_counter()
        for i in range(query_sets):
            tokens, mask = book.queries(i)
            ids = torch.cat((defs, torch.from_numpy(tokens[:-1]))).to(device)
            try:
                logits = model(ids[None]).logits[0, n:]
            except torch.OutOfMemoryError:
                out["out_of_memory"] = n
                return out
            a, e = score_window(logits, tokens, mask, task)
            accs.append(a)
            exact.append(e)
        out[str(n)] = _summary(accs, exact) | {"answer_s": time.perf_counter() - started}
        if progress is not None:
            progress(f"baseline N={n:,}: accuracy {np.mean(accs):.3f}")
    return out


def focus(
    model: FotForCausalLM,
    task: DictionaryTask,
    ds: Sequence[int] = DS,
    *,
    windows: int = 16,
    seed: int = 0,
    batch: int = 4,
) -> dict[str, Any]:
    """r_d on dictionary windows: query windows of `windows` documents, each with its own
    definitions (the positive) and those of d-1 other documents in memory. r is averaged over
    the tokens that predict an answer ("r_d"; per query head: "r_d_heads", memory layers
    one after another) and over every token ("r_d_all_tokens")."""
    docs = max(max(ds), windows)
    b = task.training_batch(seed, 0, docs)
    defs = b.prev[:, 0]  # [docs, W]
    current = b.curr[:windows, :-1]
    mask = b.mask
    assert mask is not None
    order = (torch.arange(windows)[:, None] + torch.arange(max(ds))[None, :]) % docs
    contexts = defs[order]  # [windows, max d, W]: own definitions first
    device = next(model.parameters()).device
    found = attention_stats(model, current.to(device), contexts.to(device), ds, batch=batch)
    answered = attention_stats(
        model,
        current.to(device),
        contexts.to(device),
        ds,
        batch=batch,
        positions=mask[:windows].to(device),
    )
    # r_d at each answer slot (the token predicting value token j): one slot reading memory
    # evenly shows as r_d flat in d at (slots - 1) / slots, not as falling toward 1/d
    rank = mask[:windows].long().cumsum(1) - 1
    slots = {}
    for j in range(task.value_len):
        at = mask[:windows] & (rank % task.value_len == j)
        st = attention_stats(
            model, current.to(device), contexts.to(device), ds, batch=batch, positions=at.to(device)
        )
        slots[str(j + 1)] = {str(d): float(st[d][..., 0].mean()) for d in ds}
    return {
        "r_d": {str(d): float(answered[d][..., 0].mean()) for d in ds},
        "r_d_slots": slots,
        "r_d_all_tokens": {str(d): float(found[d][..., 0].mean()) for d in ds},
        "memory_share": {str(d): float(answered[d][..., 3].mean()) for d in ds},
        # attention on the positive over attention on all of memory, summed over heads
        "r_d_weighted": {str(d): float(answered[d][..., 4].mean()) for d in ds},
        # r_d of each query head of each memory layer: which heads focus
        "r_d_heads": {str(d): answered[d][..., 5:].mean(dim=1).flatten().tolist() for d in ds},
    }


def plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """accuracy.png (accuracy against N, min-max bands) and focus.png (r_d against d)."""
    plt = pyplot()
    names = {"fot": "FoT (crossbatch)", "control_d1": "control (d = 1)", "baseline": "baseline"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in names.items():
        answers = results.get(key, {}).get("answers")
        if not answers:
            continue
        ns = sorted(answers, key=int)
        x = [int(n) for n in ns]
        ax.plot(x, [answers[n]["accuracy"] for n in ns], marker="o", label=label)
        ax.fill_between(
            x, [answers[n]["min"] for n in ns], [answers[n]["max"] for n in ns], alpha=0.2
        )
    if "chance" in results:
        ax.axhline(results["chance"], color="k", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory size N (tokens)")
    ax.set_ylabel("answer-token accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Dictionary lookup, k = 32 ({results.get('device', '')})")
    out = [save_figure(fig, folder / "accuracy.png")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("fot", "control_d1"):
        r = results.get(key, {}).get("r_d")
        if r:
            ds = sorted(r, key=int)
            ax.plot([int(d) for d in ds], [r[d] for d in ds], marker="o", label=names[key])
    if ax.lines:
        ds = [
            int(d)
            for d in sorted(results["fot" if "fot" in results else "control_d1"]["r_d"], key=int)
        ]
        ax.plot(ds, [1 / d for d in ds], "k:", label="1/d")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("contexts in memory d")
        ax.set_ylabel("r_d (answer tokens)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        out.append(save_figure(fig, folder / "focus.png"))
    return out
