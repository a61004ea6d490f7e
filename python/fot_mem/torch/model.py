"""`FotForCausalLM`: a Llama-style causal LM whose `memory_layers` are FoT memory layers.

Parameter names are those of Hugging Face's LlamaForCausalLM (`model.layers.3.self_attn.q_proj.
weight`, ...), so a Llama state dict loads as it is; QK-norm layers add `log_temperature`."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..exceptions import DtypeError, InvalidValueError, ShapeError
from .config import FotConfig
from .crossbatch import Crossbatch
from .layer import FotAttention
from .memory import Memory, MemoryArg
from .rope import RotaryEmbedding


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: FotConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = FotAttention(config, layer)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        memory: MemoryArg,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        sunk: int = 0,
    ) -> tuple[
        torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None
    ]:
        h, local, kv = self.self_attn(
            self.input_layernorm(x), cos, sin, memory=memory, cache=cache, sunk=sunk
        )
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), local, kv


class LocalCache:
    """Rotated keys and values of the tokens already in the local window, per layer, so that
    generation feeds one token at a time. Filled in place by `FotForCausalLM.forward`."""

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def length(self) -> int:
        return next(iter(self.layers.values()))[0].shape[2] if self.layers else 0


@dataclasses.dataclass
class FotOutput:
    """`logits [B, T, vocab]`; `memory_kv[layer] = (keys, values)`, each `[B, Hkv, T, D]`: the
    memory layers' unrotated keys and values of these tokens, what memory keeps of them."""

    logits: torch.Tensor
    memory_kv: dict[int, tuple[torch.Tensor, torch.Tensor]]


class LlamaBody(nn.Module):
    def __init__(self, config: FotConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)


