"""Tokenized documents in memory-mapped shards, tokenized once, read without copies.

Invariant: a build directory holds `<split>-NNNN.bin` files of raw token ids (native byte order
of the `dtype` in the index: uint16 when the vocabulary has at most 65536 ids, else uint32) and
`index.json`, written last and atomically, so a directory with an index is a complete build.
Each document lies whole in one shard: `{id, shard, offset, length}` (offset and length in
tokens), its tokens are `shard[offset : offset + length]`, and documents follow each other in a
shard in index order. A shard is closed once it holds about `shard_bytes`; a document larger than
that gets a shard of its own. Tokens are the document's text only: no BOS/EOS are added (the
index names the tokenizer's, for a reader that wants them).

`TokenDataset` checks the index (format, version, dtype, every shard present with exactly the
size its documents need) before serving `dataset[i]` as a memory-mapped view.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import FormatVersionError, InvalidValueError, StoreCorruptError
from ..tokenizers import Tokenizer, get_tokenizer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX",
    "TokenDataset",
    "read_index",
    "write_shards",
]

FORMAT = "fot_mem.token_shards"
FORMAT_VERSION = 1
INDEX = "index.json"
SHARD_BYTES = 64 * 1024 * 1024
SHARD_GLOB = "*-[0-9][0-9][0-9][0-9].bin"


def _dtype_for(vocab_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _progress() -> Any:
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(unit="B", unit_scale=True, desc="tokenizing", smoothing=0.05)


class _SplitWriter:
    def __init__(self, out_dir: Path, split: str, dtype: np.dtype[Any], shard_bytes: int) -> None:
        self.out_dir, self.split, self.dtype = out_dir, split, dtype
        self.shard_tokens = max(1, shard_bytes // dtype.itemsize)
        self.shards: list[dict[str, Any]] = []
        self.documents: list[dict[str, Any]] = []
        self.file: Any = None
        self.filled = 0

    def add(self, doc_id: str, tokens: np.ndarray) -> None:
        if self.file is None or (self.filled and self.filled + len(tokens) > self.shard_tokens):
            self._next_shard()
        tokens.astype(self.dtype, copy=False).tofile(self.file)
        self.documents.append(
            {
                "id": doc_id,
                "shard": len(self.shards) - 1,
                "offset": self.filled,
                "length": len(tokens),
            }
        )
        self.filled += len(tokens)
        self.shards[-1]["tokens"] = self.filled

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):04d}.bin"
        self.file = open(self.out_dir / name, "wb")  # closed in close()
        self.shards.append({"file": name, "tokens": 0})
        self.filled = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def write_shards(
    docs: Iterable[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    tokenizer: Tokenizer | str,
    split: str | Callable[[str], str],
    *,
    metadata: dict[str, Any] | None = None,
    shard_bytes: int = SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `(doc_id, text)` pairs into shards under `out_dir` and write its index; return
    the index. `split` is a split name for every document, or a function of the document id
    (`lambda i: corpus.split_of(i, 0.05)`). `metadata` (set name, package versions, ...) is
    stored as is. An existing build is refused unless `overwrite`, which deletes it first."""
    tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    out = Path(out_dir)
    if (out / INDEX).exists() or any(out.glob(SHARD_GLOB)):
        if not overwrite:
            raise InvalidValueError(
                f"{out} already holds a build; pass overwrite=True to replace it"
            )
        (out / INDEX).unlink(missing_ok=True)
        for old in out.glob(SHARD_GLOB):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    dtype = _dtype_for(tok.vocab_size)
    split_for = (lambda _: split) if isinstance(split, str) else split
    writers: dict[str, _SplitWriter] = {}
    seen: set[str] = set()
    started = time.time()
    try:
        with _progress() if progress else contextlib.nullcontext(None) as bar:
            for doc_id, text in docs:
                if doc_id in seen:
                    raise InvalidValueError(f"document id {doc_id!r} appears twice")
                seen.add(doc_id)
                tokens = np.asarray(tok.encode(text))
                if tokens.size and (tokens.min() < 0 or tokens.max() >= tok.vocab_size):
                    raise InvalidValueError(f"{tok.name} gave ids outside [0, {tok.vocab_size})")
                name = split_for(doc_id)
                if name not in writers:
                    writers[name] = _SplitWriter(out, name, dtype, shard_bytes)
                writers[name].add(doc_id, tokens)
                if bar is not None:
                    bar.update(len(text.encode("utf-8")))
    finally:
        for w in writers.values():
            w.close()
    index = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "tokenizer": {
            "name": tok.name,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
        },
        "dtype": dtype.name,
        "byteorder": "little" if np.little_endian else "big",
        "splits": {
            name: {"shards": w.shards, "documents": w.documents}
            for name, w in sorted(writers.items())
        },
        "build_seconds": round(time.time() - started, 3),
        "metadata": metadata or {},
    }
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / INDEX)
    return index


