"""`fot-mem eval distraction`: the positive attention mass r_d of one or more models (paper
section 3.3), JSON and a plot."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...eval import distraction_run
from ...eval.distraction import DEFAULT_DS
from ...exceptions import InvalidValueError
from .options import add_model_options, in_process, load_options

NAME = "distraction"
HELP = "the positive attention mass r_d against d (paper section 3.3)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="run/checkpoint/delta folder, .gguf, fot-smollm2 or base",
    )
    p.add_argument("--name", action="append", help="a name per --model (default: the spec)")
    p.add_argument("--data", required=True, help="token shards (fot-mem data build)")
    p.add_argument("--split", default="val")
    p.add_argument("--d", default=",".join(map(str, DEFAULT_DS)), help="e.g. 1,2,4,8,16,32,64")
    p.add_argument("--windows", type=int, default=16, help="query windows")
    p.add_argument("--window", type=int, default=1024, help="tokens per window")
    p.add_argument("--batch", type=int, default=8, help="windows per forward")
    p.add_argument("--pool", type=int, help="shared negative windows (default 2 * (max d - 1))")
    p.add_argument("--seed", type=int, default=0)
    add_model_options(p)
    p.add_argument("--json", required=True)
    p.add_argument("--png", required=True)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidValueError(f"expected comma-separated integers, got {text!r}") from None


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    names = args.name or [Path(m).name or m for m in args.model]
    if len(names) != len(args.model) or len(set(names)) != len(names):
        raise InvalidValueError(f"give one distinct --name per --model, got {names}")
    return distraction_run.run(
        list(zip(names, args.model)),
        args.data,
        json=args.json,
        png=args.png,
        ds=_ints(args.d),
        split=args.split,
        windows=args.windows,
        window=args.window,
        batch=args.batch,
        pool=args.pool,
        seed=args.seed,
        load=load_options(args),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command in-process, errors raised (`fot_mem.cli.main` turns them into messages)."""
    return in_process(NAME, HELP, add_arguments, command, argv)
