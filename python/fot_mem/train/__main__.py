"""`python -m fot_mem.train --data DIR --out DIR [--field value ...]`: a crossbatch training run
(every `TrainConfig` field is an option). Under `torchrun --nproc-per-node N` it runs DDP."""

from __future__ import annotations

import argparse
import dataclasses
import json

from .loop import TrainConfig, Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fot_mem.train", description=__doc__)
    for field in dataclasses.fields(TrainConfig):
        required = field.default is dataclasses.MISSING
        name = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            default = None if required else field.default
            parser.add_argument(name, type=kind, required=required, default=default)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = vars(parser.parse_args(argv))
    progress = args.pop("progress")
    trainer = Trainer(TrainConfig(**args))
    log = trainer.run(progress=progress)
    if trainer.dist.rank == 0 and log:
        print(json.dumps(log[-1]))


if __name__ == "__main__":
    main()
