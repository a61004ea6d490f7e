"""FoT in PyTorch: memory attention, a Llama-style model with memory layers, Hugging Face weight
loading, and long-document inference over a `MemoryStore`. The only part of fot_mem that imports
torch (install the `torch` extra)."""

from __future__ import annotations

from .attention import memory_attention
from .config import FotConfig, smollm2_135m
from .crossbatch import Crossbatch, crossbatch_attention
from .layer import FotAttention
from .memory import Memory, MemoryProvider
from .model import FotForCausalLM, FotOutput, LocalCache
from .weights import from_state_dict, load_folder, load_gguf, load_smollm2, load_tokenizer

__all__ = [
    "Crossbatch",
    "FotAttention",
    "FotConfig",
    "FotForCausalLM",
    "FotOutput",
    "LocalCache",
    "Memory",
    "MemoryProvider",
    "crossbatch_attention",
    "from_state_dict",
    "load_folder",
    "load_gguf",
    "load_smollm2",
    "load_tokenizer",
    "memory_attention",
    "smollm2_135m",
]
