"""`fot-mem` (also `python -m fot_mem`): the command line for long-document memories.

fot-mem ingest MEMORY FILE...     read texts through a FoT model into a persistent memory
fot-mem score MEMORY --file F     perplexity of a new text with a stored document as memory
fot-mem generate MEMORY           continue a stored document from its memory
fot-mem search MEMORY --query Q   what the memory retrieves for a query, in context
fot-mem info MEMORY               what a memory holds
fot-mem verify MEMORY             check every checksum and count (changes nothing)
fot-mem bench                     retrieval speed here against FAISS / hnswlib / numpy
"""

from __future__ import annotations

import argparse
import sys

from ..exceptions import FotMemError


def parser() -> argparse.ArgumentParser:
    from . import bench, info, ingest, score, search

    p = argparse.ArgumentParser(
        prog="fot-mem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ingest.add_parser(sub)
    score.add_parsers(sub)
    search.add_parser(sub)
    info.add_parsers(sub)
    bench.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except FotMemError as e:  # a clear message, not a traceback
        print(f"fot-mem {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(
            f"fot-mem {args.command}: interrupted (an ingest resumes where it stopped)",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
