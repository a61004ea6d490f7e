"""`fot-mem train --data DIR --out DIR [--field value ...]`: a crossbatch training run (every
`TrainConfig` field is an option). Under `torchrun --nproc-per-node N -m fot_mem train ...` it
runs DDP."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from ..train.config import TrainConfig

# Field types as `from __future__ import annotations` leaves them: strings.
_TYPES = {"int": int, "float": float, "int | None": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(TrainConfig):
        required = field.default is dataclasses.MISSING
        name = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = _TYPES.get(str(field.type), str)
            default = None if required else field.default
            parser.add_argument(name, type=kind, required=required, default=default)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's `TrainConfig` and whether to show progress. `--sink-token -1` is "none", as
    earlier runs wrote it (`TrainConfig.sink_token` is None)."""
    fields = vars(args).copy()
    progress = fields.pop("progress")
    for key in ("command", "run"):
        fields.pop(key, None)
    if fields.get("sink_token") == -1:
        fields["sink_token"] = None
    return TrainConfig(**fields), progress


def command(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ..train.loop import Trainer  # torch, only when a run starts

    cfg, progress = config(args)
    trainer = Trainer(cfg)
    log = trainer.run(progress=progress)
    if trainer.dist.rank == 0 and log:
        print(json.dumps(log[-1]))
    return log


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="a crossbatch training run (TrainConfig's fields)", description=__doc__
    )
    add_arguments(p)
    p.set_defaults(run=command)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command in-process, errors raised (`fot_mem.cli.main` turns them into messages)."""
    p = argparse.ArgumentParser(prog="fot-mem train", description=__doc__)
    add_arguments(p)
    return command(p.parse_args(argv))
