"""`fot-mem info` and `fot-mem verify`: what a memory (or a bare store) holds, and whether its
files are whole. Both open nothing for writing."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..exceptions import FotMemError, InvalidValueError
from ..store import MemoryStore
from .folder import META, MemoryFolder


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("info", help="what a memory or store holds")
    p.add_argument("memory", type=Path, help="a memory folder or a store directory")
    p.set_defaults(run=run_info)
    v = sub.add_parser("verify", help="check every checksum and count; changes nothing")
    v.add_argument("memory", type=Path, help="a memory folder or a store directory")
    v.set_defaults(run=run_verify)


def _split(path: Path) -> tuple[MemoryFolder | None, Path]:
    if (path / META).is_file():
        return MemoryFolder.open(path), path / "store"
    if not path.is_dir():
        raise InvalidValueError(f"{path} does not exist or is not a directory")
    return None, path


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def run_info(args: argparse.Namespace) -> None:
    folder, path = _split(args.memory)
    if folder is not None:
        m = folder.meta
        info = m["model_info"]
        print(f"memory {folder.path}")
        print(
            f"  model {m['model']!r}: {info['num_layers']} layers, memory layers "
            f"{info['memory_layers']}, tokenizer {m['tokenizer']}, window {m['window']}, "
            f"k {m['k']}, backend {m['backend']}"
        )
    store = MemoryStore.open(path, readonly=True)
    try:
        hnsw = store.hnsw
        print(
            f"store {path}: {store.dtype}, layers {store.layers}, {store.kv_heads} kv heads x "
            f"{store.head_dim} (values {store.value_dim}), chunks of {store.chunk_tokens:,} "
            f"tokens, hnsw {'off' if hnsw is None else hnsw}"
        )
        names = store.documents()
        print(f"  {len(names)} documents, {_size(store.nbytes)} of keys and values")
        for name in names:
            doc = store.document(name)
            lengths = [doc.length(layer) for layer in store.layers]
            indexed = [doc.indexed_tokens(layer) for layer in store.layers]
            tokens = f"{lengths[0]:,}" if len(set(lengths)) == 1 else f"per layer {lengths}"
            line = f"  - {name}: {tokens} tokens, {_size(doc.nbytes)}"
            if hnsw is not None:
                line += f", indexed {min(indexed):,}"
            if folder is not None and name in folder.meta["documents"]:
                d = folder.meta["documents"][name]
                if d["tokens"] != min(lengths):
                    line += f" (of {d['tokens']:,}: ingest not finished)"
                line += f"  <- {d['source']}"
            print(line)
        if folder is not None:
            for name, d in sorted(folder.meta["documents"].items()):
                if name not in names:  # registered, nothing appended yet
                    print(f"  - {name}: 0 tokens (of {d['tokens']:,}: ingest not finished)")
    finally:
        store.close()


def run_verify(args: argparse.Namespace) -> None:
    path = args.memory
    problems: list[dict[str, str]] = []
    folder: MemoryFolder | None = None
    if (path / META).is_file():
        try:
            folder = MemoryFolder.open(path)
        except FotMemError as e:  # reported with the rest, not instead of it
            problems.append({"severity": "error", "path": META, "message": str(e)})
        path = path / "store"
    elif not path.is_dir():
        raise InvalidValueError(f"{path} does not exist or is not a directory")
    try:
        report = verify_store(path)
    except FotMemError as e:
        report = {"problems": [{"severity": "error", "path": ".", "message": str(e)}]}
    problems += list(report["problems"])
    if folder is not None:
        problems += _check_tokens(folder, path)
    checked = report.get("checked", {})
    print(f"verified {path}: " + ", ".join(f"{v:,} {k}" for k, v in checked.items()))
    errors = [p for p in problems if p["severity"] == "error"]
    for p in problems:
        print(f"  {p['severity']}: {p['path']}: {p['message']}")
    print(
        "no problems found"
        if not problems
        else f"{len(errors)} errors, {len(problems) - len(errors)} warnings"
    )
    if errors:
        raise SystemExit(1)


def verify_store(path: Path) -> dict[str, Any]:
    return MemoryStore.verify(path)


def _check_tokens(folder: MemoryFolder, path: Path) -> list[dict[str, str]]:
    """Each document's token file is whole and at least as long as its committed memory; an
    ingest not finished, and store documents the memory does not name, are warnings."""
    problems = []

    def problem(severity: str, where: str, message: str) -> None:
        problems.append({"severity": severity, "path": where, "message": message})

    try:
        store: MemoryStore | None = MemoryStore.open(path, readonly=True)
    except FotMemError:
        store = None  # its problems are reported by the store's verify
    try:
        for name, d in folder.meta["documents"].items():
            file = folder.tokens_path(name)
            rel = str(file.relative_to(folder.path))
            size = file.stat().st_size if file.is_file() else -1
            if size != 4 * d["tokens"]:
                have = "missing" if size < 0 else f"{size} bytes"
                problem("error", rel, f"{have}; {d['tokens']} tokens need {4 * d['tokens']}")
                continue
            if store is None:
                continue
            doc = store.document(name)
            lengths = [doc.length(layer) for layer in store.layers] if doc.exists else [0]
            if max(lengths) > d["tokens"]:
                held = f"the store holds {max(lengths)} tokens, the document {d['tokens']}"
                problem("error", rel, held)
            elif min(lengths) < d["tokens"]:
                problem(
                    "warning",
                    rel,
                    f"ingest not finished: {min(lengths):,} of {d['tokens']:,} tokens in memory "
                    "(run the same ingest again to continue it)",
                )
        if store is not None:
            for name in store.documents():
                if name not in folder.meta["documents"]:
                    problem("warning", f"store/{name}", f"the memory's {META} does not name it")
    finally:
        if store is not None:
            store.close()
    return problems
