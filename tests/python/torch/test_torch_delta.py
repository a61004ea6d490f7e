"""Fine-tunes as deltas (`fot_mem.torch.delta`, `fot-mem delta`): training only some parameters
(`TrainConfig.trainable`), from an earlier run (`init` = its folder), saving what changed, and
loading it back on the base with its checksum checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fot_mem.data.shards import write_shards  # noqa: E402
from fot_mem.exceptions import InvalidValueError  # noqa: E402
from fot_mem.torch.delta import save_delta  # noqa: E402
from fot_mem.torch.weights import _checkpoint_folder, _load_checkpoint, load_model  # noqa: E402
from tiny import tiny_run  # noqa: E402

TEXT = "".join(f"def g{i}(y):\n    return y + {i}\n\n" for i in range(80))
ATTENTION = r"layers\.1\.self_attn\."  # the memory layer's attention


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base run from scratch, and a fine-tune of it that trains the memory layer's attention."""
    root = tmp_path_factory.mktemp("delta")
    docs = [(f"d{i}", TEXT[i * 40 :] * 2) for i in range(6)]
    split = {"d0": "val", "d1": "val"}
    write_shards(docs, root / "data", "bytes", lambda d: split.get(d, "train"), progress=False)
    tiny_run(root / "data", root / "base")
    tiny_run(root / "data", root / "tuned", init=str(root / "base"), trainable=ATTENTION, steps=3)
    return root


def weights(path: Path) -> dict[str, torch.Tensor]:
    return _load_checkpoint(_checkpoint_folder(path)).state_dict()


def test_training_changes_only_the_trainable_parameters(runs: Path) -> None:
    base, tuned = weights(runs / "base"), weights(runs / "tuned")
    assert base.keys() == tuned.keys()
    changed = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert changed and all("layers.1.self_attn." in n for n in changed)
    assert any("q_proj" in n for n in changed)


def test_a_delta_loads_back_as_the_fine_tune(runs: Path, tmp_path: Path) -> None:
    model = _load_checkpoint(_checkpoint_folder(runs / "tuned"))
    base = str(_checkpoint_folder(runs / "base"))
    manifest = save_delta(model, tmp_path / "d", base=base, pattern=ATTENTION)
    assert manifest["tensors"] and all("layers.1.self_attn." in n for n in manifest["tensors"])
    loaded = load_model(tmp_path / "d")  # any command's model argument takes a delta folder
    want = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    ids = torch.arange(20)[None] % 200
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    # bfloat16 halves the file; the tensors come back rounded, the rest as the base
    half = save_delta(model, tmp_path / "h", base=base, pattern=ATTENTION, dtype="bfloat16")
    assert half["bytes"] < 0.6 * manifest["bytes"]
    name = manifest["tensors"][0]
    assert torch.equal(load_model(tmp_path / "h").state_dict()[name], want[name].bfloat16().float())


def test_a_damaged_or_misplaced_delta_is_refused(runs: Path, tmp_path: Path) -> None:
    model = _load_checkpoint(_checkpoint_folder(runs / "tuned"))
    base = str(_checkpoint_folder(runs / "base"))
    save_delta(model, tmp_path / "d", base=base, pattern=ATTENTION)
    data = bytearray((tmp_path / "d" / "delta.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "d" / "delta.safetensors").write_bytes(bytes(data))
    with pytest.raises(InvalidValueError, match="damaged"):
        load_model(tmp_path / "d")
    # a base of another shape: named, not a crash
    other = tiny_run(runs / "data", tmp_path / "other", hidden_size=48, steps=1)
    assert other.model.config.hidden_size == 48
    save_delta(model, tmp_path / "e", base=str(tmp_path / "other"), pattern=ATTENTION)
    with pytest.raises(InvalidValueError, match="hidden_size 48"):
        load_model(tmp_path / "e")
    with pytest.raises(InvalidValueError, match="matches no tensor"):
        save_delta(model, tmp_path / "f", base=base, pattern="nothing-like-this")
    manifest = json.loads((tmp_path / "e" / "delta.json").read_text())
    (tmp_path / "e" / "delta.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(InvalidValueError, match="format 99"):
        load_model(tmp_path / "e")


def test_trainable_is_checked(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="not a regex"):
        tiny_run(runs / "data", tmp_path / "a", trainable="(")
    with pytest.raises(InvalidValueError, match="matches no parameter"):
        tiny_run(runs / "data", tmp_path / "b", trainable="no-such-parameter")


def fot(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fot_mem", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_the_command_makes_a_delta_of_what_the_run_trained(runs: Path, tmp_path: Path) -> None:
    done = fot("delta", runs / "tuned", tmp_path / "d")
    assert done.returncode == 0, done.stderr
    assert "delta:" in done.stdout and "warning" not in done.stdout
    manifest = json.loads((tmp_path / "d" / "delta.json").read_text())
    assert manifest["pattern"] == ATTENTION and manifest["base"] == str(runs / "base")
    tuned = weights(runs / "tuned")
    for name, tensor in load_model(tmp_path / "d").state_dict().items():
        assert torch.equal(tensor, tuned[name]), name
    # fewer tensors than the run trained: the command says which changes the delta loses
    done = fot("delta", runs / "tuned", tmp_path / "q", "--params", r"layers\.1\.self_attn\.q")
    assert done.returncode == 0 and "warning" in done.stdout, done.stdout
    # a run from scratch has no base
    done = fot("delta", runs / "base", tmp_path / "s")
    assert done.returncode != 0 and "from scratch" in done.stderr
    assert "Traceback" not in done.stderr
