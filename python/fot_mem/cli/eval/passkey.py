"""`fot-mem eval passkey`: passkey retrieval accuracy by prompt length and depth of the key."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ... import backends
from ...eval import passkey
from .options import (
    add_model_options,
    add_one_model,
    add_plot_options,
    comma_list,
    in_process,
    load_options,
    plot_only,
)

NAME = "passkey"
HELP = "Passkey retrieval: accuracy by prompt length and depth of the key."


def add_arguments(a: argparse.ArgumentParser) -> None:
    add_one_model(a)
    a.add_argument("--lengths", type=comma_list(int), default=[4096, 16384, 65536, 131072, 262144])
    a.add_argument("--depths", type=comma_list(float), default=[0.1, 0.5, 0.9])
    a.add_argument("--trials", type=int, default=5)
    a.add_argument("--window", type=int, default=1024, help="local window of the reader")
    a.add_argument("--k", type=int, help="memories per query and head (default memory_k)")
    a.add_argument("--tail", type=int, help="tokens continued locally (default window // 2)")
    a.add_argument("--digits", type=int, default=5)
    a.add_argument("--filler", choices=("repeat", "data"), help="default: data if --filler-data")
    a.add_argument("--filler-data", help="token-shard build whose documents are the filler")
    a.add_argument("--filler-split", default="val")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--backend", default="exact", choices=backends.BACKENDS)
    a.add_argument("--mirror", help="memory device, searched exactly ('none': the CPU store; "
                   "default: --device)")  # fmt: skip
    a.add_argument("--no-share", action="store_true", help="read every prompt whole")
    a.add_argument("--tokenizer", default="gguf", choices=("gguf", "bytes"))
    a.add_argument("--gguf", help="GGUF file of the tokenizer (default: SmolLM2's)")
    add_model_options(a)
    add_plot_options(a)


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    drawn = plot_only(args, parser, passkey.plot)
    if drawn is not None:
        return drawn
    if not args.model:
        parser.error("--model is required (or --plot JSON... --png)")
    kind = args.filler or ("data" if args.filler_data else "repeat")
    if kind == "data" and not args.filler_data:
        parser.error("--filler data needs --filler-data DIR")
    return passkey.run(
        args.model,
        name=args.name,
        lengths=args.lengths,
        depths=args.depths,
        trials=args.trials,
        window=args.window,
        k=args.k,
        tail=args.tail,
        digits=args.digits,
        filler_data=args.filler_data if kind == "data" else None,
        filler_split=args.filler_split,
        seed=args.seed,
        backend=args.backend,
        mirror=args.mirror,
        share=not args.no_share,
        tokenizer=args.tokenizer,
        gguf=args.gguf,
        load=load_options(args),
        json=args.json,
        png=args.png,
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command in-process, errors raised (`fot_mem.cli.main` turns them into messages)."""
    return in_process(NAME, HELP, add_arguments, command, argv)
