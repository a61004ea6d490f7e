"""Passkey prompts (LongLLaMA's): the instruction, filler, the key sentence at its depth, more
filler and the question, each piece tokenized separately so that a prompt's length and the key's
depth are exact; the seeded cases of an evaluation, and the answer's number."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..exceptions import InvalidValueError
from ..tokenizers import BytesTokenizer
from .common import documents

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
FILLER_SENTENCE = (
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)


class Tokenizer(Protocol):
    def encode(self, text: str) -> Any: ...

    def decode(self, ids: list[int]) -> str: ...


def encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text), dtype=np.int64).reshape(-1)


# -- prompts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    tokens: np.ndarray  # int64 [length]
    key: int
    depth: float  # as asked; the filler before the key is round(depth * filler) tokens
    key_start: int  # index of the key sentence's first token
    key_end: int  # one past its last
    question_start: int


@dataclass(frozen=True)
class Pieces:
    instruction: np.ndarray
    question: np.ndarray

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> Pieces:
        return cls(encode(tokenizer, INSTRUCTION), encode(tokenizer, QUESTION))


def filler_tokens(length: int, pieces: Pieces, key_sentence: np.ndarray) -> int:
    """Filler tokens in a prompt of `length` tokens (negative: the pieces alone are longer)."""
    return length - len(pieces.instruction) - len(key_sentence) - len(pieces.question)


def build_prompt(
    tokenizer: Tokenizer,
    length: int,
    depth: float,
    key: int,
    filler: np.ndarray,
    pieces: Pieces | None = None,
) -> Prompt:
    """Instruction + filler[:a] + key sentence + filler[a:n] + question, exactly `length`
    tokens, with a = round(depth * n) and `filler` (token ids) at least n tokens long."""
    check_depths([depth])
    pieces = pieces or Pieces.of(tokenizer)
    key_ids = encode(tokenizer, KEY_SENTENCE.format(key=key))
    n = filler_tokens(length, pieces, key_ids)
    if n < 0:
        raise InvalidValueError(
            f"length {length} is too short for the prompt's fixed pieces "
            f"({length - n} tokens without filler)"
        )
    if len(filler) < n:
        raise InvalidValueError(f"the filler has {len(filler)} tokens, the prompt needs {n}")
    a = round(depth * n)
    filler = np.asarray(filler[:n], dtype=np.int64)
    tokens = np.concatenate((pieces.instruction, filler[:a], key_ids, filler[a:], pieces.question))
    start = len(pieces.instruction) + a
    return Prompt(tokens, key, depth, start, start + len(key_ids), length - len(pieces.question))


def repeat_filler(tokenizer: Tokenizer, n: int) -> np.ndarray:
    """LongLLaMA's filler sentence repeated to `n` tokens (tokenized once, so the repeats agree
    token for token)."""
    unit = encode(tokenizer, FILLER_SENTENCE)
    return np.tile(unit, -(-n // len(unit)))[:n] if n > 0 else unit[:0]


def data_filler(
    docs: Sequence[np.ndarray], n: int, rng: np.random.Generator, separator: np.ndarray
) -> np.ndarray:
    """`n` contiguous tokens of one document drawn by `rng`, at a random offset; when no
    document is that long, documents in a random order joined by `separator` (again from the
    start if the split is shorter than `n`)."""
    if not docs or not any(len(d) for d in docs):
        raise InvalidValueError("the filler data has no tokens")
    long = [d for d in docs if len(d) >= n]
    if long:
        doc = long[int(rng.integers(len(long)))]
        start = int(rng.integers(len(doc) - n + 1))
        return np.asarray(doc[start : start + n], dtype=np.int64)
    order = rng.permutation(len(docs))
    parts: list[np.ndarray] = []
    total = 0
    for i in range(len(docs) * (n // sum(len(d) for d in docs) + 2)):
        doc = docs[order[i % len(docs)]]
        parts += [np.asarray(doc, dtype=np.int64), separator]
        total += len(doc) + len(separator)
        if total >= n:
            break
    return np.concatenate(parts)[:n]


def draw_key(rng: np.random.Generator, digits: int) -> int:
    return int(rng.integers(10 ** (digits - 1), 10**digits))


def first_number(text: str) -> int | None:
    """The first run of digits in `text` as an integer ("1234 5" -> 1234), None if none."""
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def check_depths(depths: Sequence[float]) -> list[float]:
    out = []
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise InvalidValueError(f"depth must be a number in [0, 1], got {d!r}")
        out.append(float(d))
    if not out:
        raise InvalidValueError("no depth given")
    return out


def _positive_ints(values: Sequence[int], what: str) -> list[int]:
    out = list(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise InvalidValueError(f"{what} must be positive integers, got {values!r}")
    return out


@dataclass(frozen=True)
class Case:
    length: int
    depth: float
    trial: int
    prompt: Prompt


def make_cases(
    tokenizer: Tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int,
    *,
    filler: str | os.PathLike[str] | Sequence[np.ndarray] = "repeat",
    filler_split: str = "val",
    seed: int = 0,
    digits: int = 5,
) -> list[Case]:
    """Every (length, depth, trial) prompt. A trial's filler is one stream that each length
    takes its start of (the repeated sentence, or a piece of the data drawn from (seed, trial));
    keys are drawn from (seed, trial, length, depth)."""
    lengths = list(dict.fromkeys(_positive_ints(lengths, "lengths")))
    depths = list(dict.fromkeys(check_depths(depths)))
    trials = _positive_ints([trials], "trials")[0]
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 18:
        raise InvalidValueError(f"digits must be in 1..18, got {digits!r}")
    pieces = Pieces.of(tokenizer)
    # enough for the longest prompt whatever the key's tokens (build_prompt checks each)
    need = max(0, max(lengths) - len(pieces.instruction) - len(pieces.question))
    if isinstance(filler, str) and filler == "repeat":
        text = repeat_filler(tokenizer, need)
        stream: Callable[[int], np.ndarray] = lambda t: text  # noqa: E731
    else:
        docs = (
            [t for _, t in documents(filler, filler_split)]
            if isinstance(filler, (str, os.PathLike))
            else list(filler)
        )
        sep = encode(tokenizer, "\n\n")

        def stream(t: int) -> np.ndarray:
            return data_filler(docs, need, np.random.default_rng([seed, t, 0]), sep)

    cases = []
    for t in range(trials):
        filler_t = stream(t)
        for length in lengths:
            for j, depth in enumerate(depths):
                key = draw_key(np.random.default_rng([seed, t, length, j, 1]), digits)
                prompt = build_prompt(tokenizer, length, depth, key, filler_t, pieces)
                cases.append(Case(length, depth, t, prompt))
    return cases


@functools.lru_cache(maxsize=4)  # the suite's steps share it
def load_tokenizer(kind: str, gguf: str | None = None) -> Tokenizer:
    if kind == "bytes":
        return BytesTokenizer()
    from ..torch.weights import load_tokenizer as from_gguf
    from ..torch.weights import smollm2_gguf

    return from_gguf(gguf or smollm2_gguf())  # type: ignore[no-any-return]
