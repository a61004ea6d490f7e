"""The model a training run trains: a scratch FoT model of the run's shape, a GGUF (SmolLM2's)
with memory layers, or an earlier run's checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..exceptions import InvalidValueError
from ..torch import FotConfig, FotForCausalLM, load_gguf
from .config import TrainConfig


def build_model(cfg: TrainConfig, vocab: int) -> FotForCausalLM:
    layers = tuple(int(x) for x in cfg.memory_layers.split(",") if x.strip())
    sink = cfg.sink_token
    if cfg.init == "scratch":
        config = FotConfig(
            vocab_size=vocab,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            memory_kv_heads=cfg.memory_kv_heads,
            max_position_embeddings=cfg.window,
            memory_layers=layers,
            qk_norm=cfg.qk_norm,
            sink_token=sink,
            memory_rope=cfg.memory_rope,
            qk_temperature=cfg.qk_temperature,
        )
        return FotForCausalLM(config)
    if cfg.init == "smollm2":
        from ..torch.weights import smollm2_gguf

        path = smollm2_gguf()
    else:
        path = Path(cfg.init)
    if path.is_dir():  # a run or checkpoint folder: fine-tune it as it is (its own shape)
        from ..torch.weights import _checkpoint_folder, _load_checkpoint

        model = _load_checkpoint(_checkpoint_folder(path))
    else:
        model = load_gguf(path, memory_layers=layers, qk_norm=cfg.qk_norm, sink_token=sink)
    if model.config.vocab_size != vocab:
        raise InvalidValueError(
            f"the model's vocabulary has {model.config.vocab_size} tokens, the data's {vocab}"
        )
    return model


def trainable(model: torch.nn.Module, pattern: str) -> list[torch.nn.Parameter]:
    """The parameters whose names match `pattern` ("": all); the rest are frozen."""
    if not pattern:
        return list(model.parameters())
    found = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(re.search(pattern, name)))
        if p.requires_grad:
            found.append(p)
    if not found:
        names = [n for n, _ in model.named_parameters()]
        raise InvalidValueError(
            f"trainable {pattern!r} matches no parameter (e.g. {', '.join(names[:4])})"
        )
    return found
