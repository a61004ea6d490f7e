"""Long-document inference: a model reads a document window by window; before each window its
memory layers retrieve top-k per query and head from the document's memory, after it the
window's memory-layer keys and values are appended. The memory lives in a `MemoryStore`, so a
later process that opens the store continues where this one stopped."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .. import backends
from ..exceptions import DtypeError, InvalidValueError, ShapeError
from ..store import Document, MemoryStore
from .memory import Memory
from .model import FotForCausalLM, LocalCache
from .retrieval import Bounded, DeviceMirror, StoreRetriever


def create_store(
    path: str | os.PathLike[str], model: FotForCausalLM, **options: Any
) -> MemoryStore:
    """A new store shaped for `model`'s memory layers (`options`: dtype, chunk_tokens, hnsw)."""
    c = model.config
    if not c.memory_layers:
        raise InvalidValueError("the model has no memory_layers; give FotConfig(memory_layers=...)")
    return MemoryStore.create(
        path, layers=c.memory_layers, kv_heads=c.memory_kv_heads, head_dim=c.head_dim, **options
    )


class LongDocumentReader:
    """Reads, scores and continues one document with `model` and the memory in `document`.

    `window`: tokens of local context per forward pass (default: the model's
    max_position_embeddings). `k`: memories per query and head (default `config.memory_k`).
    `backend` / `ef`: store search (ignored with a mirror). `mirror`: a device (e.g. "cuda") to
    keep the document's memory on and search there with torch, instead of the CPU store.
    `profile`: synchronise the GPU around retrieval and appends so that `stats` hold their
    GPU time (slower; for measurements).
    """

    def __init__(
        self,
        model: FotForCausalLM,
        document: Document,
        *,
        window: int | None = None,
        k: int | None = None,
        backend: str = "exact",
        ef: int | None = None,
        mirror: torch.device | str | None = None,
        profile: bool = False,
    ) -> None:
        c = model.config
        store = document.store
        if tuple(store.layers) != tuple(c.memory_layers):
            raise InvalidValueError(
                f"the store keeps layers {store.layers}, the model's memory_layers are "
                f"{list(c.memory_layers)}"
            )
        if (store.kv_heads, store.head_dim, store.value_dim) != (
            c.memory_kv_heads,
            c.head_dim,
            c.head_dim,
        ):
            raise ShapeError(
                f"the store has kv_heads {store.kv_heads} x head_dim {store.head_dim} (value_dim "
                f"{store.value_dim}), the model {c.memory_kv_heads} x {c.head_dim} ({c.head_dim})"
            )
        self.model = model
        self.document = document
        self.window = c.max_position_embeddings if window is None else window
        if isinstance(self.window, bool) or not isinstance(self.window, int):
            raise InvalidValueError(f"window must be an integer, got {self.window!r}")
        if not 1 <= self.window <= c.max_position_embeddings:
            raise InvalidValueError(
                f"window {self.window} must be in 1..max_position_embeddings "
                f"{c.max_position_embeddings}"
            )
        self.k = c.memory_k if k is None else k
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidValueError(f"k must be a positive integer, got {self.k!r}")
        backends.check(backend)  # refused now, not after the first window is stored
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, int) or ef < 1):
            raise InvalidValueError(f"ef must be a positive integer, got {ef!r}")
        self.backend, self.ef = backend, ef
        self.source: StoreRetriever = (
            StoreRetriever(document, backend=backend, ef=ef)
            if mirror is None
            else DeviceMirror(document, mirror)
        )
        # Host seconds spent in retrieval and appends. GPU work runs asynchronously, so these
        # hold the GPU time too only with `profile=True` (a synchronisation around each).
        self.profile = profile
        self.stats = {"tokens": 0, "windows": 0, "retrieve_s": 0.0, "append_s": 0.0}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def memory_tokens(self) -> int:
        """Tokens in the document's memory (the same in every memory layer)."""
        return self.source.length(self.model.config.memory_layers[0])

    def committed(self) -> dict[int, int]:
        """Committed tokens of each memory layer (they differ only after a run stopped between
        the layers' appends of one window: `finish_window`)."""
        exists = self.document.exists
        return {
            n: self.document.length(n) if exists else 0 for n in self.model.config.memory_layers
        }

    def provider(self, layer: int, queries: torch.Tensor) -> Memory | None:
        """What the model's memory layers call: `queries [1, H, T, D]` -> Memory or None."""
        self._sync()
        t0 = time.perf_counter()
        mem = self.source.retrieve(layer, queries[0].transpose(0, 1), self.k)
        self._sync()
        self.stats["retrieve_s"] += time.perf_counter() - t0
        return mem

    def _tokens(self, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(tokens)
        if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
            raise DtypeError(f"token ids must be integers, got {ids.dtype}")
        ids = ids.to(torch.int64)
        if ids.dim() != 1:
            raise ShapeError(f"tokens must be a 1-d sequence, got shape {tuple(ids.shape)}")
        vocab = self.model.config.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InvalidValueError(f"token ids must be in 0..{vocab - 1}")
        return ids.to(self.device)

    def _sync(self) -> None:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _append(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._sync()
        t0 = time.perf_counter()
        for layer, (keys, values) in kv.items():
            # [1, Hkv, T, D] -> [T, Hkv, D], the store's token-major input
            self.source.append(layer, keys[0].transpose(0, 1), values[0].transpose(0, 1))
        self._sync()
        self.stats["append_s"] += time.perf_counter() - t0

    @torch.no_grad()
    def logits(self, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits `[T, vocab]` of one window read against the memory, which is left unchanged."""
        ids = self._tokens(tokens)
        if not 1 <= ids.numel() <= self.window:
            raise InvalidValueError(f"logits() takes 1..{self.window} tokens, got {ids.numel()}")
        return self.model(ids[None], memory=self.provider).logits[0]

    @torch.no_grad()
    def read(self, tokens: Sequence[int] | torch.Tensor, *, losses: bool = True) -> torch.Tensor:
        """Reads `tokens` window by window into memory. Returns the next-token loss (nats) of
        tokens 1..N-1, float32 `[N - 1]`: each token predicted from the window so far and the
        memory of everything read before that window. `losses=False` only fills the memory:
        the LM head is skipped (a fifth of SmolLM2's forward) and an empty tensor returned."""
        ids = self._tokens(tokens)

        def remember(out: Any, chunk: torch.Tensor) -> None:
            self._append(out.memory_kv)
            self.stats["tokens"] += chunk.numel()
            self.stats["windows"] += 1

        found = window_losses(
            self.model, ids, self.window, self.provider, after=remember, losses=losses
        )
        return found.cpu()

    @torch.no_grad()
    def finish_window(self, tokens: Sequence[int] | torch.Tensor) -> int:
        """Completes the window that a stopped run left half-appended (the memory layers ahead
        hold it, those behind do not): reads it again against the memory before it, searches
        bounded there, and appends it to the layers behind. `tokens`: the whole document.
        Returns the committed length that reading goes on from."""
        done = self.committed()
        low = min(done.values())
        if low == max(done.values()):
            return low
        chunk = self._tokens(tokens)[low : low + self.window]
        if low % self.window or any(n not in (low, low + chunk.numel()) for n in done.values()):
            raise InvalidValueError(
                f"document {self.document.name!r}: committed lengths {done} are not one window "
                f"apart (window {self.window}); was it written with another window?"
            )
        source = self.source
        self.source = Bounded(self.document, low, backend=self.backend, ef=self.ef)
        try:
            out = self.model(chunk[None], memory=self.provider)
        finally:
            self.source = source
        for layer, (keys, values) in out.memory_kv.items():
            if done[layer] == low:
                self.document.append(layer, keys[0].transpose(0, 1), values[0].transpose(0, 1))
        return low + chunk.numel()

    @torch.no_grad()
    def generate(
        self,
        prompt: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        stop: Sequence[int] = (),
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Continues `prompt` (a new local window, with the whole memory behind it) by up to
        `max_new_tokens` tokens, greedily or sampled at `temperature`; stops after a token in
        `stop` or when the window is full. Memory is not changed. Returns the new tokens."""
        ids = self._tokens(prompt)
        if not 1 <= ids.numel() < self.window:
            raise InvalidValueError(
                f"the prompt must have 1..{self.window - 1} tokens, got {ids.numel()}"
            )
        cache = LocalCache()
        new: list[int] = []
        feed = ids[None]
        while len(new) < max_new_tokens and cache.length + feed.shape[1] <= self.window:
            logits = self.model(feed, memory=self.provider, cache=cache).logits[0, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                # on the CPU, where a torch.Generator lives unless the caller made it elsewhere
                on = generator.device if generator is not None else torch.device("cpu")
                token = int(torch.multinomial(probs.to(on), 1, generator=generator))
            else:
                token = int(logits.argmax())
            new.append(token)
            if token in stop:
                break
            feed = torch.tensor([[token]], device=self.device)
        return new


@torch.no_grad()
def window_losses(
    model: FotForCausalLM,
    ids: torch.Tensor,
    window: int,
    memory: Any,
    *,
    after: Callable[[Any, torch.Tensor], None] | None = None,
    losses: bool = True,
) -> torch.Tensor:
    """Next-token losses of tokens 1..N-1 of `ids [N]`, read in windows against `memory` (a
    provider, a mapping or None); a window's first token is predicted from the previous
    window's last logits. `after(out, chunk)` runs after each window (a reader appends the
    window's keys there; without it the memory is left as it is). `losses=False` skips the LM
    head and returns an empty tensor."""
    found: list[torch.Tensor] = []
    last: torch.Tensor | None = None
    ids = ids.to(next(model.parameters()).device)
    for start in range(0, ids.numel(), window):
        chunk = ids[start : start + window]
        if not losses:
            out = model(chunk[None], memory=memory, logits_rows=slice(0, 0))
        else:
            out = model(chunk[None], memory=memory)
            logits = out.logits[0]
            if last is not None:  # the window's first token, from the previous window's end
                found.append(F.cross_entropy(last[None], chunk[:1], reduction="none"))
            found.append(F.cross_entropy(logits[:-1].float(), chunk[1:], reduction="none"))
            last = logits[-1].float()
        if after is not None:
            after(out, chunk)
    return torch.cat(found) if found else torch.zeros(0)
