"""What a passkey evaluation reports: a row per prompt, the result over the prompts done so far,
progress lines, and the plots (accuracy against length, a length x depth heatmap per model)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..torch.reader import LongDocumentReader
from .common import pyplot
from .passkey_prompts import Case, Tokenizer, first_number


def _accuracy(rows: Sequence[dict[str, Any]]) -> float:
    return sum(r["correct"] for r in rows) / len(rows)


def summarize(
    rows: Sequence[dict[str, Any] | None],
    lengths: Sequence[int],
    depths: Sequence[float],
    settings: dict[str, Any],
    tokens_read: int,
    tokens_in_memory: int,
    read_s: float,
    generate_s: float,
    seconds: float,
    complete: bool,
) -> dict[str, Any]:
    """The result over the prompts done so far (all of them when `complete`); a length or
    (length, depth) with no prompt done yet is left out."""
    done = [r for r in rows if r is not None]

    def acc(length: int, depth: float | None = None) -> float | None:
        chosen = [
            r for r in done if r["length"] == length and (depth is None or r["depth"] == depth)
        ]
        return _accuracy(chosen) if chosen else None

    accuracy = {str(n): acc(n) for n in lengths}
    by_depth = {str(n): {str(d): acc(n, d) for d in depths} for n in lengths}
    return {
        "task": "passkey",
        "complete": complete,
        "accuracy": {n: a for n, a in accuracy.items() if a is not None},
        "accuracy_by_depth": {
            n: {d: a for d, a in row.items() if a is not None}
            for n, row in by_depth.items()
            if any(a is not None for a in row.values())
        },
        "trials": done,
        "settings": settings,
        "tokens_read": tokens_read,
        "tokens_in_memory": tokens_in_memory,  # what reading every prompt whole would read
        "read_seconds": read_s,
        "generate_seconds": generate_s,
        "tokens_per_s": tokens_read / read_s if read_s > 0 else None,
        "seconds": seconds,
    }


def result_row(
    case: Case,
    tokenizer: Tokenizer,
    answer: list[int],
    reader: LongDocumentReader,
    read: int,
    cut: int,
    seconds: float,
) -> dict[str, Any]:
    text = tokenizer.decode(list(answer))
    number = first_number(text)
    p = case.prompt
    return {
        "length": case.length,
        "depth": case.depth,
        "trial": case.trial,
        "key": p.key,
        "key_start": p.key_start,
        "key_in_memory": p.key_end <= cut,
        "answer": text,
        "number": number,
        "correct": number == p.key,
        "memory_tokens": reader.memory_tokens(),
        "tokens_read": read,
        "seconds": seconds,
    }


def progress_line(n: int, total: int, row: dict[str, Any], t_start: float) -> str:
    mark = "ok" if row["correct"] else "--"
    return (
        f"{n + 1}/{total} length {row['length']} depth {row['depth']:g} trial {row['trial']}: "
        f"key {row['key']} -> {row['answer']!r} {mark} (read {row['tokens_read']} tokens, "
        f"{row['seconds']:.2f} s; {time.perf_counter() - t_start:.0f} s in all)"
    )


# -- plot ----------------------------------------------------------------------------------------


def plot(results_by_model: Mapping[str, Any], png: str | os.PathLike[str]) -> Path:
    """Accuracy against prompt length (log2 axis), one line per model, and a length x depth
    heatmap per model. `results_by_model`: name -> result of `passkey`, or one result alone."""
    if "accuracy" in results_by_model:
        results_by_model = {str(results_by_model.get("name", "model")): results_by_model}
    plt = pyplot()
    runs = list(results_by_model.items())
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5.5 * (len(runs) + 1), 4.2), squeeze=False)
    ax = axes[0][0]
    for name, res in runs:
        xs = sorted(int(n) for n in res["accuracy"])
        ax.plot(xs, [res["accuracy"][str(n)] for n in xs], marker="o", label=name)
    ax.axhline(0.9, color="gray", linestyle=":", linewidth=1)  # the goal at 100K
    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for _, res in runs for n in res["accuracy"]})
    ax.set_xticks(ticks, [_tokens_label(n) for n in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("passkey accuracy")
    ax.set_title("Passkey retrieval")
    ax.grid(True, alpha=0.3)
    ax.legend()
    image = None
    for ax, (name, res) in zip(axes[0][1:], runs):
        local = {(r["length"], r["depth"]) for r in res.get("trials", []) if not r["key_in_memory"]}
        image = _heatmap(ax, name, res["accuracy_by_depth"], local)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0][1:]), label="accuracy")
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _heatmap(
    ax: Any,
    name: str,
    by_depth: Mapping[str, Mapping[str, float]],
    local: set[tuple[int, float]],
) -> Any:
    """Accuracy by depth (rows) and length (columns); `*` marks cells where the key was in
    the local window (the tail) rather than in memory."""
    lengths = sorted(by_depth, key=int)
    depths = sorted({d for row in by_depth.values() for d in row}, key=float)
    grid = np.array([[by_depth[n].get(d, np.nan) for n in lengths] for d in depths], dtype=float)
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    for (r, c), v in np.ndenumerate(grid):
        if not np.isnan(v):
            star = "*" if (int(lengths[c]), float(depths[r])) in local else ""
            color = "w" if v < 0.6 else "k"
            ax.text(c, r, f"{v:.2f}{star}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(lengths)), [_tokens_label(int(n)) for n in lengths])
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("depth of the key")
    ax.set_title(f"{name} (* key in the local window)" if local else name)
    return image


def _tokens_label(n: int) -> str:
    for unit, name in ((1 << 20, "M"), (1 << 10, "K")):
        if n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)
