"""Where a command runs its model (`--device`) and searches the memory (`--retrieval`). The store
on disk stays the durable memory either way, so one memory folder works on the CPU and on a GPU;
on a GPU the document's memory is mirrored onto the device and searched there
(`fot_mem.torch.retrieval.DeviceMirror`), which saves a round trip of every layer's queries and
hits through the host."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..exceptions import InvalidValueError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: CUDA when present, else the CPU), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--retrieval",
        default="auto",
        choices=["auto", "mirror", "store"],
        help="mirror: search a copy of the memory on the model's device; store: search the store "
        "on the CPU (--backend); auto (default): mirror on CUDA, store on the CPU",
    )


def resolve(name: str) -> torch.device:
    """`--device` as a torch device; a clear error where it cannot run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidValueError(
            f"--device {name!r} is not a device (auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise InvalidValueError(f"--device {name!r}: only auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(f"--device {name}: torch sees no CUDA device here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidValueError(
                f"--device {name}: there are {torch.cuda.device_count()} CUDA devices"
            )
    return device


def placement(args: argparse.Namespace) -> tuple[torch.device, torch.device | None]:
    """(the model's device, the mirror's device or None for the store's search)."""
    device = resolve(args.device)
    mirror = args.retrieval == "mirror" or (args.retrieval == "auto" and device.type == "cuda")
    return device, device if mirror else None


def describe(device: torch.device, mirror: Any) -> str:
    where = "a mirror on the device" if mirror is not None else "the store on the CPU"
    return f"model on {device}, memory searched in {where}"
