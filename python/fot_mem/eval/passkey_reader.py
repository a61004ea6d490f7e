"""Reading passkey prompts with shared prefixes (`eval.passkey`): prompts in the order of their
prefix trie, each keeping the windows it shares with the one read before it."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from ..store import MemoryStore
from ..torch import FotForCausalLM
from ..torch.reader import LongDocumentReader
from ..torch.retrieval import DeviceMirror


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
