"""`fot-mem train --data DIR --out DIR [--recipe NAME] [--field value ...]`: a crossbatch
training run (every `TrainConfig` field is an option). `--recipe fot-smollm2` starts from the
shipped model's recipe (`fot_mem.train.recipes`); options given override it. Under
`torchrun --nproc-per-node N -m fot_mem train ...` it runs DDP."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from ..train.config import TrainConfig
from ..train.recipes import RECIPES, recipe

# Field types as `from __future__ import annotations` leaves them: strings.
_TYPES = {"int": int, "float": float, "int | None": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Options default to None, "not given": the recipe's value, else TrainConfig's, applies.
    for field in dataclasses.fields(TrainConfig):
        required = field.default is dataclasses.MISSING
        name = "--" + field.name.replace("_", "-")
        shown = None if required else f"default {field.default!r}"
        if field.type in ("bool", bool):
            parser.add_argument(
                name, action=argparse.BooleanOptionalAction, default=None, help=shown
            )
        else:
            kind = _TYPES.get(str(field.type), str)
            parser.add_argument(name, type=kind, required=required, default=None, help=shown)
    parser.add_argument(
        "--recipe", choices=tuple(RECIPES), help="start from a named recipe's values"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's `TrainConfig` and whether to show progress. `--sink-token -1` is "none", as
    earlier runs wrote it (`TrainConfig.sink_token` is None)."""
    given = vars(args).copy()
    progress = given.pop("progress")
    name = given.pop("recipe", None)
    for key in ("command", "run"):
        given.pop(key, None)
    fields = recipe(name) if name else {}
    fields.update({k: v for k, v in given.items() if v is not None})
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