def read_index(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The index of a build, its format and version checked."""
    path = Path(out_dir) / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a token-shard build (or an unfinished one)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StoreCorruptError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise StoreCorruptError(f"{path} is not a {FORMAT} index")
    if index.get("version") != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has format version {index.get('version')!r}; this build reads {FORMAT_VERSION}"
        )
    return index


class TokenDataset:
    """The documents of one split of a build: `len(ds)`, `ds[i]` (a 1-D memory-mapped view of
    document i's token ids, no copy), `ds.ids`, `ds.lengths`, `ds.vocab_size`, `ds.total_tokens`."""

    def __init__(self, out_dir: str | os.PathLike[str], split: str = "train") -> None:
        self.path = Path(out_dir)
        index = read_index(self.path)
        splits = index.get("splits", {})
        if split not in splits:
            raise InvalidValueError(f"{self.path} has no split {split!r}; it has {sorted(splits)}")
        try:
            self.dtype = np.dtype(index["dtype"])
            self.vocab_size = int(index["tokenizer"]["vocab_size"])
            self.tokenizer: dict[str, Any] = index["tokenizer"]
            shards, docs = splits[split]["shards"], splits[split]["documents"]
            self.ids: list[str] = [d["id"] for d in docs]
            table = np.array([[d["shard"], d["offset"], d["length"]] for d in docs], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreCorruptError(f"{self.path / INDEX} is malformed: {e!r}") from e
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise StoreCorruptError(f"{self.path / INDEX}: unexpected dtype {self.dtype}")
        if index.get("byteorder", "little") != ("little" if np.little_endian else "big"):
            raise StoreCorruptError(f"{self.path}: written with {index['byteorder']}-endian tokens")
        self.split = split
        self.metadata: dict[str, Any] = index.get("metadata", {})
        table = table.reshape(-1, 3)
        self._shard, self._offset, self.lengths = table[:, 0], table[:, 1], table[:, 2]
        self.total_tokens = int(self.lengths.sum())
        self._maps = [self._open_shard(s) for s in shards]
        # Every document must lie inside its shard.
        sizes = np.array([len(m) for m in self._maps], dtype=np.int64)
        bad = (
            (self._shard < 0)
            | (self._shard >= len(sizes))
            | (self._offset < 0)
            | (self.lengths < 0)
        )
        if not bad.any() and len(table):
            bad = self._offset + self.lengths > sizes[self._shard]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise StoreCorruptError(
                f"{self.path / INDEX}: document {self.ids[i]!r} lies outside its shard ({docs[i]})"
            )

    def _open_shard(self, shard: dict[str, Any]) -> np.ndarray:
        path = self.path / shard["file"]
        expected = int(shard["tokens"]) * self.dtype.itemsize
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise StoreCorruptError(f"shard {path} is missing") from e
        if size != expected:
            raise StoreCorruptError(
                f"shard {path} has {size} bytes; the index says {shard['tokens']} tokens of "
                f"{self.dtype} ({expected} bytes): truncated or overwritten"
            )
        if size == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents")
        i %= n
        start = int(self._offset[i])
        return self._maps[int(self._shard[i])][start : start + int(self.lengths[i])]

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.path)!r}, {self.split!r}: {len(self)} documents, "
            f"{self.total_tokens:,} tokens of {self.tokenizer.get('name')})"
        )
