"""`fot-mem score` and `fot-mem generate`: use a stored document as memory in a later process,
without reading it again. Neither changes the memory (the store is opened read-only)."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from ..torch.reader import LongDocumentReader, window_losses
from ..torch.retrieval import Bounded
from . import device, models
from .folder import MemoryFolder
from .ingest import check_model


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("memory", type=Path, help="a memory folder made by ingest")
    p.add_argument("--doc", help="the stored document (default: the memory's only one)")
    p.add_argument("--model", default=None, help="default: the model the memory was made with")
    p.add_argument("--k", type=int, default=None, help="memories per query and head")
    p.add_argument("--backend", default=None, choices=["exact", "hnsw"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    device.add_arguments(p)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("score", help="perplexity of a text with a stored document as memory")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="the text to score")
    src.add_argument("--text", help="the text to score")
    p.add_argument("--no-compare", action="store_true", help="skip the no-memory baseline")
    p.set_defaults(run=run_score)
    g = sub.add_parser("generate", help="continue a stored document (or a prompt) from memory")
    _common(g)
    g.add_argument("--prompt", help="default: the document's last --prompt-tokens tokens")
    g.add_argument("--prompt-tokens", type=int, default=256)
    g.add_argument("-n", "--new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(run=run_generate)


class Session:
    """A stored document, its model and tokenizer, opened read-only."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.threads:
            torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        self.folder = MemoryFolder.open(args.memory)
        meta = self.folder.meta
        self.name = self.folder.only_document(args.doc)  # refused before the model loads
        self.ids = self.folder.tokens(self.name)
        if args.k is not None and args.k < 1:
            raise InvalidValueError(f"--k must be >= 1, got {args.k}")
        spec = args.model or meta["model"]
        layers = tuple(meta["model_info"]["memory_layers"])
        self.device, self.mirror = device.placement(args)
        self.model = models.load(spec, layers=layers)
        check_model(self.folder, self.model)
        self.model.to(self.device)
        self.tok = models.tokenizer(meta["tokenizer"], self.model.config.vocab_size)
        self.store = self.folder.store(readonly=True)
        self.document = self.store.document(self.name)
        self.window = int(meta["window"])
        self.k = args.k or int(meta["k"])
        self.backend = args.backend or str(meta["backend"])
        self.load_s = time.perf_counter() - t0
        # the tokens every layer holds (an ingest cut short may leave fewer than the text)
        self.committed = (
            min(self.document.length(layer) for layer in self.store.layers)
            if self.document.exists
            else 0
        )
        unfinished = (
            f" of {len(self.ids):,} (ingest not finished)" if self.committed < len(self.ids) else ""
        )
        print(
            f"memory {self.name!r}: {self.committed:,} tokens{unfinished} ({self.folder.path}); "
            f"loaded in {self.load_s:.1f} s ({device.describe(self.device, self.mirror)})"
        )

    def reader(self, limit: int | None = None) -> LongDocumentReader:
        reader = LongDocumentReader(
            self.model,
            self.document,
            window=self.window,
            k=self.k,
            backend=self.backend,
            mirror=self.mirror if limit is None else None,
        )
        if limit is not None:  # the store's search, bounded (generate from the document's end)
            reader.source = Bounded(self.document, limit, backend=self.backend)
        return reader

    def close(self) -> None:
        self.store.close()


def run_score(args: argparse.Namespace) -> None:
    s = Session(args)
    try:
        text = args.text if args.text is not None else _read(args.file)
        ids = torch.tensor(s.tok.encode(text), dtype=torch.int64)
        if len(ids) < 2:
            raise InvalidValueError("the text to score has fewer than 2 tokens")
        t0 = time.perf_counter()
        reader = s.reader()
        with_memory = window_losses(s.model, ids, s.window, reader.provider)
        seconds = time.perf_counter() - t0
        ppl = math.exp(float(with_memory.mean()))
        print(f"scored {len(ids):,} tokens in {seconds:.1f} s ({len(ids) / seconds:,.0f} tok/s)")
        print(f"perplexity with the memory of {s.name!r}: {ppl:.3f}")
        if not args.no_compare:
            plain = window_losses(s.model, ids, s.window, None)
            print(f"perplexity without memory:             {math.exp(float(plain.mean())):.3f}")
    finally:
        s.close()


def run_generate(args: argparse.Namespace) -> None:
    s = Session(args)
    try:
        if args.prompt is not None:
            prompt = torch.tensor(s.tok.encode(args.prompt), dtype=torch.int64)
            reader = s.reader()
        else:  # the memory's end as the local window; the memory holds what precedes it
            end = s.committed
            if end == 0:
                raise InvalidValueError(f"document {s.name!r} has no tokens in memory yet")
            if args.prompt_tokens < 1:
                raise InvalidValueError(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
            p = min(args.prompt_tokens, end, s.window - 1)
            start = _line_start(s, end - p, end, p)
            prompt = torch.from_numpy(np.ascontiguousarray(s.ids[start:end]))
            reader = s.reader(limit=start)
        if not 1 <= len(prompt) < s.window:
            raise InvalidValueError(
                f"the prompt must have 1..{s.window - 1} tokens, got {len(prompt)}"
            )
        if args.new_tokens < 1:
            raise InvalidValueError(f"--new-tokens must be >= 1, got {args.new_tokens}")
        if len(prompt) + args.new_tokens > s.window:
            print(
                f"(the window of {s.window} tokens holds {s.window - len(prompt) + 1} new tokens "
                "after this prompt)"
            )
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        new = reader.generate(prompt, args.new_tokens, temperature=args.temperature, generator=gen)
        seconds = time.perf_counter() - t0
        print(f"--- prompt ({len(prompt)} tokens, end) ---")
        print(s.tok.decode(prompt[-64:].tolist()))
        print(
            f"--- continuation ({len(new)} tokens, {len(new) / max(seconds, 1e-9):.1f} tok/s) ---"
        )
        print(s.tok.decode(new))
    finally:
        s.close()


def _line_start(s: Session, start: int, end: int, p: int) -> int:
    """The first line start at or after `start` within the prompt's first half (at most 64
    tokens on), so the prompt begins with a whole line and keeps most of its tokens."""
    for i in range(start, min(start + min(64, p // 2), end - 1)):
        if "\n" in s.tok.decode([int(s.ids[i])]):
            return i + 1
    return start


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidValueError(f"{path} is not a readable UTF-8 text file: {e}") from None
