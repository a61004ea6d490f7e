"""Loss curves and a summary table of training runs (each a folder with metrics.jsonl).

    python benches/experiments/report/train_curves.py bench-results/train-h200 \
        --png bench-results/train-h200/curves.png

Prints a Markdown table: validation loss at every evaluated d at the last step, and the mean
training loss of the last `--tail` steps with the median step time. The plot has one panel per
evaluated d (validation loss against step, every run) and one of the training loss, smoothed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def load(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Run name -> its metrics rows, for every sub-folder holding metrics.jsonl (sorted)."""
    runs = {}
    for metrics in sorted(folder.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if rows:
            runs[metrics.parent.name] = rows
    if not runs:
        raise SystemExit(f"no */metrics.jsonl under {folder}")
    return runs


def eval_keys(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    keys = {k for rows in runs.values() for r in rows for k in r if k.startswith("val_loss_d")}
    return sorted(keys, key=lambda k: int(k.removeprefix("val_loss_d")))


def table(runs: dict[str, list[dict[str, Any]]], tail: int) -> str:
    keys = eval_keys(runs)
    head = ["run", "steps"] + [f"val d={k.removeprefix('val_loss_d')}" for k in keys]
    head += [f"train loss (last {tail})", "step s (median)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in runs.items():
        trained = [r for r in rows if "loss" in r]
        evaluated = [r for r in rows if keys[0] in r]
        last = evaluated[-1] if evaluated else {}
        cells = [name, str(trained[-1]["step"] if trained else 0)]
        cells += [f"{last[k]:.4f}" if k in last else "" for k in keys]
        if trained:
            cells.append(f"{statistics.fmean(r['loss'] for r in trained[-tail:]):.4f}")
            cells.append(f"{statistics.median(r['step_s'] for r in trained):.3f}")
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def smooth(values: list[float], width: int) -> list[float]:
    """Trailing mean over `width` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def plot(runs: dict[str, list[dict[str, Any]]], png: Path, width: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = eval_keys(runs)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(5 * (len(keys) + 1), 4), squeeze=False)
    for name, rows in runs.items():
        for ax, key in zip(axes[0], keys):
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points), marker=".", label=name)
        trained = [r for r in rows if "loss" in r]
        if trained:
            steps = [r["step"] for r in trained]
            axes[0][-1].plot(steps, smooth([r["loss"] for r in trained], width), label=name)
    for ax, key in zip(axes[0], keys):
        ax.set_title(f"validation loss, d = {key.removeprefix('val_loss_d')} contexts")
    axes[0][-1].set_title(f"training loss (mean of {width} steps)")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder of run folders")
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--tail", type=int, default=100, help="training steps averaged in the table")
    p.add_argument("--smooth", type=int, default=50, help="training steps per plotted point")
    args = p.parse_args(argv)
    runs = load(args.folder)
    print(table(runs, args.tail))
    if args.png:
        plot(runs, args.png, args.smooth)


if __name__ == "__main__":
    main()
