"""`FotConfig`: the shape of a Llama-style model with FoT memory layers. Every field is checked
when the config is made, so a bad shape fails here with its numbers, not deep inside a matmul."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping
from typing import Any

from ..exceptions import InvalidValueError

_INTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "max_position_embeddings",
    "memory_k",
    "memory_kv_heads",
)


@dataclasses.dataclass(frozen=True)
class FotConfig:
    """Llama architecture (RMSNorm, SwiGLU, RoPE, grouped-query attention) plus FoT fields.

    `memory_layers`: indices of the layers whose attention also reads memory (the paper's
    LongLLaMA 3B uses 6, 12, 18 of 26; its small models one layer). `qk_norm`: in memory layers,
    L2-normalise queries and keys and scale by a learnable per-head temperature instead of
    1/sqrt(head_dim) (the paper's small models); off for a pretrained Llama. `memory_k`: top-k
    retrieved per query and head at inference (the paper: 128 for the small models).
    `sink_token`: a token id put before every window that starts afresh (no local cache) and
    dropped from its outputs. A window's first token saw nothing before it and turns into an
    attention sink whose key draws attention whatever the query; with this token in front, the
    sink is a token whose key memory never keeps, so memory holds content keys only. None: off.
    `memory_kv_heads`: kv heads of the memory layers (0: num_kv_heads). Memory keeps
    memory_kv_heads x head_dim per token and layer, so a memory layer may have fewer kv heads
    than the others: plain layers keep their heads for the work below it. `qk_temperature`:
    QK-norm's starting temperature (0: sqrt(head_dim)); cosine logits need
    a large one to be sharp. `memory_rope`: False gives memory layers no positional encoding
    at all, local keys included (the paper's small models); True rotates local queries and
    keys as Llama does, with memory keys at position 0 (LongLLaMA).
    """

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    memory_layers: tuple[int, ...] = ()
    qk_norm: bool = False
    memory_k: int = 128
    sink_token: int | None = None
    memory_kv_heads: int = 0  # 0: num_kv_heads
    memory_rope: bool = True
    qk_temperature: float = 0.0

    def __post_init__(self) -> None:
        for name in _INTS:
            value = getattr(self, name)
            try:
                value = operator.index(value)  # ints, numpy ints; not floats, strings or bools
            except TypeError:
                value = None
            if value is None or isinstance(getattr(self, name), bool) or value < 0:
                raise InvalidValueError(
                    f"FotConfig.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, value)
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_heads, 1))
        if self.memory_kv_heads == 0:
            object.__setattr__(self, "memory_kv_heads", self.num_kv_heads)
        bad = [name for name in _INTS if getattr(self, name) < 1]
        if bad:
            raise InvalidValueError(f"FotConfig.{bad[0]} must be positive, got 0")
        try:
            layers = sorted(operator.index(i) for i in self.memory_layers)
        except TypeError:
            raise InvalidValueError(
                f"memory_layers must be a sequence of layer indices, got {self.memory_layers!r}"
            ) from None
        object.__setattr__(self, "memory_layers", tuple(layers))  # the store keeps them sorted
        t = self.qk_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise InvalidValueError(f"FotConfig.qk_temperature must be >= 0, got {t!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidValueError(
                    f"FotConfig.{name} must be a positive number, got {value!r}"
                )
        for name in ("num_kv_heads", "memory_kv_heads"):
            if self.num_heads % getattr(self, name):
                raise InvalidValueError(
                    f"num_heads {self.num_heads} must be a multiple of {name} {getattr(self, name)}"
                )
        if self.head_dim % 2:
            raise InvalidValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not isinstance(self.memory_rope, bool):
            raise InvalidValueError(
                f"FotConfig.memory_rope must be a bool, got {self.memory_rope!r}"
            )
        sink = self.sink_token
        if sink is not None and (
            isinstance(sink, bool) or not isinstance(sink, int) or not 0 <= sink < self.vocab_size
        ):
            raise InvalidValueError(
                f"FotConfig.sink_token must be None or a token id in 0..{self.vocab_size - 1}, "
                f"got {sink!r}"
            )
        outside = [i for i in self.memory_layers if not 0 <= i < self.num_layers]
        if outside or len(set(self.memory_layers)) != len(self.memory_layers):
            raise InvalidValueError(
                f"memory_layers {list(self.memory_layers)} must be distinct layer indices in "
                f"0..{self.num_layers - 1}"
            )

    def replace(self, **changes: Any) -> FotConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any] | Any, **fot: Any) -> FotConfig:
        """From a Hugging Face Llama config (a `config.json` dict or a `LlamaConfig`), plus the
        FoT fields given as keywords (`memory_layers=(...)`, `qk_norm=`, `memory_k=`)."""
        d = dict(hf) if isinstance(hf, Mapping) else hf.to_dict()
        arch = d.get("model_type", "llama")
        if arch not in ("llama", "mistral"):
            raise InvalidValueError(f"only Llama-architecture models load, this one is {arch!r}")
        # transformers >= 5 keeps the scaling in rope_parameters (rope_scaling is then None)
        for key in ("rope_scaling", "rope_parameters"):
            scaling = d.get(key)
            if scaling and not isinstance(scaling, Mapping):
                raise InvalidValueError(f"{key} must be a mapping, got {scaling!r}")
            if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
                raise InvalidValueError(f"{key} {scaling} is not supported (plain RoPE only)")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise InvalidValueError("attention_bias / mlp_bias are not supported (Llama has none)")
        window = d.get("sliding_window")
        if window is not None and window < d.get("max_position_embeddings", 0):
            raise InvalidValueError(
                f"sliding_window {window} is not supported (full attention only)"
            )
        need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        missing = [key for key in (*need, "num_attention_heads") if key not in d]
        if missing:
            raise InvalidValueError(f"the Hugging Face config lacks {missing}")
        theta = d.get("rope_theta")
        if theta is None:  # transformers >= 5 keeps it in rope_parameters
            theta = (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            rope_theta=float(theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            **fot,
        )


def smollm2_135m(**fot: Any) -> FotConfig:
    """SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 kv heads, head_dim 64)."""
    return FotConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        **fot,
    )
