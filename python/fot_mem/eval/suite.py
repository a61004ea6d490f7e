"""Runs evaluation steps one after another in ONE process, so that each model is loaded once,
Python, torch and CUDA start once (each costs seconds per step on a GPU machine), and the
perplexity steps of a model (single-document, multi-document, hnsw) read each prefix once.

A steps file holds one step a line: the evaluation (distraction, perplexity or passkey) and its
command-line options, as `python -m fot_mem.eval.<evaluation>` takes them; `#` starts a comment.
Every step writes its own JSON when it is done; a step that fails is reported and the next one
runs. `--skip-done` skips the steps whose `--json` file holds a complete result (a second run after
a crash or a timeout).

`python -m fot_mem.eval.suite STEPS [--skip-done] [--summary FILE]`; exit status 1 when a step
failed."""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..exceptions import InvalidValueError
from . import common, distraction, passkey, perplexity

EVALS: dict[str, Callable[[Sequence[str] | None], Any]] = {
    "distraction": distraction.main,
    "perplexity": perplexity.main,
    "passkey": passkey.main,
}


def parse_steps(text: str) -> list[list[str]]:
    """Steps of a steps file: [evaluation, options...] per non-empty, non-comment line."""
    steps = []
    for n, line in enumerate(text.splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] not in EVALS:
            raise InvalidValueError(
                f"line {n}: unknown evaluation {words[0]!r} (one of {', '.join(EVALS)})"
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


def run(steps: Sequence[Sequence[str]], *, skip_done: bool = False) -> list[dict[str, Any]]:
    """Runs `steps` in order, each model loaded once; returns per step {step, json, status
    ("ok", "failed", "skipped"), seconds, error}."""
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    common.keep_models(True)
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
                EVALS[step[0]](list(step[1:]))
                _sync()
                row["status"] = "ok"
            except (Exception, SystemExit) as e:  # argparse exits; the next step still runs
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
        common.keep_models(False)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fot_mem.eval.suite", description=__doc__)
    p.add_argument("steps", help="steps file: an evaluation and its options per line")
    p.add_argument("--skip-done", action="store_true", help="skip steps whose --json exists")
    p.add_argument("--summary", help="JSON file of every step's status and seconds")
    args = p.parse_args(argv)
    steps = parse_steps(Path(args.steps).read_text())
    t0 = time.perf_counter()
    rows = run(steps, skip_done=args.skip_done)
    failed = [r["step"] for r in rows if r["status"] == "failed"]
    if args.summary:
        common.write_json(
            args.summary, {"steps": rows, "seconds": time.perf_counter() - t0, "failed": failed}
        )
    print(
        f"[suite] {len(rows) - len(failed)}/{len(rows)} steps ok in "
        f"{time.perf_counter() - t0:.1f} s" + (f"; FAILED: {failed}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
