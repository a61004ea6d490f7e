"""`fot-mem eval suite STEPS`: evaluation steps (`fot-mem eval` command lines) one after another
in one process, each model loaded once (`fot_mem.eval.suite`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ...eval import suite
from ...eval.suite import done, json_path
from . import distraction, passkey, perplexity
from .options import in_process

NAME = "suite"
HELP = "evaluation steps in one process, each model loaded once"

# A step's evaluation, run from its options as `fot-mem eval <name>` would.
EVALS: dict[str, suite.Evaluation] = {m.NAME: m.main for m in (distraction, perplexity, passkey)}

__all__ = ["EVALS", "done", "json_path", "main", "parse_steps", "run"]


def parse_steps(text: str) -> list[list[str]]:
    """`suite.parse_steps` over this command line's evaluations."""
    return suite.parse_steps(text, list(EVALS))


def run(steps: Sequence[Sequence[str]], *, skip_done: bool = False) -> list[dict[str, Any]]:
    """`suite.run` with this command line's evaluations."""
    return suite.run(steps, EVALS, skip_done=skip_done)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("steps", help="steps file: an evaluation and its options per line")
    p.add_argument("--skip-done", action="store_true", help="skip steps whose --json exists")
    p.add_argument("--summary", help="JSON file of every step's status and seconds")


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return suite.run_file(args.steps, EVALS, skip_done=args.skip_done, summary=args.summary)


def main(argv: Sequence[str] | None = None) -> int:
    """The command in-process: 1 when a step failed, else 0."""
    return in_process(NAME, suite.__doc__, add_arguments, command, argv)
