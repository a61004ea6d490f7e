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

import argparse
import functools
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .. import backends
from ..exceptions import InvalidValueError
from ..store import MemoryStore
from ..torch import FotForCausalLM
from ..torch.reader import LongDocumentReader, create_store
from ..torch.retrieval import DeviceMirror
from ..train.shards import BytesTokenizer
from .common import (
    add_model_options,
    comma_list,
    documents,
    model_from_args,
    plot_only,
    pyplot,
    write_json,
)

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


# -- reading with shared prefixes -------------------------------------------------------------


class ScratchMirror(DeviceMirror):
    """A device mirror that is the memory itself: appends stay on the device (the store is
    never written, so nothing costs disk I/O) and `truncate` cuts the memory back."""

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._put(layer, keys.detach(), values.detach())

    def truncate(self, n: int) -> None:
        for layer in self.count:
            self.count[layer] = min(n, self.count[layer])


class SharedReader:
    """Reads a prompt's memory part, keeping the whole windows it shares with the memory part
    read before it (windows start at token 0, so a shared window's keys and values are the
    same); `share=False` reads each one whole. `read_tokens` counts the tokens actually read."""

    def __init__(
        self,
        model: FotForCausalLM,
        store: MemoryStore,
        *,
        window: int,
        k: int | None,
        backend: str,
        mirror: str | torch.device | None,
        share: bool = True,
    ) -> None:
        self.model, self.store, self.window, self.k, self.backend = model, store, window, k, backend
        self.mirror = None if mirror is None else torch.device(mirror)
        self.share = share
        self.documents = 0
        self.reader = self._reader()
        self.memory = np.zeros(0, dtype=np.int64)
        self.read_tokens = 0

    def _reader(self) -> LongDocumentReader:
        """A reader of a new, empty document."""
        document = self.store.document(f"prompt{self.documents}")
        self.documents += 1
        reader = LongDocumentReader(
            self.model, document, window=self.window, k=self.k, backend=self.backend
        )
        if self.mirror is not None:
            dtype = next(self.model.parameters()).dtype
            reader.source = ScratchMirror(document, self.mirror, dtype=dtype)
        return reader

    def _keep(self, n: int) -> None:
        """Cuts the memory back to its first `n` tokens."""
        source = self.reader.source
        if isinstance(source, ScratchMirror):
            source.truncate(n)
            return
        old = self.reader.document
        self.reader = self._reader()
        for layer in self.store.layers:
            if n:
                keys, values = old.read(layer, 0, n)
                self.reader.document.append(layer, keys, values)
        old.delete()

    def load(self, tokens: np.ndarray) -> int:
        """Makes the memory hold exactly `tokens`; returns the tokens read for it."""
        n = min(len(tokens), len(self.memory)) if self.share else 0
        differ = np.flatnonzero(tokens[:n] != self.memory[:n])
        shared = int(differ[0]) if len(differ) else n
        if shared == len(tokens) == len(self.memory):
            return 0  # the memory holds `tokens` already
        keep = shared // self.window * self.window
        if keep < len(self.memory):
            self._keep(keep)
        self.reader.read(torch.from_numpy(tokens[keep:]), losses=False)
        self.memory = tokens.copy()
        self.read_tokens += len(tokens) - keep
        return len(tokens) - keep


def _compare(x: np.ndarray, y: np.ndarray) -> int:
    n = min(len(x), len(y))
    differ = np.flatnonzero(x[:n] != y[:n])
    if len(differ):
        i = differ[0]
        return -1 if x[i] < y[i] else 1
    return (len(x) > len(y)) - (len(x) < len(y))


def reading_order(parts: Sequence[np.ndarray]) -> list[int]:
    """Indices of the memory parts `parts` in lexicographic order: a depth-first walk of their
    prefix trie, so that each shared prefix is read once."""

    def compare(i: int, j: int) -> int:
        return _compare(parts[i], parts[j])

    return sorted(range(len(parts)), key=functools.cmp_to_key(compare))


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


