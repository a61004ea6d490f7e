"""Passkey retrieval (LongLLaMA's README and paper; Landmark Attention): a random number hidden at
a chosen depth of a long filler text, which the model must repeat at the end. LongLLaMA 3B finds
it 94.5% of the time at 100K tokens and 73% at 256K.

A prompt of exactly `length` tokens is LongLLaMA's: the instruction, filler, the key sentence,
more filler, the question; the pieces are tokenized separately, so the length and the depth (the
fraction of the filler before the key) are exact. The model reads all but the prompt's last
`tail` tokens into memory with a `LongDocumentReader`, then continues the tail greedily; it is
right if the first number it writes is the key.

Reading is the cost, and prompts share prefixes: all prompts of one trial use the same filler
stream (each length takes its start), so they agree up to their key. Prompts are read in sorted
order, and each one keeps the memory of the windows it shares with the one before and reads
only the rest (a trie walked depth-first: every distinct window prefix is read once). The memory
is cut back on a device mirror that is never written to disk, or copied into a new store
document when the CPU store serves retrieval (`mirror=None`)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import backends
from ..exceptions import InvalidValueError
from ..tokenizers import BytesTokenizer
from ..torch import FotForCausalLM
from ..torch.reader import LongDocumentReader, create_store
from ..torch.weights import LoadOptions
from .common import write_json
from .passkey_prompts import (
    FILLER_SENTENCE,
    INSTRUCTION,
    KEY_SENTENCE,
    QUESTION,
    Case,
    Pieces,
    Prompt,
    Tokenizer,
    build_prompt,
    check_depths,
    data_filler,
    first_number,
    load_tokenizer,
    make_cases,
    repeat_filler,
)
from .passkey_reader import SharedReader, reading_order
from .passkey_report import plot, progress_line, result_row, summarize

# The prompt and report API, importable from here as from the evaluation's one module.
__all__ = [
    "FILLER_SENTENCE",
    "INSTRUCTION",
    "KEY_SENTENCE",
    "QUESTION",
    "BytesTokenizer",
    "Case",
    "Prompt",
    "SharedReader",
    "build_prompt",
    "data_filler",
    "first_number",
    "load_tokenizer",
    "make_cases",
    "passkey",
    "plot",
    "reading_order",
    "repeat_filler",
    "run",
]

# -- the evaluation ----------------------------------------------------------------------------


Generate = Callable[[LongDocumentReader, Case, np.ndarray, int], list[int]]


def _greedy(reader: LongDocumentReader, case: Case, tail: np.ndarray, n: int) -> list[int]:
    return reader.generate(torch.from_numpy(tail), n)


@contextmanager
def _store_dir(path: str | os.PathLike[str] | None) -> Iterator[Path]:
    if path is not None:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="fot_passkey_") as tmp:
        yield Path(tmp) / "store"


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[passkey] {message}", flush=True)


def passkey(
    model: FotForCausalLM,
    tokenizer: Tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int,
    window: int,
    k: int | None = None,
    *,
    filler: str | os.PathLike[str] | Sequence[np.ndarray] = "repeat",
    filler_split: str = "val",
    seed: int = 0,
    backend: str = "exact",
    mirror: str | torch.device | None = None,
    tail: int | None = None,
    digits: int = 5,
    new_tokens: int | None = None,
    share: bool = True,
    store: str | os.PathLike[str] | None = None,
    generate: Generate | None = None,
    progress: bool = False,
    partial: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Passkey accuracy per length and per (length, depth) over `trials` prompts each.

    `filler`: "repeat" (LongLLaMA's sentence), a token-shard build's folder (its `filler_split`
    documents) or token arrays. `tail`: the prompt's last tokens, continued by the model in its
    local window (default window // 2; the rest is read into memory). `mirror`: a device for
    the memory, searched exactly there (None: the CPU store with `backend`). `new_tokens`:
    generated tokens (default digits + 3). `share`: keep windows shared with the previous prompt
    (False reads every prompt whole; the results are the same). `store`: the store's folder
    (default temporary). `generate(reader, case, tail, n)`: a stand-in for greedy decoding.
    `partial(result)`: called after every prompt with the result so far (`"complete": False`;
    accuracies over the prompts done), so that a crash later loses nothing before it."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise InvalidValueError(f"window must be an integer >= 2, got {window!r}")
    backends.check(backend)
    cases = make_cases(
        tokenizer, lengths, depths, trials, filler=filler, filler_split=filler_split, seed=seed,
        digits=digits,
    )  # fmt: skip
    lengths = list(dict.fromkeys(lengths))
    depths = list(dict.fromkeys(check_depths(depths)))
    new_tokens = digits + 3 if new_tokens is None else new_tokens
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise InvalidValueError(f"new_tokens must be a positive integer, got {new_tokens!r}")
    question = len(Pieces.of(tokenizer).question)
    tail = window // 2 if tail is None else tail
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < question:
        raise InvalidValueError(
            f"tail must be an integer >= the question's {question} tokens, got {tail!r}"
        )
    if tail + new_tokens > window:
        raise InvalidValueError(
            f"tail {tail} + new_tokens {new_tokens} must fit in the window {window}"
        )
    generate = generate or _greedy
    cuts = [max(0, len(c.prompt.tokens) - tail) for c in cases]
    parts = [c.prompt.tokens[:n] for c, n in zip(cases, cuts)]
    order = reading_order(parts) if share else list(range(len(cases)))
    rows: list[dict[str, Any] | None] = [None] * len(cases)
    t_start = time.perf_counter()
    read_s = generate_s = 0.0
    settings = {
        "lengths": lengths,
        "depths": depths,
        "trials": trials,
        "window": window,
        "k": k if k is not None else model.config.memory_k,
        "tail": tail,
        "digits": digits,
        "new_tokens": new_tokens,
        "filler": str(filler) if isinstance(filler, (str, os.PathLike)) else "tokens",
        "filler_split": filler_split,
        "seed": seed,
        "backend": backend,
        "mirror": None if mirror is None else str(mirror),
        "share": share,
    }

    def summary(tokens_read: int, read_s: float, generate_s: float, complete: bool) -> dict:
        return summarize(
            rows, lengths, depths, settings, tokens_read, sum(cuts), read_s, generate_s,
            time.perf_counter() - t_start, complete,
        )  # fmt: skip

    with _store_dir(store) as path:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        mem = create_store(path, model, dtype=dtype, hnsw=backend == "hnsw" or None)
        try:
            shared = SharedReader(
                model, mem, window=window, k=k, backend=backend, mirror=mirror, share=share
            )
            for n, i in enumerate(order):
                case = cases[i]
                cut = cuts[i]
                t0 = time.perf_counter()
                read = shared.load(case.prompt.tokens[:cut])
                _sync(model)  # the GPU's reading, not only its queueing, in read_seconds
                t1 = time.perf_counter()
                answer = generate(shared.reader, case, case.prompt.tokens[cut:], new_tokens)
                t2 = time.perf_counter()
                read_s, generate_s = read_s + t1 - t0, generate_s + t2 - t1
                row = result_row(case, tokenizer, answer, shared.reader, read, cut, t2 - t0)
                rows[i] = row
                _log(progress, progress_line(n, len(cases), row, t_start))
                if partial is not None and n + 1 < len(cases):
                    partial(summary(shared.read_tokens, read_s, generate_s, False))
        finally:
            mem.close()
    return summary(shared.read_tokens, read_s, generate_s, True)


def _sync(model: FotForCausalLM) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    spec: str,
    *,
    name: str | None = None,
    lengths: Sequence[int] = (4096, 16384, 65536, 131072, 262144),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    trials: int = 5,
    window: int = 1024,
    k: int | None = None,
    tail: int | None = None,
    digits: int = 5,
    filler_data: str | None = None,
    filler_split: str = "val",
    seed: int = 0,
    backend: str = "exact",
    mirror: str | None = None,
    share: bool = True,
    tokenizer: str = "gguf",
    gguf: str | None = None,
    load: LoadOptions | None = None,
    json: str | None = None,
    png: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """`passkey` of the model `spec` (`load_model`), labelled with its name and settings;
    written to `json` after every prompt and at the end, and plotted to `png`. `filler_data`: a
    token-shard build whose documents are the filler (None: the repeated sentence). `mirror`:
    None for `load.device`, "none" for the CPU store. `tokenizer`: "gguf" (`gguf`, default
    SmolLM2's) or "bytes"."""
    load = load or LoadOptions()
    mirror = load.device if mirror is None else mirror

    def labelled(result: dict[str, Any]) -> dict[str, Any]:
        result = {"name": name or str(spec), "model": str(spec), **result}
        result["settings"] = {**result["settings"], "device": str(load.device), "dtype": load.dtype}
        return result

    t0 = time.perf_counter()
    model = load.load(spec)
    tok = load_tokenizer(tokenizer, gguf)
    _log(not quiet, f"model and tokenizer loaded in {time.perf_counter() - t0:.1f} s")
    result = passkey(
        model,
        tok,
        lengths,
        depths,
        trials,
        window,
        k,
        filler=filler_data if filler_data is not None else "repeat",
        filler_split=filler_split,
        seed=seed,
        backend=backend,
        mirror=None if mirror == "none" else mirror,
        tail=tail,
        digits=digits,
        share=share,
        progress=not quiet,
        partial=None if not json else lambda r: write_json(json, labelled(r)),
    )
    result = labelled(result)
    for n, acc in result["accuracy"].items():
        _log(not quiet, f"length {n}: accuracy {acc:.3f}")
    _log(
        not quiet,
        f"read {result['tokens_read']} tokens ({result['tokens_in_memory']} without sharing) "
        f"at {result['tokens_per_s'] or 0:.0f} tokens/s; {result['seconds']:.1f} s in all",
    )
    if json:
        write_json(json, result)
    if png:
        plot({result["name"]: result}, png)
    return result
