"""`fot-mem data build|info`: a token-shard data set from Debian packages (`fot_mem.train.data`),
or what one holds.

    fot-mem data build --set code --out data/code --tokenizer bytes
    fot-mem data info data/code
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..train import corpus, sets
from ..train.data import DEFAULT_CACHE, build, info


def add_subcommands(sub: Any) -> None:
    b = sub.add_parser("build", help="fetch a set's packages, cut documents, tokenize into shards")
    named = "; ".join(f"{s.name}: {s.description}" for s in sets.SETS.values())
    b.add_argument("--set", required=True, choices=sorted(sets.SETS), dest="set_name", help=named)
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--tokenizer", default="bytes", choices=["bytes", "smollm2"])
    b.add_argument(
        "--cache", default=DEFAULT_CACHE, help=f"package cache (default {DEFAULT_CACHE})"
    )
    b.add_argument(
        "--max-docs", type=int, default=None, help="stop after N documents (in build order)"
    )
    b.add_argument(
        "--sample",
        type=float,
        default=None,
        help="keep a stable fraction of directories, spread over every package (e.g. 0.05)",
    )
    b.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of directories held out (0.05)"
    )
    b.add_argument(
        "--min-bytes",
        type=int,
        default=corpus.MIN_DOC_BYTES,
        help=f"a directory becomes a document from this size ({corpus.MIN_DOC_BYTES})",
    )
    b.add_argument(
        "--max-bytes",
        type=int,
        default=corpus.MAX_DOC_BYTES,
        help=f"larger directories are cut at file boundaries ({corpus.MAX_DOC_BYTES})",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing build")
    i = sub.add_parser("info", help="describe a build (and check its shards)")
    i.add_argument("out", type=Path)
    b.set_defaults(action=_build)
    i.set_defaults(action=lambda args: info(args.out))


def _build(args: argparse.Namespace) -> int:
    return build(
        args.set_name,
        args.out,
        tokenizer=args.tokenizer,
        cache=args.cache,
        max_docs=args.max_docs,
        sample=args.sample,
        val_fraction=args.val_fraction,
        min_bytes=args.min_bytes,
        max_bytes=args.max_bytes,
        overwrite=args.overwrite,
    )


def _exit(args: argparse.Namespace) -> None:
    code = args.action(args)
    if code:
        raise SystemExit(code)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "data",
        help="build a token-shard data set, or describe one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_subcommands(p.add_subparsers(dest="data_command", required=True))
    p.set_defaults(run=_exit)


def main(argv: Sequence[str] | None = None) -> int:
    """The command in-process: its exit status."""
    p = argparse.ArgumentParser(prog="fot-mem data", description=__doc__.split("\n")[0])
    add_subcommands(p.add_subparsers(dest="data_command", required=True))
    args = p.parse_args(argv)
    return int(args.action(args))
