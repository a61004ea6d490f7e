"""Small random FoT models for the torch tests: peaked attention, so positions and memory
change the output."""

from __future__ import annotations

import math

import torch
from fot_mem.torch import FotConfig, FotForCausalLM

SMALL = FotConfig(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=64,
    num_layers=4,
    num_heads=6,
    num_kv_heads=2,
    head_dim=8,
    rope_theta=500.0,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    memory_layers=(1, 3),
)


def random_model(config: FotConfig, seed: int = 0) -> FotForCausalLM:
    """Weights large enough that attention is peaked (so positions and memory matter)."""
    torch.manual_seed(seed)
    model = FotForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("log_temperature"):
                p.copy_(torch.full_like(p, 2.0))
            elif "embed" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    return model


def tokens(config: FotConfig, *shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, shape, generator=g)
