"""A CLI memory folder: the store, the documents' token ids and what made them.

MEMORY/store/              the MemoryStore (keys and values of the memory layers)
MEMORY/tokens/NAME.u32     each document's token ids (little-endian uint32), written whole
                           before its first append, so an ingest can resume and `search`
                           can show the text around a hit
MEMORY/fot-mem.json        the model, tokenizer, window and k the store was made with

Nothing here needs torch: `fot-mem verify` and `info` use only this module.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..exceptions import InvalidValueError, StoreCorruptError
from ..store import MemoryStore

META = "fot-mem.json"


class MemoryFolder:
    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MemoryFolder:
        folder = Path(path)
        meta_path = folder / META
        if not meta_path.is_file():
            what = "does not exist" if not folder.exists() else f"has no {META}"
            raise InvalidValueError(f"{folder} {what}: not a fot-mem memory (make one with ingest)")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta["documents"], dict) or "model" not in meta:
                raise KeyError("documents or model")
        except (ValueError, KeyError, TypeError) as e:
            raise StoreCorruptError(f"{meta_path} is malformed: {e!r}") from e
        return cls(folder, meta)

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any]) -> MemoryFolder:
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise InvalidValueError(f"{folder} is a file, not a fot-mem memory folder")
        if folder.exists() and not _only_leftovers(folder):
            raise InvalidValueError(f"{folder} exists and is not a fot-mem memory")
        folder.mkdir(parents=True, exist_ok=True)
        made = cls(folder, {**meta, "documents": {}})
        (folder / "tokens").mkdir(exist_ok=True)
        made.save()  # last: the meta file marks the folder as a memory
        return made

    def save(self) -> None:
        """Atomic: a crash leaves the old or the new file, never half of one."""
        _write_atomic(self.path / META, json.dumps(self.meta, indent=1).encode())

    def store(self, *, readonly: bool = False) -> MemoryStore:
        return MemoryStore.open(self.path / "store", readonly=readonly)

    def create_store(self, make: Callable[[Path], MemoryStore]) -> MemoryStore:
        """The store, made whole under a temporary name and then renamed, so that a run killed
        while making it leaves no half-made store behind (the leftover is discarded)."""
        final, tmp = self.path / "store", self.path / "store.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        make(tmp).close()
        tmp.rename(final)
        _fsync_dir(self.path)
        return self.store()

    # -- documents -------------------------------------------------------------------------
    def tokens_path(self, name: str) -> Path:
        return self.path / "tokens" / (quote(name, safe="") + ".u32")

    def write_tokens(self, name: str, ids: np.ndarray) -> None:
        _write_atomic(self.tokens_path(name), ids.astype("<u4").tobytes())

    def tokens(self, name: str) -> np.ndarray:
        if name not in self.meta["documents"]:
            known = ", ".join(sorted(self.meta["documents"])) or "none"
            raise InvalidValueError(f"no document {name!r} in {self.path} (it holds: {known})")
        path = self.tokens_path(name)
        if not path.is_file():
            raise StoreCorruptError(f"{path} is missing: the document's token ids")
        return np.fromfile(path, dtype="<u4").astype(np.int64)

    def only_document(self, name: str | None) -> str:
        """`name`, or the memory's one document when none is given."""
        if name is not None:
            return name
        docs = sorted(self.meta["documents"])
        if len(docs) != 1:
            raise InvalidValueError(
                f"{self.path} holds {len(docs)} documents; name one with --doc ({', '.join(docs)})"
            )
        return docs[0]


def _only_leftovers(folder: Path) -> bool:
    """What a create killed before its meta file was saved leaves: an empty tokens folder and
    temporary files."""
    for entry in folder.iterdir():
        if entry.name == "tokens" and entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.name == META + ".tmp":
            continue
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    """`data` whole in a temporary file, made durable, then renamed over `path` (and the
    rename made durable): a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
