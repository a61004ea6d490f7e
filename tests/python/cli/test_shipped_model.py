"""The model shipped in the package (`fot-smollm2`, a delta on SmolLM2) and the names that pick
a model: the delta is whole and fits SmolLM2; the default model is the base with the delta's
tensors; `base` is the base alone; memory layers other than the delta's are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from fot_mem.cli import models  # noqa: E402
from fot_mem.exceptions import InvalidValueError  # noqa: E402
from fot_mem.torch import FotConfig, FotForCausalLM  # noqa: E402
from fot_mem.torch import weights as W  # noqa: E402
from fot_mem.torch.delta import _sha256, save_delta  # noqa: E402

SHIPPED = W.SHIPPED / W.DEFAULT_FOT


def test_the_shipped_delta_is_whole_and_fits_smollm2() -> None:
    from safetensors import safe_open

    manifest = json.loads((SHIPPED / "delta.json").read_text())
    assert manifest["base"] == "smollm2"
    assert _sha256(SHIPPED / "delta.safetensors") == manifest["sha256"]
    assert (SHIPPED / "delta.safetensors").stat().st_size <= 16 * 2**20  # the budget
    c = manifest["model_config"]
    assert (c["hidden_size"], c["num_layers"], c["num_heads"], c["num_kv_heads"]) == (576, 30, 9, 3)
    layers = c["memory_layers"]
    assert layers == list(models.SMOLLM2_MEMORY_LAYERS) and c["sink_token"] == 0
    shapes = {
        "q_proj": (576, 576),
        "k_proj": (192, 576),
        "v_proj": (192, 576),
        "o_proj": (576, 576),
    }
    with safe_open(str(SHIPPED / "delta.safetensors"), "pt") as f:
        names = set(f.keys())
        assert names == set(manifest["tensors"])
        assert names == {f"model.layers.{i}.self_attn.{p}.weight" for i in layers for p in shapes}
        for name in names:
            t = f.get_tensor(name)
            assert tuple(t.shape) == shapes[name.split(".")[-2]] and torch.isfinite(t).all()


def tiny_base(layers: tuple[int, ...], sink: int | None = None) -> FotForCausalLM:
    torch.manual_seed(0)
    config = FotConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=64,
        memory_layers=layers,
        sink_token=sink,
    )
    return FotForCausalLM(config)


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FotForCausalLM:
    """A tiny stand-in: a delta of layer 1's attention on a tiny "smollm2" base."""
    tuned = tiny_base((1,), sink=0)
    with torch.no_grad():
        tuned.model.layers[1].self_attn.q_proj.weight.add_(1.0)
    save_delta(tuned, tmp_path / W.DEFAULT_FOT, base="smollm2", pattern=r"layers\.1\.self_attn\.")
    monkeypatch.setattr(W, "SHIPPED", tmp_path)
    monkeypatch.setattr(
        models, "_cached_smollm2", lambda layers, sink=None: tiny_base(layers, sink)
    )
    return tuned


def test_the_default_model_is_the_base_with_the_shipped_delta(shipped: FotForCausalLM) -> None:
    assert models.DEFAULT_MODEL == "fot-smollm2"
    got = models.load("fot-smollm2", layers=(1,))
    assert got.config.sink_token == 0 and got.config.memory_layers == (1,)
    want = shipped.state_dict()
    for name, tensor in got.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    base = models.load("base", layers=(1,))
    q = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q], want[q])
    assert torch.equal(base.state_dict()[q], models.load("smollm2", layers=(1,)).state_dict()[q])


def test_the_shipped_model_keeps_its_memory_layers(shipped: FotForCausalLM) -> None:
    with pytest.raises(InvalidValueError, match=r"memory layers 1; .*use --model base"):
        models.load("fot-smollm2", layers=(2,))


def test_a_damaged_shipped_delta_is_refused(shipped: FotForCausalLM, tmp_path: Path) -> None:
    path = tmp_path / W.DEFAULT_FOT / "delta.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidValueError, match="damaged"):
        models.load("fot-smollm2", layers=(1,))


def test_a_missing_shipped_delta_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(W, "SHIPPED", tmp_path)
    with pytest.raises(FileNotFoundError, match="installed without it"):
        W.shipped_delta()
