"""Markdown tables of saved evaluation results (fot_mem.eval's JSON), for the README.

    python benches/experiments/report/eval_tables.py bench-results/eval-h200/pipeline \
        bench-results/eval-h200/six-docs bench-results/eval-cpu

For every folder: distraction (r_d per model and d), perplexity against memory size (one column
per result file, with the change against no memory) and passkey accuracy by length. Every figure
is read from the files, none is typed in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _load(folder: Path, pattern: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(folder.glob(pattern)):
        result = json.loads(path.read_text())
        out.append((result.get("name", path.stem), result))
    return out


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = [_row(head), _row(["---"] * len(head))] + [_row(r) for r in rows]
    return "\n".join(lines)


def _tokens(n: int) -> str:
    return "none" if n == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def distraction_table(result: dict[str, Any]) -> str:
    models = result["models"]
    ds = sorted({row["d"] for m in models.values() for row in m["results"]})
    rows = []
    for name, m in models.items():
        by_d = {row["d"]: row["r"] for row in m["results"]}
        rows.append([name] + [f"{by_d[d]:.3f}" if d in by_d else "" for d in ds])
        labels = [
            ("r_without_first_keys", "no sinks"),
            ("first_key_share", "sinks' share"),
            ("r_weighted", "r weighted by memory use"),
            ("memory_share", "memory's share"),
        ]
        for key, label in labels:  # figures that results saved before them lack
            if all(key in row for row in m["results"]):
                by = {row["d"]: row[key] for row in m["results"]}
                rows.append([f"{name}, {label}"] + [f"{by[d]:.3f}" if d in by else "" for d in ds])
    rows.append(["1/d"] + [f"{1 / d:.3f}" for d in ds])
    return _table(["model"] + [f"r_{d}" for d in ds], rows)


def perplexity_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    sizes = sorted({b["memory"] for _, r in results for b in r["by_memory"]})
    rows = []
    for size in sizes:
        cells = [_tokens(size)]
        for _, r in results:
            by = {b["memory"]: b["perplexity"] for b in r["by_memory"]}
            if size not in by:
                cells.append("")
                continue
            cell = f"{by[size]:.3f}"
            if size and 0 in by:
                cell += f" ({100 * (by[size] / by[0] - 1):+.1f}%)"
            cells.append(cell)
        rows.append(cells)
    return _table(["memory"] + [name for name, _ in results], rows)


def scored(results: list[tuple[str, dict[str, Any]]]) -> str:
    """Documents and scored tokens behind a perplexity table (the same for every file)."""
    counts = {(len(r.get("documents", [])), r["by_memory"][0]["tokens"]) for _, r in results}
    return ", ".join(f"{docs} documents, {tokens:,} scored tokens" for docs, tokens in counts)


def passkey_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    lengths = sorted({int(n) for _, r in results for n in r["accuracy"]})
    rows = [
        [name] + [f"{r['accuracy'].get(str(n), float('nan')):.2f}" for n in lengths]
        for name, r in results
    ]
    return _table(["model"] + [_tokens(n) for n in lengths], rows)


def tables(folder: Path) -> str:
    parts = [f"## {folder}"]
    for distraction in sorted(folder.glob("distraction*.json")):
        table = distraction_table(json.loads(distraction.read_text()))
        parts += [f"### distraction ({distraction.name})", table]
    ppl = _load(folder, "ppl*.json")
    if ppl:
        parts += [f"### perplexity ({scored(ppl)})", perplexity_table(ppl)]
    passkey = _load(folder, "passkey-*.json")
    if passkey:
        parts += ["### passkey accuracy", passkey_table(passkey)]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args(argv)
    text = "\n\n".join(tables(f) for f in args.folders)
    print(text)
    return text


if __name__ == "__main__":
    main()
