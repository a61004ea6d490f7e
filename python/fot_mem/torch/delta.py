"""A fine-tune shipped as a delta: the tensors it changed, on top of the base model it started
from. SmolLM2-135M is 270 MB, its memory layers' attention about 5 MB in bfloat16, so a FoT
fine-tune of those layers can live in the repository while the base comes from a package.

A delta is a folder: `delta.safetensors` (the tensors, by the model's parameter names) and
`delta.json` (format, the base as a `load_model` spec, the model's `FotConfig`, the tensors'
names, and their file's SHA-256, checked at every load). Loading builds the base with the
recorded memory layers and sink token, checks that its config is the recorded one, and
overwrites the recorded tensors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..exceptions import InvalidValueError
from .config import FotConfig
from .dtypes import DTYPES
from .model import FotForCausalLM

FORMAT = 1
TENSORS = "delta.safetensors"
MANIFEST = "delta.json"


def is_delta(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_delta(
    model: FotForCausalLM,
    path: str | Path,
    *,
    base: str,
    pattern: str,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Writes the tensors of `model` whose names match `pattern` (in `dtype`, default their
    own) as a delta on `base` (a `load_model` spec: "smollm2", a .gguf, a checkpoint folder).
    Returns the manifest."""
    from safetensors.torch import save_file

    try:
        wanted = re.compile(pattern)
    except re.error as e:
        raise InvalidValueError(f"delta pattern {pattern!r} is not a regex: {e}") from None
    cast = DTYPES[dtype] if dtype else None
    tensors = {
        name: (t if cast is None else t.to(cast)).detach().cpu().contiguous()
        for name, t in model.state_dict().items()
        if wanted.search(name)
    }
    if not tensors:
        raise InvalidValueError(f"delta pattern {pattern!r} matches no tensor of the model")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / TENSORS))
    manifest = {
        "format": FORMAT,
        "base": base,
        "model_config": dataclasses.asdict(model.config),
        "tensors": sorted(tensors),
        "pattern": pattern,
        "sha256": _sha256(folder / TENSORS),
        "bytes": (folder / TENSORS).stat().st_size,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A delta folder's `delta.json`, its format checked."""
    folder = Path(path)
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidValueError(f"{folder} holds no readable {MANIFEST}: {e}") from None
    if manifest.get("format") != FORMAT:
        raise InvalidValueError(
            f"{folder / MANIFEST} has format {manifest.get('format')!r}; "
            f"this fot_mem reads {FORMAT}"
        )
    return manifest


def load_delta(
    path: str | Path, base_loader: Callable[[str, tuple[int, ...], int | None], FotForCausalLM]
) -> FotForCausalLM:
    """The base with the delta's tensors applied. `base_loader(spec, memory_layers, sink_token)`
    builds a fresh base (`fot_mem.torch.weights.load_model` passes its own loader; use
    `load_model(path)` to load a delta). A damaged file, another base or a tensor that does not
    fit is an `InvalidValueError`."""
    from safetensors.torch import load_file

    folder = Path(path)
    manifest = read_manifest(folder)
    tensors_path = folder / TENSORS
    if not tensors_path.is_file():
        raise InvalidValueError(f"{tensors_path} is missing")
    found = _sha256(tensors_path)
    if found != manifest["sha256"]:
        raise InvalidValueError(
            f"{tensors_path} is damaged: SHA-256 {found[:16]}..., the manifest says "
            f"{manifest['sha256'][:16]}..."
        )
    want = manifest["model_config"]
    base = base_loader(manifest["base"], tuple(want["memory_layers"]), want["sink_token"])
    have = dataclasses.asdict(base.config)
    fields = {f.name for f in dataclasses.fields(FotConfig)}
    # tuples come back from JSON as lists
    differ = sorted(k for k in fields & set(want) if json.loads(json.dumps(have[k])) != want[k])
    if differ:
        raise InvalidValueError(
            f"the base {manifest['base']!r} is not the model this delta was made on: "
            + ", ".join(f"{k} {have[k]!r} (delta: {want[k]!r})" for k in differ)
        )
    state = base.state_dict()
    with torch.no_grad():
        for name, tensor in load_file(str(tensors_path)).items():
            if name not in state or state[name].shape != tensor.shape:
                got = "absent" if name not in state else tuple(state[name].shape)
                raise InvalidValueError(
                    f"delta tensor {name} {tuple(tensor.shape)} does not fit the base ({got})"
                )
            state[name].copy_(tensor.to(state[name].dtype))
    return base
