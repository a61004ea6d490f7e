"""Tiny training runs for tests: models small enough to train in a second on the CPU, saved the
way `fot-mem train` saves them, so loaders and commands can read them."""

from __future__ import annotations

import os
from typing import Any

from fot_mem.train.config import TrainConfig
from fot_mem.train.loop import Trainer

TINY: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    memory_layers="1",
    batch=2,
    window=16,
    d_schedule="0:2",
    steps=2,
    eval_every=100,
    eval_batches=1,
    eval_d="1",
    dtype="float32",
    device="cpu",
)


def tiny_config(
    data: str | os.PathLike[str], out: str | os.PathLike[str], **changes: Any
) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **changes})


def tiny_run(data: str | os.PathLike[str], out: str | os.PathLike[str], **changes: Any) -> Trainer:
    """Trains and saves; returns the trainer (its model is the saved one)."""
    trainer = Trainer(tiny_config(data, out, **changes))
    trainer.run(progress=False)
    return trainer
