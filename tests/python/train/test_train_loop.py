"""The crossbatch training loop on the CPU with tiny shapes: it learns, checkpoints, resumes to
the same result, and runs under torchrun (two processes, gloo) with negatives from both."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fot_mem import InvalidValueError  # noqa: E402
from fot_mem.data.shards import write_shards  # noqa: E402
from fot_mem.train.config import TrainConfig, learning_rate, schedule_value  # noqa: E402
from fot_mem.train.loop import Trainer  # noqa: E402
from tiny import tiny_config  # noqa: E402

TEXT = "def add(a, b):\n    return a + b\n\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("data")
    docs = [(f"doc{i}", (TEXT + f"# {i}\n") * 40) for i in range(12)]
    write_shards(
        docs,
        out,
        "bytes",
        lambda doc: "val" if doc in ("doc0", "doc1", "doc2") else "train",
        progress=False,
    )
    return str(out)


def config(data: str, out: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(
        batch=3,
        d_schedule="0:1,4:2",
        steps=6,
        lr=3e-3,
        warmup=2,
        eval_every=3,
        eval_batches=2,
        eval_d="1,2",
        checkpoint_every=3,
    )
    return tiny_config(data, out, **{**base, **changes})


def test_schedules() -> None:
    assert [schedule_value("0:2,1000:8", s) for s in (0, 999, 1000, 5000)] == [2, 2, 8, 8]
    drawn = [schedule_value("0:2,10:1-4", s, seed=3) for s in range(10, 410)]
    assert set(drawn) == {1, 2, 3, 4}  # every size of the range is met
    assert drawn == [schedule_value("0:2,10:1-4", s, seed=3) for s in range(10, 410)]
    assert drawn != [schedule_value("0:2,10:1-4", s, seed=4) for s in range(10, 410)]
    assert schedule_value("0:2,10:1-4", 9, seed=3) == 2
    for bad in ("", "5:2", "0:0", "a:b", "0:3-2", "0:0-2"):
        with pytest.raises(InvalidValueError):
            schedule_value(bad, 0)
    cfg = TrainConfig(data="x", out="y", lr=1.0, min_lr=0.1, warmup=10, steps=110)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 60) == pytest.approx(0.55)
    assert learning_rate(cfg, 110) == pytest.approx(0.1)
    # annealing by the clock: the cosine follows the minutes where they run ahead of the steps
    assert learning_rate(cfg, 60, clock=1.0) == pytest.approx(0.55)  # not asked for
    timed = dataclasses.replace(cfg, minutes=2.0, anneal_by_minutes=True)
    assert learning_rate(timed, 60, clock=0.0) == pytest.approx(0.55)
    assert learning_rate(timed, 60, clock=1.0) == pytest.approx(0.1)
    assert learning_rate(timed, 110, clock=0.2) == pytest.approx(0.1)
    assert learning_rate(timed, 5, clock=1.0) == pytest.approx(0.6)  # warmup stays by steps
    with pytest.raises(InvalidValueError, match="anneal_by_minutes needs minutes"):
        dataclasses.replace(cfg, anneal_by_minutes=True).check()


def test_trains_logs_and_checkpoints(data: str, tmp_path: Path) -> None:
    log = Trainer(config(data, tmp_path, steps=30, eval_every=30, checkpoint_every=30)).run(
        progress=False
    )
    assert [row["step"] for row in log] == list(range(31))
    assert set(log[0]) == {"step", "val_loss_d1", "val_loss_d2"}  # before training
    assert [row["d"] for row in log[1:6]] == [1, 1, 1, 1, 2]
    first, last = log[1]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert last < first - 1.0  # a repetitive text is learnt
    assert "val_loss_d1" in log[-1] and "val_loss_d2" in log[-1]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(31))
    ckpt = tmp_path / (tmp_path / "latest").read_text()
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.pt", "state.json"}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 30 and state["model_config"]["memory_layers"] == [1]


def test_resume_gives_the_same_run(data: str, tmp_path: Path) -> None:
    whole = Trainer(config(data, tmp_path / "a")).run(progress=False)
    Trainer(config(data, tmp_path / "b", steps=3)).run(progress=False)
    resumed = Trainer(config(data, tmp_path / "b"))
    assert resumed.step == 3
    rest = resumed.run(progress=False)
    assert [r["loss"] for r in rest] == pytest.approx([r["loss"] for r in whole[4:]], rel=1e-5)
    a = Trainer(config(data, tmp_path / "a")).model.state_dict()
    b = resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(7))


def test_refuses_bad_settings(data: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError):
        Trainer(config(data, tmp_path, schedule="linear"))
    with pytest.raises(InvalidValueError):
        Trainer(config(data, tmp_path, batch=0))


def test_torchrun_two_processes_with_negatives_from_both(data: str, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",  # a free port of its own
        "-m",
        "fot_mem",
        "train",
        "--data",
        data,
        "--out",
        str(out),
        "--hidden-size",
        "32",
        "--intermediate-size",
        "64",
        "--num-layers",
        "2",
        "--num-heads",
        "4",
        "--num-kv-heads",
        "2",
        "--memory-layers",
        "1",
        "--batch",
        "2",
        "--window",
        "16",
        "--d-schedule",
        "0:3",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--eval-d",
        "1",
        "--checkpoint-every",
        "3",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--gather-negatives",
        "--no-qk-norm",
        "--accum",
        "2",  # the first micro-batch under no_sync
    ]
    # One retry: on a loaded 2-core machine the gloo rendezvous has been seen to drop once in
    # a full suite run (not reproduced in isolation); a second failure is a real one.
    for _attempt in range(2):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if run.returncode == 0:
            break
        shutil.rmtree(out, ignore_errors=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and all(r["d"] == 3 for r in rows[1:])
    state = json.loads((out / (out / "latest").read_text() / "state.json").read_text())
    assert len(state["batchers"]) == 2  # both ranks' positions, for resume


def test_refuses_contexts_beyond_the_batch_at_the_start(data: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="slots"):
        Trainer(config(data, tmp_path, d_schedule="0:1,100:4"))  # batch 3: d 4 at step 100
    with pytest.raises(InvalidValueError, match="slots"):
        Trainer(config(data, tmp_path, eval_d="1,1"))
    with pytest.raises(InvalidValueError):
        Trainer(config(data, tmp_path, batch=4))  # the validation split has 3 documents


def test_eval_batch_sets_the_validation_slots(data: str, tmp_path: Path) -> None:
    """Runs of different batch sizes (one GPU, or N ranks) evaluate on the same batches."""
    small = Trainer(config(data, tmp_path / "a", batch=2, eval_batch=3, eval_d="1,3"))
    same = Trainer(config(data, tmp_path / "b", batch=3, eval_d="1,3"))
    assert small.evaluate() == pytest.approx(same.evaluate(), rel=1e-6)
    with pytest.raises(InvalidValueError, match="slots"):
        Trainer(config(data, tmp_path / "c", batch=2, eval_d="1,3"))  # d 3 needs 3 slots
    with pytest.raises(InvalidValueError):
        Trainer(config(data, tmp_path / "d", eval_batch=4))  # 3 validation documents
    with pytest.raises(InvalidValueError, match="eval_batch"):
        Trainer(config(data, tmp_path / "e", eval_batch=-1))


def test_compiled_training_matches_eager(data: str, tmp_path: Path) -> None:
    eager = Trainer(config(data, tmp_path / "a", steps=3, eval_every=100)).run(progress=False)
    compiled = Trainer(config(data, tmp_path / "b", steps=3, eval_every=100, compile=True))
    log = compiled.run(progress=False)
    losses = [r["loss"] for r in log[1:]]
    assert losses == pytest.approx([r["loss"] for r in eager[1:]], rel=1e-4)


def test_keeps_the_newest_checkpoints(data: str, tmp_path: Path) -> None:
    Trainer(config(data, tmp_path, steps=9, eval_every=100, keep_checkpoints=2)).run(progress=False)
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert names == ["checkpoint-0000006", "checkpoint-0000009"]
    assert (tmp_path / "latest").read_text() == "checkpoint-0000009"
    resumed = Trainer(config(data, tmp_path, steps=9, keep_checkpoints=2))
    assert resumed.step == 9
    with pytest.raises(InvalidValueError, match="keep_checkpoints"):
        Trainer(config(data, tmp_path / "x", keep_checkpoints=-1))


def test_mix_sources_deals_the_training_documents_by_source(data: str, tmp_path: Path) -> None:
    """`mix_sources`: the training batcher gets each document's source, its id up to the first
    "/" (a whole id here; the dealing itself: test_train_batcher)."""
    trainer = Trainer(config(data, tmp_path / "a", mix_sources=True))
    ids = trainer.train_data.ids
    assert trainer.batcher._sources == [i.split("/")[0] for i in ids]
    assert Trainer(config(data, tmp_path / "b")).batcher._sources is None


def test_no_memory_blinds_a_share_of_the_training_windows(data: str, tmp_path: Path) -> None:
    """`no_memory`: the share of current windows drawn per step to read no memory (the same
    draw on resume); evaluation always reads memory; 0..1 is checked."""
    never = Trainer(config(data, tmp_path / "a"))
    assert never._spec(3, 2).blind is None
    always = Trainer(config(data, tmp_path / "b", no_memory=1.0))
    spec = always._spec(3, 2)
    assert spec.blind is not None and bool(spec.blind.all())
    assert always._spec(3, 2, local=True).blind is None
    some = Trainer(config(data, tmp_path / "c", batch=3, no_memory=0.5))
    draws = []
    for step in range(40):
        some.step = step
        draws.append(some._spec(3, 2).blind)
    share = torch.stack(draws).float().mean()
    assert 0.3 < share < 0.7
    some.step = 7
    assert torch.equal(some._spec(3, 2).blind, draws[7])
    # a run with every window blind trains, and its loss is finite
    log = Trainer(config(data, tmp_path / "d", no_memory=1.0, steps=2)).run(progress=False)
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses and all(math.isfinite(x) for x in losses)
    with pytest.raises(InvalidValueError, match="no_memory"):
        Trainer(config(data, tmp_path / "e", no_memory=1.5))


def test_contexts_without_gradients_train_the_memory_layer(data: str, tmp_path: Path) -> None:
    """`context_grad=False` reaches the model's crossbatch, and a run with it trains: the memory
    layer's key projection moves, and its first step's loss equals the paper's crossbatch's."""
    runs = {}
    for grad in (True, False):
        trainer = Trainer(config(data, tmp_path / str(grad), prev=2, context_grad=grad, steps=3))
        assert trainer._spec(3, 2).context_grad is grad
        before = trainer.model.model.layers[1].self_attn.k_proj.weight.detach().clone()
        runs[grad] = trainer.run(progress=False)
        after = trainer.model.model.layers[1].self_attn.k_proj.weight.detach()
        assert not torch.equal(before, after)
    assert runs[False][1]["loss"] == pytest.approx(runs[True][1]["loss"], rel=1e-5)
    assert all(math.isfinite(row["loss"]) for row in runs[False][1:])
