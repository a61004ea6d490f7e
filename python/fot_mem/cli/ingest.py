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

from ..document import Document
from ..exceptions import InvalidValueError
from ..torch.reader import LongDocumentReader, create_store
from . import device, models
from .folder import META, MemoryFolder

DEFAULTS = {"window": 2048, "k": 128, "backend": "exact", "store_dtype": "bfloat16"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ingest", help="read long texts into a memory (resumable)")
    p.add_argument("memory", type=Path, help="the memory folder (made on first use)")
    p.add_argument("paths", nargs="*", type=Path, help="text files or directories of them")
    p.add_argument("--data", type=Path, help="or: a token-shard build (fot_mem.train.data)")
    p.add_argument("--split", default="val", help="the build's split (default val)")
    p.add_argument("--limit", type=int, default=0, help="at most N documents (0: all)")
    p.add_argument("--name", help="the document's name (one file only; default: its file name)")
    p.add_argument("--max-tokens", type=int, default=0, help="keep each document's first N")
    # None below: a new memory takes the default, an existing one what it was made with.
    p.add_argument("--model", default=None, help="smollm2 (default), a run, a checkpoint, a .gguf")
    p.add_argument(
        "--memory-layers", default=None, help="for smollm2 / .gguf (default: the shipped model's)"
    )
    p.add_argument("--tokenizer", default=None, help="auto (default), bytes, smollm2 or a path")
    p.add_argument("--window", type=int, default=None, help="tokens per forward pass (2048)")
    p.add_argument("--k", type=int, default=None, help="memories per query and head (128)")
    p.add_argument("--backend", default=None, choices=["exact", "hnsw"])
    p.add_argument("--store-dtype", default=None, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    device.add_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    for what in ("limit", "max_tokens", "threads"):
        if getattr(args, what) < 0:
            raise InvalidValueError(f"--{what.replace('_', '-')} must be >= 0")
    for what in ("window", "k"):
        if getattr(args, what) is not None and getattr(args, what) < 1:
            raise InvalidValueError(f"--{what} must be >= 1, got {getattr(args, what)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    files = _sources(args)  # every path checked before anything is loaded or made
    on, mirror = device.placement(args)
    existing = MemoryFolder.open(args.memory) if (args.memory / META).is_file() else None
    if existing is not None:
        _check_settings(existing, args)
        spec = args.model or existing.meta["model"]
        made_with = existing.meta["model_info"]["memory_layers"]
        layers = _layers(args.memory_layers) if args.memory_layers else tuple(made_with)
    else:
        spec = args.model or models.DEFAULT_MODEL
        layers = _layers(args.memory_layers or ",".join(map(str, models.SMOLLM2_MEMORY_LAYERS)))
    started = time.perf_counter()
    model = models.load(spec, layers=layers)
    if existing is not None:
        check_model(existing, model)
        folder = existing
    else:
        folder = _create(args, spec, model)
    tok = models.tokenizer(folder.meta["tokenizer"], model.config.vocab_size)
    model.to(on)
    print(
        f"model {spec} loaded in {time.perf_counter() - started:.1f} s "
        f"({device.describe(on, mirror)})",
        flush=True,
    )
    meta = folder.meta
    store = (
        folder.store()
        if (folder.path / "store").exists()
        else folder.create_store(
            lambda path: create_store(
                path,
                model,
                dtype=meta.get("store_dtype", DEFAULTS["store_dtype"]),
                hnsw=meta["backend"] == "hnsw",
            )
        )
    )
    try:
        for name, source, ids in _documents(args, files, tok):
            if args.max_tokens:
                ids = ids[: args.max_tokens]
            _register(folder, name, source, ids)
            ingest(
                model,
                store.document(name),
                ids,
                folder.meta,
                progress=not args.no_progress,
                mirror=mirror,
            )
    finally:
        store.close()


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InvalidValueError(
            f"--memory-layers takes layer numbers like 8,16,24, got {text!r}"
        ) from None


def _model_spec(spec: str) -> str:
    """A path is kept absolute, so later commands find the model from any directory."""
    if spec not in models.NAMED and Path(spec).exists():
        return str(Path(spec).resolve())
    return spec


def _create(args: argparse.Namespace, spec: str, model: Any) -> MemoryFolder:
    most = model.config.max_position_embeddings
    window = min(DEFAULTS["window"], most) if args.window is None else args.window
    if window > most:
        raise InvalidValueError(
            f"--window {window} is longer than the model's context ({most} positions)"
        )
    meta: dict[str, Any] = {"model": _model_spec(spec), "model_info": models.describe(model)}
    tokenizer = args.tokenizer or "auto"
    if tokenizer == "auto":
        tokenizer = models.tokenizer("auto", model.config.vocab_size).name
    elif tokenizer not in ("bytes", "smollm2") and Path(tokenizer).exists():
        tokenizer = str(Path(tokenizer).resolve())
    meta.update(tokenizer=tokenizer, window=window)
    for what in ("k", "backend", "store_dtype"):
        meta[what] = getattr(args, what) if getattr(args, what) is not None else DEFAULTS[what]
    models.tokenizer(tokenizer, model.config.vocab_size)  # refused before the folder is made
    return MemoryFolder.create(args.memory, meta)


def _check_settings(folder: MemoryFolder, args: argparse.Namespace) -> None:
    """A memory keeps the settings it was made with: a different one given now is refused
    (rather than silently ignored, or mixed into the stored memory)."""
    meta = folder.meta
    if "store_dtype" not in meta and (folder.path / "store").exists():  # made before it was kept
        with folder.store(readonly=True) as store:
            meta["store_dtype"] = store.dtype
    given = {
        "window": args.window,
        "k": args.k,
        "backend": args.backend,
        "store_dtype": args.store_dtype,
    }
    if args.tokenizer not in (None, "auto"):
        tok = args.tokenizer
        given["tokenizer"] = tok if tok in ("bytes", "smollm2") else str(Path(tok).resolve())
    wrong = [
        f"--{k.replace('_', '-')} {v} (it has {meta.get(k, DEFAULTS.get(k))})"
        for k, v in given.items()
        if v is not None and v != meta.get(k, DEFAULTS.get(k))
    ]
    if wrong:
        raise InvalidValueError(
            f"{folder.path} was made with other settings: " + "; ".join(wrong) + ". Leave them "
            "out to continue it, or ingest into a new memory"
        )


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


def _sources(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The (name, file) pairs to ingest, each checked: it exists, holds UTF-8 text, is not
    empty, and no two different files share a name. A directory's hidden, empty and non-UTF-8
    files are skipped (and said so); named files must be text."""
    if bool(args.paths) == bool(args.data):
        raise InvalidValueError("give text files / directories, or --data, not both or neither")
    if args.data:
        if not args.data.is_dir():
            raise InvalidValueError(f"{args.data} does not exist or is not a directory")
        return []
    chosen: dict[str, Path] = {}
    for name, path, named in _files(args.paths):
        why = _not_text(path)
        if why and named:
            raise InvalidValueError(f"{path} {why}")
        if why:
            print(f"skipped {path}: {why}", file=sys.stderr)
            continue
        if name in chosen and chosen[name].resolve() != path.resolve():
            raise InvalidValueError(
                f"{chosen[name]} and {path} would both be document {name!r}; ingest them "
                "separately with --name"
            )
        chosen[name] = path
    if not chosen:
        raise InvalidValueError(
            "no text files to ingest in " + ", ".join(str(p) for p in args.paths)
        )
    if args.name and len(chosen) != 1:
        raise InvalidValueError(f"--name names one document; {len(chosen)} files were given")
    files = [(args.name or name, path) for name, path in chosen.items()]
    return files[: args.limit] if args.limit else files


def _not_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if not data:
        return "is empty"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (byte {e.start})"
    return None


def _documents(
    args: argparse.Namespace, files: list[tuple[str, Path]], tok: Any
) -> Iterator[tuple[str, str, np.ndarray]]:
    if args.data:
        from ..data.shards import TokenDataset

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
    for name, path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidValueError(f"{path} is not a readable UTF-8 text file: {e}") from None
        ids = np.asarray(tok.encode(text), dtype=np.int64)
        if not len(ids):
            print(f"skipped {path}: no tokens", file=sys.stderr)
            continue
        yield name, str(path.resolve()), ids


def _files(paths: list[Path]) -> Iterator[tuple[str, Path, bool]]:
    """(name, file, named on the command line)."""
    for path in paths:
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = f.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue  # .git and the like
                yield str(rel), f, False
        elif path.is_file():
            yield path.name, path, True
        else:
            raise InvalidValueError(f"{path} does not exist")


def _register(folder: MemoryFolder, name: str, source: str, ids: np.ndarray) -> None:
    """Token ids on disk before the first append: what a resumed run continues."""
    if name in folder.meta["documents"]:
        stored = folder.tokens(name)
        if not np.array_equal(stored, ids):
            raise InvalidValueError(
                f"{folder.path} already holds a document {name!r} of {len(stored):,} tokens "
                f"and this one ({len(ids):,} tokens) differs: another text or another "
                "--max-tokens. Give another --name, or the same --max-tokens to continue it"
            )
        return
    folder.write_tokens(name, ids)
    folder.meta["documents"][name] = {"source": source, "tokens": len(ids)}
    folder.save()


def ingest(
    model: Any,
    document: Document,
    ids: np.ndarray,
    meta: dict[str, Any],
    progress: bool = True,
    mirror: torch.device | None = None,
) -> dict[str, float]:
    """Reads `ids` into `document` from its committed length on; returns figures. `mirror`: a
    device to search a copy of the memory on (the store stays the durable copy)."""
    window, k, backend = int(meta["window"]), int(meta["k"]), str(meta["backend"])
    start = time.perf_counter()
    reader = LongDocumentReader(model, document, window=window, k=k, backend=backend, mirror=mirror)
    first = min(reader.committed().values())
    low = reader.finish_window(torch.from_numpy(ids))  # a window a stopped run left half-done
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