def _accuracy(rows: Sequence[dict[str, Any]]) -> float:
    return sum(r["correct"] for r in rows) / len(rows)


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
        return _summarize(
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
                row = _row(case, tokenizer, answer, shared.reader, read, cut, t2 - t0)
                rows[i] = row
                _log(progress, _progress_line(n, len(cases), row, t_start))
                if partial is not None and n + 1 < len(cases):
                    partial(summary(shared.read_tokens, read_s, generate_s, False))
        finally:
            mem.close()
    return summary(shared.read_tokens, read_s, generate_s, True)


def _sync(model: FotForCausalLM) -> None:
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summarize(
    rows: Sequence[dict[str, Any] | None],
    lengths: Sequence[int],
    depths: Sequence[float],
    settings: dict[str, Any],
    tokens_read: int,
    tokens_in_memory: int,
    read_s: float,
    generate_s: float,
    seconds: float,
    complete: bool,
) -> dict[str, Any]:
    """The result over the prompts done so far (all of them when `complete`); a length or
    (length, depth) with no prompt done yet is left out."""
    done = [r for r in rows if r is not None]

    def acc(length: int, depth: float | None = None) -> float | None:
        chosen = [
            r for r in done if r["length"] == length and (depth is None or r["depth"] == depth)
        ]
        return _accuracy(chosen) if chosen else None

    accuracy = {str(n): acc(n) for n in lengths}
    by_depth = {str(n): {str(d): acc(n, d) for d in depths} for n in lengths}
    return {
        "task": "passkey",
        "complete": complete,
        "accuracy": {n: a for n, a in accuracy.items() if a is not None},
        "accuracy_by_depth": {
            n: {d: a for d, a in row.items() if a is not None}
            for n, row in by_depth.items()
            if any(a is not None for a in row.values())
        },
        "trials": done,
        "settings": settings,
        "tokens_read": tokens_read,
        "tokens_in_memory": tokens_in_memory,  # what reading every prompt whole would read
        "read_seconds": read_s,
        "generate_seconds": generate_s,
        "tokens_per_s": tokens_read / read_s if read_s > 0 else None,
        "seconds": seconds,
    }


def _row(
    case: Case,
    tokenizer: Tokenizer,
    answer: list[int],
    reader: LongDocumentReader,
    read: int,
    cut: int,
    seconds: float,
) -> dict[str, Any]:
    text = tokenizer.decode(list(answer))
    number = first_number(text)
    p = case.prompt
    return {
        "length": case.length,
        "depth": case.depth,
        "trial": case.trial,
        "key": p.key,
        "key_start": p.key_start,
        "key_in_memory": p.key_end <= cut,
        "answer": text,
        "number": number,
        "correct": number == p.key,
        "memory_tokens": reader.memory_tokens(),
        "tokens_read": read,
        "seconds": seconds,
    }


def _progress_line(n: int, total: int, row: dict[str, Any], t_start: float) -> str:
    mark = "ok" if row["correct"] else "--"
    return (
        f"{n + 1}/{total} length {row['length']} depth {row['depth']:g} trial {row['trial']}: "
        f"key {row['key']} -> {row['answer']!r} {mark} (read {row['tokens_read']} tokens, "
        f"{row['seconds']:.2f} s; {time.perf_counter() - t_start:.0f} s in all)"
    )


# -- plot ----------------------------------------------------------------------------------------


def plot(results_by_model: Mapping[str, Any], png: str | os.PathLike[str]) -> Path:
    """Accuracy against prompt length (log2 axis), one line per model, and a length x depth
    heatmap per model. `results_by_model`: name -> result of `passkey`, or one result alone."""
    if "accuracy" in results_by_model:
        results_by_model = {str(results_by_model.get("name", "model")): results_by_model}
    plt = pyplot()
    runs = list(results_by_model.items())
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5.5 * (len(runs) + 1), 4.2), squeeze=False)
    ax = axes[0][0]
    for name, res in runs:
        xs = sorted(int(n) for n in res["accuracy"])
        ax.plot(xs, [res["accuracy"][str(n)] for n in xs], marker="o", label=name)
    ax.axhline(0.9, color="gray", linestyle=":", linewidth=1)  # the goal at 100K
    ax.set_xscale("log", base=2)
    ticks = sorted({int(n) for _, res in runs for n in res["accuracy"]})
    ax.set_xticks(ticks, [_tokens_label(n) for n in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("passkey accuracy")
    ax.set_title("Passkey retrieval")
    ax.grid(True, alpha=0.3)
    ax.legend()
    image = None
    for ax, (name, res) in zip(axes[0][1:], runs):
        local = {(r["length"], r["depth"]) for r in res.get("trials", []) if not r["key_in_memory"]}
        image = _heatmap(ax, name, res["accuracy_by_depth"], local)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0][1:]), label="accuracy")
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _heatmap(
    ax: Any,
    name: str,
    by_depth: Mapping[str, Mapping[str, float]],
    local: set[tuple[int, float]],
) -> Any:
    """Accuracy by depth (rows) and length (columns); `*` marks cells where the key was in
    the local window (the tail) rather than in memory."""
    lengths = sorted(by_depth, key=int)
    depths = sorted({d for row in by_depth.values() for d in row}, key=float)
    grid = np.array([[by_depth[n].get(d, np.nan) for n in lengths] for d in depths], dtype=float)
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    for (r, c), v in np.ndenumerate(grid):
        if not np.isnan(v):
            star = "*" if (int(lengths[c]), float(depths[r])) in local else ""
            color = "w" if v < 0.6 else "k"
            ax.text(c, r, f"{v:.2f}{star}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(lengths)), [_tokens_label(int(n)) for n in lengths])
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("depth of the key")
    ax.set_title(f"{name} (* key in the local window)" if local else name)
    return image


def _tokens_label(n: int) -> str:
    for unit, name in ((1 << 20, "M"), (1 << 10, "K")):
        if n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)


