"""Runs evaluation steps one after another in ONE process, so that each model is loaded once,
Python, torch and CUDA start once (each costs seconds per step on a GPU machine), and the
perplexity steps of a model (single-document, multi-document, hnsw) read each prefix once.

A steps file holds one step a line: the evaluation (distraction, perplexity or passkey) and its
command-line options, as `fot-mem eval <evaluation>` takes them; `#` starts a comment.
Every step writes its own JSON when it is done; a step that fails is reported and the next one
runs. `--skip-done` skips the steps whose `--json` file holds a complete result (a second run after
a crash or a timeout).

Each step runs through a function of its options (`evals`: the command line's parsers, which
this library does not import): `fot-mem eval suite STEPS [--skip-done] [--summary FILE]`; exit
status 1 when a step failed."""

from __future__ import annotations

import gc
import json
import shlex
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..exceptions import InvalidValueError
from ..torch.weights import keep_models
from . import common, perplexity

# An evaluation run from its command-line options (a step's words after the first).
Evaluation = Callable[[Sequence[str]], Any]


def parse_steps(text: str, evals: Sequence[str]) -> list[list[str]]:
    """Steps of a steps file: [evaluation, options...] per non-empty, non-comment line;
    `evals`: the evaluations' names."""
    steps = []
    for n, line in enumerate(text.splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] not in evals:
            raise InvalidValueError(
                f"line {n}: unknown evaluation {words[0]!r} (one of {', '.join(evals)})"
            )
        steps.append(words)
    return steps


def json_path(options: Sequence[str]) -> str | None:
    """The step's `--json` file, if it names one."""
    for i, word in enumerate(options):
        if word == "--json" and i + 1 < len(options):
            return options[i + 1]
        if word.startswith("--json="):
            return word.split("=", 1)[1]
    return None


def done(path: str | None) -> bool:
    """A step's JSON exists and is not a partial result (`"complete": false`)."""
    if path is None or not Path(path).is_file():
        return False
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return not (isinstance(result, dict) and result.get("complete") is False)


def _label(step: Sequence[str]) -> str:
    out = json_path(step[1:])
    return f"{step[0]} -> {out}" if out else " ".join(step)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def run(
    steps: Sequence[Sequence[str]], evals: Mapping[str, Evaluation], *, skip_done: bool = False
) -> list[dict[str, Any]]:
    """Runs `steps` in order, each with `evals[step[0]]`, each model loaded once; returns per
    step {step, json, status ("ok", "failed", "skipped"), seconds, error}."""
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    keep_models(True)
    perplexity.share_prefixes(True)  # a model's perplexity steps read each prefix once
    try:
        for i, step in enumerate(steps):
            out = json_path(step[1:])
            row: dict[str, Any] = {"step": " ".join(step), "json": out, "error": None}
            label = f"[suite] step {i + 1}/{len(steps)} {_label(step)}"
            if skip_done and done(out):
                print(f"{label}: done before, skipped", flush=True)
                rows.append({**row, "status": "skipped", "seconds": 0.0})
                continue
            print(f"{label}: started", flush=True)
            t0 = time.perf_counter()
            try:
                evals[step[0]](list(step[1:]))
                _sync()
                row["status"] = "ok"
            except (Exception, SystemExit) as e:  # a bad option exits; the next step still runs
                traceback.print_exc()
                row["status"] = "failed"
                row["error"] = f"{type(e).__name__}: {e}"
            row["seconds"] = time.perf_counter() - t0
            gc.collect()  # the step's mirrors and stores, before the next step's
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # and what an out-of-memory step left behind
            rows.append(row)
            mark = "ok" if row["status"] == "ok" else f"FAILED ({row['error']})"
            print(
                f"{label}: {mark} in {row['seconds']:.1f} s "
                f"({time.perf_counter() - started:.1f} s in all)",
                flush=True,
            )
    finally:
        perplexity.share_prefixes(False)
        keep_models(False)
    return rows


def run_file(
    steps_file: str | Path,
    evals: Mapping[str, Evaluation],
    *,
    skip_done: bool = False,
    summary: str | Path | None = None,
) -> int:
    """Runs a steps file's steps (`run`); writes every step's status and seconds to `summary`;
    returns 1 when a step failed, else 0."""
    steps = parse_steps(Path(steps_file).read_text(), list(evals))
    t0 = time.perf_counter()
    rows = run(steps, evals, skip_done=skip_done)
    failed = [r["step"] for r in rows if r["status"] == "failed"]
    if summary:
        common.write_json(
            summary, {"steps": rows, "seconds": time.perf_counter() - t0, "failed": failed}
        )
    print(
        f"[suite] {len(rows) - len(failed)}/{len(rows)} steps ok in "
        f"{time.perf_counter() - t0:.1f} s" + (f"; FAILED: {failed}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0
