"""Filling a document's memory fast: when a model has one memory layer, that layer's keys depend
on no retrieval (only plain layers feed it), so a long document's windows are computed many to a
batch, with no search and no layer above it, and appended while the next batch runs. The keys
equal those a `LongDocumentReader` stores reading window by window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from ..store import Document
from .model import FotForCausalLM


class _Writer:
    """Appends on a background thread, one batch in flight, so the store's write (which
    releases the GIL) overlaps the next batch's forward. An error is raised by the next call."""

    def __init__(self, document: Document, layer: int) -> None:
        self.document, self.layer = document, layer
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def _run(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        started = time.perf_counter()
        try:
            self.document.append(self.layer, keys, values)
        except BaseException as e:  # handed to the caller's thread
            self.error = e
        self.seconds += time.perf_counter() - started

    def put(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.wait()
        self.thread = threading.Thread(target=self._run, args=(keys, values), daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _host(x: torch.Tensor) -> torch.Tensor:
    """`[B, Hkv, W, D]` -> `[B * W, Hkv, D]` on the CPU, in the dtype computed (the store
    takes torch tensors and rounds to its own dtype)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]).cpu()


@torch.no_grad()
def fill_document(
    model: FotForCausalLM,
    document: Document,
    tokens: np.ndarray | torch.Tensor | Callable[[int, int], np.ndarray],
    *,
    window: int,
    total: int | None = None,
    batch_windows: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Appends the memory of `tokens` to `document`, window by window of `window` tokens, as a
    reader would. `tokens`: the token ids, or a function `(start, stop) -> ids` for documents
    too large to hold (then give `total`). Continues after the tokens the document already
    holds (a whole number of windows). Returns {"tokens", "seconds", "append_s"}.

    Needs a model with exactly one memory layer: with more, a higher memory layer's keys depend
    on what the lower ones retrieve, and windows must be read in order (`LongDocumentReader`)."""
    layers = model.config.memory_layers
    if len(layers) != 1:
        raise InvalidValueError(
            f"a batched fill needs exactly one memory layer, the model has {list(layers)}; "
            "read the document with LongDocumentReader instead"
        )
    if callable(tokens):
        if total is None:
            raise InvalidValueError("a token function needs total= (the document's tokens)")
        cut = tokens
    else:
        ids = torch.as_tensor(tokens)
        if ids.dim() != 1 or ids.is_floating_point():
            raise InvalidValueError(f"tokens must be 1-d integer ids, got {tuple(ids.shape)}")
        total = ids.numel()

        def cut(start: int, stop: int) -> np.ndarray:
            return ids[start:stop].numpy()

    if window < 1 or batch_windows < 1:
        raise InvalidValueError(f"window {window} and batch_windows {batch_windows} must be >= 1")
    layer = layers[0]
    done = document.length(layer) if document.exists else 0
    if done % window and done != total:
        raise InvalidValueError(
            f"the document holds {done} tokens, not a whole number of windows of {window}"
        )
    device = next(model.parameters()).device
    writer = _Writer(document, layer)
    started = time.perf_counter()
    step = window * batch_windows
    try:
        for start in range(done, total, step):
            stop = min(total, start + step)
            chunk = torch.as_tensor(np.asarray(cut(start, stop)), dtype=torch.int64)
            if chunk.numel() != stop - start:
                raise InvalidValueError(f"tokens {start}..{stop} gave {chunk.numel()} ids")
            chunk = chunk.to(device)
            whole = (stop - start) // window * window
            parts = []
            if whole:
                parts.append(model.first_memory_kv(chunk[:whole].view(-1, window)))
            if whole < chunk.numel():  # the document's last, shorter window
                parts.append(model.first_memory_kv(chunk[whole:][None]))
            keys = torch.cat([_host(k) for k, _ in parts])
            values = torch.cat([_host(v) for _, v in parts])
            writer.put(keys, values)
            if progress is not None:
                progress(stop, total)
        writer.wait()
    finally:
        if writer.thread is not None:
            writer.thread.join()
    return {
        "tokens": total - done,
        "seconds": time.perf_counter() - started,
        "append_s": writer.seconds,
    }