# -- CLI -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    a = argparse.ArgumentParser(
        prog="python -m fot_mem.eval.passkey",
        description="Passkey retrieval: accuracy by prompt length and depth of the key.",
    )
    a.add_argument("--model", help="run folder, checkpoint folder, .gguf or 'smollm2'")
    a.add_argument("--name", help="label in the plot and JSON (default: the model spec)")
    a.add_argument("--lengths", type=comma_list(int), default=[4096, 16384, 65536, 131072, 262144])
    a.add_argument("--depths", type=comma_list(float), default=[0.1, 0.5, 0.9])
    a.add_argument("--trials", type=int, default=5)
    a.add_argument("--window", type=int, default=1024, help="local window of the reader")
    a.add_argument("--k", type=int, help="memories per query and head (default memory_k)")
    a.add_argument("--tail", type=int, help="tokens continued locally (default window // 2)")
    a.add_argument("--digits", type=int, default=5)
    a.add_argument("--filler", choices=("repeat", "data"), help="default: data if --filler-data")
    a.add_argument("--filler-data", help="token-shard build whose documents are the filler")
    a.add_argument("--filler-split", default="val")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--backend", default="exact", choices=backends.BACKENDS)
    a.add_argument("--mirror", help="memory device, searched exactly ('none': the CPU store; "
                   "default: --device)")  # fmt: skip
    a.add_argument("--no-share", action="store_true", help="read every prompt whole")
    a.add_argument("--tokenizer", default="gguf", choices=("gguf", "bytes"))
    a.add_argument("--gguf", help="GGUF file of the tokenizer (default: SmolLM2's)")
    add_model_options(a)
    a.add_argument("--json", help="result file")
    a.add_argument("--png", help="plot file")
    a.add_argument("--plot", nargs="+", metavar="JSON", help="only plot saved results to --png")
    a.add_argument("--quiet", action="store_true")
    return a


@functools.lru_cache(maxsize=4)  # the suite's steps share it
def load_tokenizer(kind: str, gguf: str | None = None) -> Tokenizer:
    if kind == "bytes":
        return BytesTokenizer()
    from ..torch.weights import load_tokenizer as from_gguf
    from ..torch.weights import smollm2_gguf

    return from_gguf(gguf or smollm2_gguf())  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = _parser()
    args = parser.parse_args(argv)
    drawn = plot_only(args, parser, plot)
    if drawn is not None:
        return drawn
    if not args.model:
        parser.error("--model is required (or --plot JSON... --png)")
    kind = args.filler or ("data" if args.filler_data else "repeat")
    if kind == "data" and not args.filler_data:
        parser.error("--filler data needs --filler-data DIR")
    mirror = args.device if args.mirror is None else args.mirror

    def labelled(result: dict[str, Any]) -> dict[str, Any]:
        result = {"name": args.name or str(args.model), "model": str(args.model), **result}
        result["settings"] = {**result["settings"], "device": str(args.device), "dtype": args.dtype}
        return result

    t0 = time.perf_counter()
    model = model_from_args(args.model, args)
    tokenizer = load_tokenizer(args.tokenizer, args.gguf)
    _log(not args.quiet, f"model and tokenizer loaded in {time.perf_counter() - t0:.1f} s")
    result = passkey(
        model,
        tokenizer,
        args.lengths,
        args.depths,
        args.trials,
        args.window,
        args.k,
        filler=args.filler_data if kind == "data" else "repeat",
        filler_split=args.filler_split,
        seed=args.seed,
        backend=args.backend,
        mirror=None if mirror == "none" else mirror,
        tail=args.tail,
        digits=args.digits,
        share=not args.no_share,
        progress=not args.quiet,
        partial=None if not args.json else lambda r: write_json(args.json, labelled(r)),
    )
    result = labelled(result)
    for n, acc in result["accuracy"].items():
        _log(not args.quiet, f"length {n}: accuracy {acc:.3f}")
    _log(
        not args.quiet,
        f"read {result['tokens_read']} tokens ({result['tokens_in_memory']} without sharing) "
        f"at {result['tokens_per_s'] or 0:.0f} tokens/s; {result['seconds']:.1f} s in all",
    )
    if args.json:
        write_json(args.json, result)
    if args.png:
        plot({result["name"]: result}, args.png)
    return result


if __name__ == "__main__":
    main()
