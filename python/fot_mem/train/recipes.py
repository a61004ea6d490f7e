"""Named training recipes: `fot-mem train --recipe NAME` starts from these `TrainConfig` values,
and any option given on the command line overrides them."""

from __future__ import annotations

from typing import Any

from ..exceptions import InvalidValueError

RECIPES: dict[str, dict[str, Any]] = {
    # The shipped model (`fot-smollm2`): SmolLM2-135M-Instruct with memory layers 14, 18, 22,
    # where the untuned model's attention already prefers its own document most (r_8 0.29-0.31
    # against 0.17 at layer 8: bench-results/fot-smollm2/layers); only their attention trains
    # (the result ships as a 5.3 MB delta). Slots dealt over unrelated sources (data set `mix`),
    # so crossbatch's negatives are other packages' text; the sink token keeps window-first keys
    # out of memory; two previous windows of the document, run without gradients below the
    # memory layers' projections (context_grad False: the step's contexts cost a forward pass);
    # a quarter of the windows read no memory (the M = 0 case); d drawn per step up to 64.
    "fot-smollm2": {
        "init": "smollm2",
        "memory_layers": "14,18,22",
        "qk_norm": False,
        "sink_token": 0,
        "trainable": r"layers\.(14|18|22)\.self_attn\.",
        "mix_sources": True,
        "no_memory": 0.25,
        "context_grad": False,
        "batch": 64,
        "window": 512,
        "prev": 2,
        "d_schedule": "0:2,50:1-64",
        "steps": 3000,
        "lr": 3e-4,
        "min_lr": 3e-5,
        "warmup": 30,
        "eval_every": 200,
        "eval_batches": 4,
        "eval_batch": 8,
        "eval_d": "1,8",
        "checkpoint_every": 500,
        "keep_checkpoints": 1,
    },
}


def recipe(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise InvalidValueError(f"no training recipe {name!r}; there are: {', '.join(RECIPES)}")
    return dict(RECIPES[name])
