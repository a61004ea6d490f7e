"""`fot-mem delta RUN OUT`: a fine-tune as a small delta on its base (`fot_mem.torch.delta`).

The tensors saved are those the run trained (its `--trainable` regex) unless `--params` says
otherwise; tensors left out that differ from the base are reported, since the delta would lose
those changes. `fot-mem` commands load a delta folder wherever they take a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("delta", help="a fine-tune as a small delta on its base model")
    p.add_argument("source", metavar="RUN", help="a training run folder or checkpoint folder")
    p.add_argument("out", help="the delta's folder (delta.json, delta.safetensors)")
    p.add_argument("--params", help="regex of the tensors to keep (default: the run's trainable)")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="store them as (default: as is)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from ..exceptions import InvalidValueError
    from ..torch.delta import save_delta
    from ..torch.weights import _checkpoint_folder, _load_checkpoint, _load_model

    folder = _checkpoint_folder(Path(args.source))
    state = json.loads((folder / "state.json").read_text())
    cfg = state.get("config", {})
    base = cfg.get("init", "scratch")
    if base == "scratch":
        raise InvalidValueError(
            f"{args.source} was trained from scratch: it has no base to be a delta on"
        )
    pattern = args.params or cfg.get("trainable", "")
    if not pattern:
        raise InvalidValueError(
            f"{args.source} trained every parameter: pass --params REGEX to choose the tensors"
        )
    model = _load_checkpoint(folder)
    manifest = save_delta(model, args.out, base=base, pattern=pattern, dtype=args.dtype)
    layers = tuple(model.config.memory_layers)
    reference = _load_model(
        base, memory_layers=layers, sink_token=model.config.sink_token, device="cpu",
        dtype=torch.float32,
    )  # fmt: skip
    kept, base_state = set(manifest["tensors"]), reference.state_dict()
    drift = {
        name: float((t.float() - base_state[name].float()).abs().max())
        for name, t in model.state_dict().items()
        if name not in kept and name in base_state
    }
    lost = {name: d for name, d in drift.items() if d > 0}
    print(
        f"delta: {len(kept)} tensors, {manifest['bytes'] / 1e6:.2f} MB, on {base!r} -> {args.out}"
    )
    if lost:
        worst = max(lost, key=lambda n: lost[n])
        print(
            f"warning: {len(lost)} tensors left out differ from the base (largest: {worst}, "
            f"{lost[worst]:.3g}); the delta does not hold those changes"
        )
