"""Options every `fot-mem eval` command shares: comma lists, how its model is loaded, and
`--plot` of saved results."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ...eval.common import load_results
from ...torch.dtypes import DTYPES
from ...torch.weights import SMOLLM2_MEMORY_LAYERS, LoadOptions


class Once(argparse.Action):
    """An option that may be given once: a second value is an error, not a silent overwrite
    (`--model a --model b` on a one-model command once evaluated b alone)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(
                f"{option_string} given twice: this command evaluates one model "
                "(run it once per model, or list the runs in `fot-mem eval suite`)"
            )
        setattr(namespace, self.dest, values)


def add_one_model(parser: argparse.ArgumentParser) -> None:
    """`--model` and `--name` of a command that evaluates one model."""
    parser.add_argument(
        "--model",
        action=Once,
        help="run, checkpoint or delta folder, .gguf, 'fot-smollm2' or 'base'",
    )
    parser.add_argument(
        "--name", action=Once, help="label in the plot and JSON (default: the model spec)"
    )


def comma_list(kind: type) -> Callable[[str], list[Any]]:
    """An argparse type: "a,b,c" -> [kind(a), kind(b), kind(c)]."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__}s a,b,c; got {text!r}"
            ) from None

    return parse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation loads its model with (`load_options`)."""
    parser.add_argument(
        "--memory-layers",
        type=comma_list(int),
        default=list(SMOLLM2_MEMORY_LAYERS),
        help="GGUF models only (default: the shipped model's)",
    )
    parser.add_argument(
        "--sink-token", type=int, help="GGUF only: a sink token before every window (FotConfig)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))


def load_options(args: argparse.Namespace) -> LoadOptions:
    """The `LoadOptions` of `add_model_options`' options."""
    return LoadOptions(
        memory_layers=tuple(args.memory_layers),
        sink_token=args.sink_token,
        device=args.device,
        dtype=args.dtype,
    )


def add_plot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="result file")
    parser.add_argument("--png", help="plot file")
    parser.add_argument(
        "--plot", nargs="+", metavar="JSON", help="only plot saved results to --png"
    )
    parser.add_argument("--quiet", action="store_true")


def plot_only(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    plot: Callable[[Mapping[str, Any], Path | str], Any],
) -> dict[str, Any] | None:
    """`--plot A.json B.json --png F`: draws saved results together; None when not asked."""
    if not args.plot:
        return None
    if not args.png:
        parser.error("--plot needs --png")
    results = load_results(args.plot)
    plot(results, args.png)
    return results


R = TypeVar("R")


def in_process(
    name: str,
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Callable[[argparse.Namespace, argparse.ArgumentParser], R],
    argv: Sequence[str] | None,
) -> R:
    """`fot-mem eval NAME ARGV` in this process, errors raised (`fot_mem.cli.main` turns them
    into messages)."""
    p = argparse.ArgumentParser(prog=f"fot-mem eval {name}", description=description)
    add_arguments(p)
    return command(p.parse_args(argv), p)
