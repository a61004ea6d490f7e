"""`fot-mem ingest`: read long texts through a FoT model into a persistent memory, one
document per file. Resumable: a run that stops (killed, even inside a window) continues where
the store's committed tokens end, and ends with the store an uninterrupted run leaves."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from ..store import Document
from ..torch.reader import LongDocumentReader, create_store
from . import models
from .memory import Bounded, MemoryFolder, committed


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ingest", help="read long texts into a memory (resumable)")
    p.add_argument("memory", type=Path, help="the memory folder (made on first use)")
    p.add_argument("paths", nargs="*", type=Path, help="text files or directories of them")
    p.add_argument("--data", type=Path, help="or: a token-shard build (fot_mem.train.data)")
    p.add_argument("--split", default="val", help="the build's split (default val)")
    p.add_argument("--limit", type=int, default=0, help="at most N documents (0: all)")
    p.add_argument("--name", help="the document's name (one file only; default: its file name)")
    p.add_argument("--max-tokens", type=int, default=0, help="keep each document's first N")
    p.add_argument("--model", default=models.DEFAULT_MODEL, help="smollm2, a run, a .gguf")
    p.add_argument("--memory-layers", default="8,16,24", help="for smollm2 / .gguf models")
    p.add_argument("--tokenizer", default="auto", help="auto, bytes, smollm2 or a path")
    p.add_argument("--window", type=int, default=2048, help="tokens per forward pass")
    p.add_argument("--k", type=int, default=128, help="memories per query and head")
    p.add_argument("--backend", default="exact", choices=["exact", "hnsw"])
    p.add_argument("--store-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = tuple(int(x) for x in args.memory_layers.split(","))
    started = time.perf_counter()
    model = models.load(args.model, layers=layers)
    folder = _folder(args, model)
    tok = models.tokenizer(folder.meta["tokenizer"], model.config.vocab_size)
    print(f"model {args.model} loaded in {time.perf_counter() - started:.1f} s", flush=True)
    path = folder.path / "store"
    store = (
        create_store(path, model, dtype=args.store_dtype, hnsw=args.backend == "hnsw")
        if not path.exists()
        else folder.store()
    )
    try:
        for name, source, ids in _documents(args, tok):
            if args.max_tokens:
                ids = ids[: args.max_tokens]
            _register(folder, name, source, ids)
            ingest(model, store.document(name), ids, folder.meta, progress=not args.no_progress)
    finally:
        store.close()


def _folder(args: argparse.Namespace, model: Any) -> MemoryFolder:
    info = models.describe(model)
    if not (args.memory / "fot-mem.json").exists():
        window = min(args.window, model.config.max_position_embeddings)
        meta = {"model": args.model, "model_info": info, "tokenizer": args.tokenizer}
        meta.update(window=window, k=args.k, backend=args.backend)
        if meta["tokenizer"] == "auto":
            meta["tokenizer"] = models.tokenizer("auto", model.config.vocab_size).name
        return MemoryFolder.create(args.memory, meta)
    folder = MemoryFolder.open(args.memory)
    check_model(folder, model)
    return folder


def check_model(folder: MemoryFolder, model: Any) -> None:
    """Refuses a model other than the one the memory was made with, naming what differs."""
    want, have = folder.meta["model_info"], models.describe(model)
    diff = [
        f"{k} {want.get(k)} (memory) vs {have[k]} (model)" for k in have if want.get(k) != have[k]
    ]
    if diff:
        raise InvalidValueError(
            f"{folder.path} was made with model {folder.meta['model']!r}; this model differs: "
            + "; ".join(diff)
        )


def _documents(args: argparse.Namespace, tok: Any) -> Iterator[tuple[str, str, np.ndarray]]:
    if bool(args.paths) == bool(args.data):
        raise InvalidValueError("give text files / directories, or --data, not both or neither")
    if args.data:
        from ..train.shards import TokenDataset

        ds = TokenDataset(args.data, args.split)
        if ds.tokenizer.get("name") != tok.name:
            raise InvalidValueError(
                f"{args.data} was tokenized with {ds.tokenizer.get('name')!r}, the memory uses "
                f"{tok.name!r}"
            )
        count = min(len(ds), args.limit) if args.limit else len(ds)
        for i in range(count):
            yield ds.ids[i], f"{args.data}:{args.split}", np.asarray(ds[i], dtype=np.int64)
        return
    files = list(_files(args.paths))
    if args.name and len(files) != 1:
        raise InvalidValueError(f"--name names one document; {len(files)} files were given")
    for i, (name, path) in enumerate(files):
        if args.limit and i >= args.limit:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidValueError(f"{path} is not a readable UTF-8 text file: {e}") from None
        yield args.name or name, str(path), np.asarray(tok.encode(text), dtype=np.int64)


def _files(paths: list[Path]) -> Iterator[tuple[str, Path]]:
    for path in paths:
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                yield str(f.relative_to(path)), f
        elif path.is_file():
            yield path.name, path
        else:
            raise InvalidValueError(f"{path} does not exist")


def _register(folder: MemoryFolder, name: str, source: str, ids: np.ndarray) -> None:
    """Token ids on disk before the first append: what a resumed run continues."""
    if name in folder.meta["documents"]:
        if not np.array_equal(folder.tokens(name), ids):
            raise InvalidValueError(
                f"{folder.path} already holds a document {name!r} with other text; give "
                "another --name"
            )
        return
    folder.write_tokens(name, ids)
    folder.meta["documents"][name] = {"source": source, "tokens": len(ids)}
    folder.save()


def ingest(
    model: Any, document: Document, ids: np.ndarray, meta: dict[str, Any], progress: bool = True
) -> dict[str, float]:
    """Reads `ids` into `document` from its committed length on; returns figures."""
    store = document.store
    window, k, backend = int(meta["window"]), int(meta["k"]), str(meta["backend"])
    done = committed(document, store.layers)
    first = low = min(done.values())
    start = time.perf_counter()
    if low != max(done.values()):
        low = _finish_window(model, document, ids, done, window, k, backend)
    reader = LongDocumentReader(model, document, window=window, k=k, backend=backend)
    _exit_hook(reader)
    bar = _bar(progress, len(ids), low, document.name)
    losses = []
    for pos in range(low, len(ids), window):
        losses.append(reader.read(torch.from_numpy(ids[pos : pos + window])))
        if bar is not None:
            bar.update(min(window, len(ids) - pos))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    read = len(ids) - first
    loss = float(torch.cat(losses).mean()) if losses and sum(len(x) for x in losses) else None
    figures = {"tokens": len(ids), "read": read, "seconds": seconds}
    rate = f"{read / seconds:,.0f} tok/s" if read and seconds > 0 else "nothing to read"
    resumed = f" (resumed at {first:,})" if first else ""
    said = f", mean loss {loss:.3f}" if loss is not None else ""
    print(
        f"{document.name}: {len(ids):,} tokens{resumed}; {read:,} read in {seconds:.1f} s, "
        f"{rate}{said}",
        flush=True,
    )
    return figures


def _finish_window(
    model: Any,
    document: Document,
    ids: np.ndarray,
    done: dict[int, int],
    window: int,
    k: int,
    backend: str,
) -> int:
    """A run stopped between the layers' appends of one window: compute that window again
    against the memory before it (the layers ahead already hold it, so their searches are
    bounded) and append it to the layers behind."""
    low = min(done.values())
    chunk = ids[low : low + window]
    if low % window or any(n not in (low, low + len(chunk)) for n in done.values()):
        raise InvalidValueError(
            f"document {document.name!r}: committed lengths {done} are not one window apart "
            f"(window {window}); was it written with another window?"
        )
    reader = LongDocumentReader(model, document, window=window, k=k, backend=backend)
    reader.source = Bounded(document, low, backend=backend)
    with torch.no_grad():
        out = model(torch.from_numpy(chunk)[None], memory=reader._provider)
    for layer, (keys, values) in out.memory_kv.items():
        if done[layer] == low:
            document.append(layer, keys[0].transpose(0, 1), values[0].transpose(0, 1))
    return low + len(chunk)


def _bar(enabled: bool, total: int, initial: int, name: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(
        total=total, initial=initial, unit="tok", unit_scale=True, desc=name, file=sys.stderr
    )


def _exit_hook(reader: LongDocumentReader) -> None:
    """Tests: FOT_MEM_TEST_EXIT_AFTER_APPENDS=N ends the process abruptly after N layer
    appends, as a kill would (no cleanup, no flush beyond what each append made durable)."""
    limit = int(os.environ.get("FOT_MEM_TEST_EXIT_AFTER_APPENDS", "0"))
    if not limit:
        return
    append = reader.source.append
    count = [0]

    def counted(layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        append(layer, keys, values)
        count[0] += 1
        if count[0] >= limit:
            os._exit(17)

    reader.source.append = counted  # type: ignore[method-assign]
