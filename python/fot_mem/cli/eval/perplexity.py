"""`fot-mem eval perplexity`: perplexity against memory size on held-out long documents;
`--plot a.json b.json --png out.png` draws saved results together."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ... import backends
from ...eval import perplexity, perplexity_run
from .options import (
    add_model_options,
    add_one_model,
    add_plot_options,
    comma_list,
    in_process,
    load_options,
    plot_only,
)

NAME = "perplexity"
HELP = "Perplexity against memory size on held-out long documents."


def add_arguments(a: argparse.ArgumentParser) -> None:
    add_one_model(a)
    a.add_argument("--data", help="token shards (fot-mem data build ...)")
    a.add_argument("--split", default="val")
    a.add_argument("--memory", type=comma_list(int), default=[0, 2048, 8192, 32768, 131072])
    a.add_argument("--span", type=int, default=2048, help="tokens scored after the prefix")
    a.add_argument("--window", type=int, help="local window (default min(2048, model's))")
    a.add_argument("--k", type=int, help="memories per query and head (default memory_k)")
    a.add_argument("--backend", default="exact", choices=backends.BACKENDS)
    a.add_argument("--ef", type=int)
    a.add_argument("--mirror", help="device for exact search, e.g. cuda")
    a.add_argument("--docs", type=int, default=0, help="documents evaluated (0: all that fit)")
    a.add_argument(
        "--only",
        type=comma_list(str),
        help="evaluate the documents whose id starts with one of these, e.g. rust-src,golang",
    )
    a.add_argument("--multi-doc", type=int, default=0, help="distractor documents in memory")
    a.add_argument("--distractor-tokens", type=int, default=8192)
    a.add_argument("--limit-memory", action="store_true", help="drop sizes no document fits")
    add_model_options(a)
    a.add_argument("--store-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    a.add_argument("--stores", help="keep the stores in this folder (default: temporary)")
    add_plot_options(a)


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    drawn = plot_only(args, parser, perplexity.plot)
    if drawn is not None:
        return drawn
    if not args.model or not args.data:
        parser.error("--model and --data are required (or --plot JSON... --png)")
    return perplexity_run.run(
        args.model,
        args.data,
        name=args.name,
        split=args.split,
        memory=args.memory,
        span=args.span,
        window=args.window,
        k=args.k,
        backend=args.backend,
        ef=args.ef,
        mirror=args.mirror,
        docs=args.docs,
        only=args.only,
        multi_doc=args.multi_doc,
        distractor_tokens=args.distractor_tokens,
        limit_memory=args.limit_memory,
        store_dtype=args.store_dtype,
        stores=args.stores,
        load=load_options(args),
        json=args.json,
        png=args.png,
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command in-process, errors raised (`fot_mem.cli.main` turns them into messages)."""
    return in_process(NAME, HELP, add_arguments, command, argv)
