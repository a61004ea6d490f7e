"""The evaluation suite (fot_mem.eval.suite): steps run in one process with each model loaded
once, a failing step does not stop the next, `--skip-done` reruns only what is not complete,
and passkey writes its partial result after every prompt."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from fot_mem import InvalidValueError  # noqa: E402
from fot_mem.cli.eval import suite  # noqa: E402
from fot_mem.eval import passkey as pk  # noqa: E402
from fot_mem.torch import FotConfig, FotForCausalLM, weights  # noqa: E402

CONFIG = FotConfig(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=100.0,
    memory_layers=(1,),
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, checkpoint folder) of a small random model with byte tokens."""
    from fot_mem.data.shards import write_shards
    from safetensors.torch import save_model

    tmp = tmp_path_factory.mktemp("suite")
    docs = [(f"doc{i}", (pk.FILLER_SENTENCE + f" {i}\n") * 8) for i in range(4)]
    write_shards(docs, tmp / "data", "bytes", "val", progress=False)
    ckpt = tmp / "checkpoint-0000001"
    ckpt.mkdir()
    torch.manual_seed(0)
    save_model(FotForCausalLM(CONFIG), str(ckpt / "model.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"model_config": dataclasses.asdict(CONFIG)}))
    return tmp / "data", ckpt


def steps_text(data: Path, ckpt: Path, out: Path) -> str:
    return f"""# a comment, then the steps
distraction --model {ckpt} --name 'a model' --data {data} --d 1,2,4 --windows 2 --window 16 \
--device cpu --json {out}/d.json --png {out}/d.png
perplexity --model {out}/missing --data {data} --json {out}/broken.json --device cpu
passkey --model {ckpt} --name tiny --tokenizer bytes --lengths 300,400 --depths 0.5 --trials 1 \
--window 64 --tail 48 --device cpu --json {out}/pk.json --quiet
"""


def test_steps_run_in_one_process_each_model_loaded_once(
    setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, ckpt = setup
    loads: list[str] = []
    real = weights._load_model

    def counting(spec: Any, **kw: Any) -> FotForCausalLM:
        loads.append(str(spec))
        return real(spec, **kw)

    monkeypatch.setattr(weights, "_load_model", counting)
    partial: list[dict[str, Any]] = []
    real_write = pk.write_json
    monkeypatch.setattr(
        pk, "write_json", lambda path, r: (partial.append(r), real_write(path, r))[1]
    )
    steps = suite.parse_steps(steps_text(data, ckpt, tmp_path))
    assert [s[0] for s in steps] == ["distraction", "perplexity", "passkey"]
    assert steps[0][4] == "a model"
    rows = suite.run(steps)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "missing" in rows[1]["error"]
    assert loads.count(str(ckpt)) == 1  # distraction loaded it; passkey reused it
    assert not weights._MODELS  # forgotten after the run
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["complete"] and list(d["models"]) == ["a model"]
    # passkey wrote after its first prompt (partial) and at the end (complete)
    assert [r["complete"] for r in partial] == [False, True]
    assert len(partial[0]["trials"]) == 1 and len(partial[0]["accuracy"]) == 1
    assert suite.done(str(tmp_path / "pk.json")) and not suite.done(str(tmp_path / "broken.json"))
    # a second run skips what is complete and retries the failed step
    rows = suite.run(steps, skip_done=True)
    assert [r["status"] for r in rows] == ["skipped", "failed", "skipped"]
    (tmp_path / "pk.json").write_text(json.dumps(partial[0]))  # as a timeout would leave it
    assert not suite.done(str(tmp_path / "pk.json"))


def test_cli_summary_and_bad_steps(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, ckpt = setup
    steps = tmp_path / "steps.txt"
    steps.write_text(steps_text(data, ckpt, tmp_path).split("passkey")[0])
    assert suite.main([str(steps), "--summary", str(tmp_path / "s.json")]) == 1
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [r["status"] for r in summary["steps"]] == ["ok", "failed"]
    assert len(summary["failed"]) == 1
    with pytest.raises(InvalidValueError, match="unknown evaluation"):
        suite.parse_steps("training --steps 3")
    assert suite.json_path(["--json=x.json"]) == "x.json" and suite.json_path([]) is None
