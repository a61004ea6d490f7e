"""`fot-mem` (also `python -m fot_mem`): the command line for long-document memories.

fot-mem ingest MEMORY FILE...     read texts through a FoT model into a persistent memory
fot-mem score MEMORY --file F     perplexity of a new text with a stored document as memory
fot-mem generate MEMORY           continue a stored document from its memory
fot-mem search MEMORY --query Q   what the memory retrieves for a query, in context
fot-mem info MEMORY               what a memory holds
fot-mem verify MEMORY             check every checksum and count (changes nothing)
fot-mem bench                     retrieval speed here against FAISS / hnswlib / numpy
fot-mem dictionary run --out DIR  the paper's dictionary lookup experiment, end to end
fot-mem eval EVALUATION           distraction, perplexity, passkey, or a suite of steps
fot-mem train --data D --out R    a crossbatch training run (torchrun: -m fot_mem train)
fot-mem data build|info           a token-shard data set from Debian packages
fot-mem delta RUN OUT             a fine-tune as a small delta on its base model
fot-mem demo                      the main job: a text into a memory, used by new processes
fot-mem store-demo                the store alone (no model): write, reopen, search
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ..exceptions import BackendUnavailableError, FotMemError

# Commands that run a model, by module: they need torch, which `info`, `verify`, `bench`,
# `dictionary` and `train` (whose runs import it themselves), `data` and the demos do not.
_MODEL_COMMANDS = {
    "ingest": ("ingest",),
    "score": ("score", "generate"),
    "search": ("search",),
    "eval": ("eval",),
}


def parser() -> argparse.ArgumentParser:
    from . import bench, data, delta, demo, dictionary, info, train

    p = argparse.ArgumentParser(
        prog="fot-mem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, commands in _MODEL_COMMANDS.items():
        try:
            m = importlib.import_module(f".{module}", __name__)
        except ImportError as e:  # no torch: the command says so when it is run
            for command in commands:
                _unavailable(sub, command, e)
            continue
        add = m.add_parsers if hasattr(m, "add_parsers") else m.add_parser
        add(sub)
    info.add_parsers(sub)
    bench.add_parser(sub)
    dictionary.add_parsers(sub)
    train.add_parser(sub)
    data.add_parser(sub)
    delta.add_parser(sub)
    demo.add_parsers(sub)
    return p


def _unavailable(sub: Any, command: str, error: ImportError) -> None:
    def run(args: argparse.Namespace) -> None:
        raise BackendUnavailableError(
            f"needs a package that is not installed ({error}): pip install 'fot_mem[cli]'"
        )

    p = sub.add_parser(command, help=f"(unavailable: {error})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except FotMemError as e:  # a clear message, not a traceback
        _fail(args.command, f"{type(e).__name__}: {e}", 2)
    except KeyboardInterrupt:
        _fail(args.command, "interrupted (an ingest resumes where it stopped)", 130)
    except BrokenPipeError:  # output piped into e.g. `head`, which has gone
        sys.stderr.close()
        raise SystemExit(1) from None
    except OSError as e:  # a file system's answer: permissions, disk full, a missing package
        _fail(args.command, f"{type(e).__name__}: {e}", 2)
    except Exception as e:  # still one line; FOT_MEM_DEBUG=1 shows where
        if os.environ.get("FOT_MEM_DEBUG"):
            raise
        _fail(
            args.command,
            f"unexpected {type(e).__name__}: {e} (FOT_MEM_DEBUG=1 shows the traceback)",
            3,
        )


def _fail(command: str, message: str, code: int) -> None:
    print(f"fot-mem {command}: {message}", file=sys.stderr)
    raise SystemExit(code) from None