class FotForCausalLM(nn.Module):
    """The model. `forward(input_ids, memory=..., cache=...)`; see `FotOutput`."""

    def __init__(self, config: FotConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaBody(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.checkpointing = False  # activation checkpointing per layer while training
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        memory: MemoryArg = None,
        cache: LocalCache | None = None,
        logits_rows: slice | None = None,
        head: bool = True,
    ) -> FotOutput:
        """`input_ids [B, T]` (int64). `memory`: a `Memory` per memory layer (a mapping), or a
        callable `(layer, queries [B, H, T, D]) -> Memory | None` asked by each memory layer (how
        retrieval runs at inference). `cache`: the local window so far; these tokens are
        appended to it and take the positions after it. Without a cache, positions are 0..T-1.
        `memory` may also be a `Crossbatch` (training). `logits_rows`: compute logits for these
        batch rows only. With `config.sink_token`, a window that starts afresh (no cache, or an
        empty one) gets the sink token in front; logits and `memory_kv` leave it out, and a
        cache keeps it (so a window holds one token fewer). `head=False`: `logits` holds the
        final normalised hidden states `[B, T, hidden]` instead, for a loss that applies
        `lm_head` in chunks (`fot_mem.train.loss`).
        """
        past = 0 if cache is None else cache.length
        x, cos, sin, sunk = self._embed(input_ids, past)
        if isinstance(memory, Crossbatch) and not memory.context_grad and cache is None:
            x, memory, logits_rows = self._contexts_apart(x, cos, sin, sunk, memory, logits_rows)
        memory_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        trim, logits_rows = self._trim(x.shape[0], memory, cache, logits_rows)
        last_memory = max(self.config.memory_layers, default=-1)
        for i, layer in enumerate(self.model.layers):
            assert isinstance(layer, DecoderLayer)
            prior = None if cache is None else cache.layers.get(i)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # Recompute the layer in the backward pass instead of keeping its activations.
                x, local, kv = checkpoint(
                    layer, x, cos, sin, memory, prior, sunk, use_reentrant=False
                )
            else:
                x, local, kv = layer(x, cos, sin, memory, prior, sunk)
            if cache is not None:
                cache.layers[i] = local
            if kv is not None:
                memory_kv[i] = kv
            if trim and i == last_memory:  # the layers above need no previous windows
                x = x[trim:]
        if logits_rows is not None:  # crossbatch needs no logits of the previous windows
            x = x[logits_rows]
        hidden = self.model.norm(x[:, sunk:])
        return FotOutput(self.lm_head(hidden) if head else hidden, memory_kv)

    def _embed(
        self, input_ids: torch.Tensor, past: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Checks `input_ids [B, T]`, puts the sink token in front of a window that starts
        afresh (`past` 0), and returns the embeddings, the RoPE tables of positions past.. and
        the number of sink positions."""
        if input_ids.dim() != 2:
            raise ShapeError(f"input_ids must be [batch, tokens], got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise DtypeError(f"input_ids must be int64 or int32 token ids, got {input_ids.dtype}")
        if input_ids.numel():
            low, high = torch.aminmax(input_ids)
            if int(low) < 0 or int(high) >= self.config.vocab_size:
                raise InvalidValueError(
                    f"token ids span {int(low)}..{int(high)}; the vocabulary is "
                    f"0..{self.config.vocab_size - 1}"
                )
        sunk = 0
        if self.config.sink_token is not None and past == 0 and input_ids.shape[1]:
            sink = input_ids.new_full((input_ids.shape[0], 1), self.config.sink_token)
            input_ids, sunk = torch.cat((sink, input_ids), dim=1), 1
        x = self.model.embed_tokens(input_ids)
        positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        cos, sin = self.model.rotary(positions, x.dtype)
        return x, cos, sin, sunk

    @torch.no_grad()
    def first_memory_kv(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lowest memory layer's keys and values `[B, Hkv, T, D]` (as `memory_kv` holds
        them) of windows `input_ids [B, T]` read afresh. Only plain layers feed that layer, so
        no memory changes them: the windows of one long document can go in one batch, and the
        layers above it are skipped. This is how a memory is filled fast."""
        if not self.config.memory_layers:
            raise InvalidValueError("the model has no memory layers")
        x, cos, sin, sunk = self._embed(input_ids, 0)
        top = self.config.memory_layers[0]
        for layer in self.model.layers[:top]:
            x = layer(x, cos, sin, None, None, sunk)[0]
        layer = self.model.layers[top]
        assert isinstance(layer, DecoderLayer)
        return layer.self_attn.memory_kv(layer.input_layernorm(x), sunk)

    def _contexts_apart(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        sunk: int,
        spec: Crossbatch,
        logits_rows: slice | None,
    ) -> tuple[torch.Tensor, dict[int, Memory], slice]:
        """Crossbatch with `context_grad=False`: the previous windows (rows of `x`, embedded) run
        without gradients up to the last memory layer; each memory layer's key and value
        projections of them (with gradients) become the current windows' `Memory`. Returns the
        current windows' rows, that memory per layer and `logits_rows` counted among them."""
        spec.check_rows(x.shape[0])
        n = spec.slots * spec.prev
        wanted = range(x.shape[0])[logits_rows or slice(None)]
        if len(wanted) == 0 or wanted.step != 1 or wanted.start < n:
            raise InvalidValueError(
                "Crossbatch(context_grad=False) gives logits of the current windows only: "
                f"logits_rows must lie in rows {n}.. of {x.shape[0]}"
            )
        layers = self.config.memory_layers
        contexts, inputs = x[:n], {}
        with torch.no_grad():  # up to the last memory layer's input; no layer above needs them
            for i, layer in enumerate(self.model.layers[: max(layers, default=-1)]):
                if i in layers:
                    inputs[i] = contexts
                contexts = layer(contexts, cos, sin, None, None, sunk)[0]
        if layers:
            inputs[max(layers)] = contexts
        memory = {}
        for i, hidden in inputs.items():
            layer = self.model.layers[i]
            assert isinstance(layer, DecoderLayer)
            keys, values = layer.self_attn.memory_kv(layer.input_layernorm(hidden), sunk)
            memory[i] = spec.memory(keys, values)
        return x[n:], memory, slice(wanted.start - n, wanted.stop - n)

    def _trim(
        self, rows: int, memory: MemoryArg, cache: LocalCache | None, logits_rows: slice | None
    ) -> tuple[int, slice | None]:
        """Crossbatch's previous windows serve only as keys and values of the memory layers: when
        no logits of theirs are asked for, the layers above the last memory layer skip them
        (5 of SmolLM2's 30 layers on half the rows). Returns the rows to drop there and
        `logits_rows` counted from the first row kept."""
        crossbatch = isinstance(memory, Crossbatch) and self.config.memory_layers
        if not crossbatch or cache is not None or logits_rows is None:
            return 0, logits_rows
        assert isinstance(memory, Crossbatch)
        first = memory.slots * memory.prev
        wanted = range(rows)[logits_rows]
        if len(wanted) == 0 or wanted.step != 1 or wanted.start < first:
            return 0, logits_rows
        return first, slice(wanted.start - first, wanted.stop - first)
