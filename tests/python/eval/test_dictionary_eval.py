"""The dictionary experiment's machinery: memory layers without RoPE, the batched fill of the
lowest memory layer, r_d over chosen tokens, and `fot-mem dictionary` end to end on the CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import fot_mem
import numpy as np
import pytest
import torch
from fot_mem.data.dictionary import DictionaryTask
from fot_mem.eval.dictionary import answer, fill, focus, score_window
from fot_mem.eval.distraction import mass_stats
from fot_mem.exceptions import InvalidValueError
from fot_mem.torch import FotConfig, FotForCausalLM, Memory
from fot_mem.torch.fill import fill_document
from fot_mem.torch.reader import LongDocumentReader, create_store

SMALL = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=64,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=32,
    memory_k=8,
)


def model(**changes: object) -> FotForCausalLM:
    torch.manual_seed(0)
    config = FotConfig(**{**SMALL, "num_layers": 3, "memory_layers": (2,), **changes})
    return FotForCausalLM(config).eval()


def test_memory_layer_without_rope_is_plain_causal_attention() -> None:
    net = model(num_layers=1, memory_layers=(0,), qk_norm=True, memory_rope=False)
    ids = torch.randint(0, 40, (2, 12))
    got = net(ids).logits
    layer = net.model.layers[0]
    attn = layer.self_attn
    x = net.model.embed_tokens(ids)
    h = layer.input_layernorm(x)
    b, t, _ = h.shape
    q = attn.q_proj(h).view(b, t, 4, 8).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.v_proj(h).view(b, t, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    q = torch.nn.functional.normalize(q, dim=-1) * attn.log_temperature.exp()[None, :, None, None]
    k = torch.nn.functional.normalize(k, dim=-1)
    logits = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(t, t).tril().bool(), -math.inf)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, t, 32)
    x = x + attn.o_proj(out)
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    want = net.lm_head(net.model.norm(x))
    assert torch.allclose(got, want, atol=1e-5)
    # the same model with RoPE differs: the option is what removes it
    assert not torch.allclose(
        model(num_layers=1, memory_layers=(0,), qk_norm=True)(ids).logits, got
    )


def test_qk_temperature_starts_where_asked() -> None:
    assert torch.allclose(
        model(qk_norm=True, qk_temperature=16.0).model.layers[2].self_attn.log_temperature.exp(),
        torch.full((4,), 16.0),
    )
    with pytest.raises(InvalidValueError, match="qk_temperature"):
        FotConfig(qk_temperature=-1.0)
    with pytest.raises(InvalidValueError, match="memory_rope"):
        FotConfig(memory_rope=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [{}, {"sink_token": 3}, {"qk_norm": True, "memory_rope": False}, {"memory_kv_heads": 1}],
)
def test_first_memory_kv_equals_the_forward(changes: dict[str, object]) -> None:
    net = model(**changes)
    ids = torch.randint(0, 40, (3, 16))
    keys, values = net(ids).memory_kv[2]
    k, v = net.first_memory_kv(ids)
    assert torch.allclose(k, keys, atol=1e-6) and torch.allclose(v, values, atol=1e-6)


def test_fill_equals_reading_window_by_window(tmp_path: Path) -> None:
    net = model()
    tokens = torch.randint(0, 40, (16 * 7 + 5,))  # a last, shorter window
    with create_store(tmp_path / "read", net) as store:
        LongDocumentReader(net, store.document("d"), window=16).read(tokens, losses=False)
        want = store.document("d").read(2)
    with create_store(tmp_path / "fill", net) as store:
        doc = store.document("d")
        # in two calls: the second continues after the first's windows
        fill_document(net, doc, tokens[:48], window=16, batch_windows=2)
        assert doc.length(2) == 48
        found = fill_document(net, doc, tokens, window=16, batch_windows=3)
        assert found["tokens"] == len(tokens) - 48
        got = doc.read(2)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_fill_refusals(tmp_path: Path) -> None:
    two = model(memory_layers=(1, 2))
    with create_store(tmp_path / "a", two) as store, pytest.raises(InvalidValueError, match="one"):
        fill_document(two, store.document("d"), torch.zeros(16, dtype=torch.int64), window=16)
    net = model()
    with create_store(tmp_path / "b", net) as store:
        doc = store.document("d")
        with pytest.raises(InvalidValueError, match="token ids"):
            fill_document(net, doc, torch.full((16,), 40), window=16)
        assert not doc.exists  # nothing was appended
        with pytest.raises(InvalidValueError, match="total"):
            fill_document(net, doc, lambda a, b: np.zeros(b - a), window=16)
        fill_document(net, doc, torch.zeros(20, dtype=torch.int64), window=16)
        with pytest.raises(InvalidValueError, match="whole number of windows"):
            fill_document(net, doc, torch.zeros(40, dtype=torch.int64), window=16)


def test_answers_from_a_reopened_store_equal_dense_memory(tmp_path: Path) -> None:
    """With k = N, top-k retrieval from the reopened float32 store is attention over the whole
    memory: the logits equal a forward with every memory key and value in place."""
    task = DictionaryTask(symbols=16, key_len=2, value_len=1, window=40)
    net = model(
        vocab_size=task.vocab_size,
        max_position_embeddings=40,
        qk_norm=True,
        memory_rope=False,
        num_kv_heads=1,
    )
    with create_store(tmp_path / "s", net, dtype="float32"):
        pass
    fill(net, tmp_path / "s", task, [120], batch_windows=2)
    found = answer(net, tmp_path / "s", task, [120], query_sets=2, k=120)
    book = task.dictionary(120, 0)
    with fot_mem.MemoryStore.open(tmp_path / "s", readonly=True) as store:
        keys, values = store.document("N120").read(2)
    memory = {
        2: Memory(
            keys=torch.from_numpy(keys).permute(1, 0, 2)[None],
            values=torch.from_numpy(values).permute(1, 0, 2)[None],
        )
    }
    accs = []
    for i in range(2):
        tokens, mask = book.queries(i)
        with torch.no_grad():
            logits = net(torch.from_numpy(tokens[:-1])[None], memory=memory).logits[0]
        accs.append(score_window(logits, tokens, mask, task)[0])
    assert found["120"]["per_set"] == pytest.approx(accs)
    assert found["120"]["min"] == min(accs) and found["120"]["max"] == max(accs)


def test_mass_stats_over_chosen_tokens() -> None:
    torch.manual_seed(1)
    q = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    k = torch.randn(2, 2, 3 * 5, 8, dtype=torch.float64)
    every = mass_stats(q, k, 3)
    everywhere = torch.ones(2, 6, dtype=torch.bool)
    assert torch.allclose(mass_stats(q, k, 3, positions=everywhere), every, equal_nan=True)
    one = torch.zeros(2, 6, dtype=torch.bool)
    one[:, 4] = True
    alone = mass_stats(q[:, :, 4:5], k, 3)
    assert torch.allclose(mass_stats(q, k, 3, positions=one)[:, :3], alone[:, :3])
    # r of each query head: head h reads kv head h // 2; their mean is r
    assert every.shape == (2, 5 + 4)
    assert torch.allclose(every[:, 5:].mean(dim=1), every[:, 0])
    for b in range(2):
        for head in range(4):
            lse = (q[b, head] @ k[b, head // 2].T).unflatten(-1, (3, 5)).logsumexp(-1)
            r = (lse[:, 0] - lse.logsumexp(-1)).exp().mean()
            assert torch.allclose(every[b, 5 + head], r)
    assert torch.allclose(mass_stats(q, k, 3, positions=one)[:, 5:], alone[:, 5:])


def test_cli_runs_the_whole_experiment_and_learns(tmp_path: Path) -> None:
    """The tiny preset end to end: three trainings, fill and answer in new processes, r_d,
    results.json and plots. FoT's training lifts answer accuracy well above chance (1/32)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fot_mem", "dictionary", "run", "--preset", "tiny"]
    cmd += ["--out", str(out), "--device", "cpu", "--steps", "200", "--baseline-steps", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fot-mem dictionary fill" in done.stdout and "fot-mem dictionary answer" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert {"fot", "control_d1", "baseline", "device", "minutes"} <= set(results)
    for name in ("fot", "control_d1"):
        entry = results[name]
        assert set(entry["accuracy"]) == {"32", "64", "128"}
        assert set(entry["r_d"]) == {"1", "2", "4", "8"} and entry["r_d"]["1"] == 1.0
        heads = entry["r_d_heads"]["4"]  # the tiny preset: one memory layer of 4 heads
        assert len(heads) == 4 and sum(heads) / 4 == pytest.approx(entry["r_d"]["4"])
        assert all(f["tokens"] == int(n) for n, f in entry["fill"].items())
    assert set(results["baseline"]["accuracy"]) == {"32", "64", "128"}
    # chance is 1/32: 200 steps lift the d = 1 phase and the control clearly above it
    assert results["chance"] == 1 / 32
    assert results["d1_phase"]["last"]["val_acc_d1"] > 3 / 32
    assert results["control_d1"]["train"]["last"]["val_acc_d1"] > 3 / 32
    assert results["fot"]["train"]["branch"] == results["d1_phase"]["last"]["step"]
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "focus.png").stat().st_size > 0
    assert not (out / "stores").exists()  # emptied after each model


def test_cli_sweeps_the_d1_phase_then_continues_from_it(tmp_path: Path) -> None:
    """`--only d1_phase` trains the phase alone and stops (a sweep); `--reuse-d1` branches the
    models from that checkpoint without training the phase again."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fot_mem", "dictionary", "run", "--preset", "tiny"]
    cmd += ["--out", str(out), "--device", "cpu", "--steps", "40", "--lr", "2e-3"]
    done = subprocess.run([*cmd, "--only", "d1_phase"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    phase = json.loads((out / "results.json").read_text())
    assert "fot" not in phase and "fill" not in done.stdout
    step = phase["d1_phase"]["last"]["step"]
    assert json.loads((out / "d1_phase" / "config.json").read_text())["lr"] == 2e-3
    checkpoint = (out / "d1_phase" / "latest").read_text()
    more = ["--near", "3", "--also-k", "2,16"]
    done = subprocess.run(
        [*cmd, "--only", "fot", "--reuse-d1", *more], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["d1_phase"]["reused"] and results["d1_phase"]["last"]["step"] == step
    assert results["fot"]["train"]["branch"] == step
    # FoT trained on near misses, and answered its two largest memories again with k = 2, 16
    assert json.loads((out / "fot" / "config.json").read_text())["dict_near"] == 3
    assert results["fot"]["config"]["dict_near"] == 3
    assert set(results["fot"]["accuracy_k"]) == {"2", "16"}
    assert all(set(a) == {"64", "128"} for a in results["fot"]["accuracy_k"].values())
    assert (out / "d1_phase" / "latest").read_text() == checkpoint  # not trained again
    bad = subprocess.run([*cmd, "--only", "fott"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "fott" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_refuses_bad_input(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fot_mem", "dictionary", "answer", str(tmp_path), str(tmp_path)]
    done = subprocess.run([*cmd, "--sizes", "a,b"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_ramp_schedule_climbs_in_powers_of_two() -> None:
    from fot_mem.cli.dictionary_run import ramp
    from fot_mem.train.config import schedule_value

    spec = ramp(800, 1600, 32)
    assert spec == "0:1,800:2,900:4,1000:8,1100:16,1200:32"
    assert [schedule_value(spec, s) for s in (0, 799, 800, 1199, 1200, 1599)] == [
        1,
        1,
        2,
        16,
        32,
        32,
    ]
    assert ramp(10, 12, 2) == "0:1,10:2"


def test_memory_layers_may_have_fewer_kv_heads(tmp_path: Path) -> None:
    """Plain layers keep num_kv_heads; memory layers, their store and crossbatch use
    memory_kv_heads, and reading, filling and training run as with one count."""
    net = model(memory_kv_heads=1)
    assert net.model.layers[0].self_attn.k_proj.out_features == 2 * 8
    assert net.model.layers[2].self_attn.k_proj.out_features == 1 * 8
    tokens = torch.randint(0, 40, (16 * 3,))
    with create_store(tmp_path / "s", net) as store:
        assert store.kv_heads == 1
        fill_document(net, store.document("d"), tokens, window=16)
        reader = LongDocumentReader(net, store.document("d"), window=16)
        assert reader.logits(tokens[:5]).shape == (5, 40)
    from fot_mem.torch import Crossbatch

    out = net(torch.randint(0, 40, (4, 16)), memory=Crossbatch(slots=2, d=2))
    assert out.logits.shape == (4, 16, 40)
    with pytest.raises(InvalidValueError, match="memory_kv_heads"):
        FotConfig(num_heads=4, num_kv_heads=2, memory_kv_heads=3)


def test_focus_splits_r_d_by_answer_slot() -> None:
    """r_d_slots: r_d over the tokens predicting value token j alone; every query window holds
    whole records, so the slots' mean is r_d, and at d = 1 every slot reads only its own."""
    task = DictionaryTask(symbols=16, key_len=2, value_len=3, window=40)
    net = model(vocab_size=task.vocab_size, max_position_embeddings=64)
    found = focus(net, task, (1, 2, 4), windows=4, batch=2)
    slots = found["r_d_slots"]
    assert set(slots) == {"1", "2", "3"}
    for d in ("1", "2", "4"):
        assert sum(s[d] for s in slots.values()) / 3 == pytest.approx(found["r_d"][d], rel=1e-5)
    assert all(s["1"] == pytest.approx(1.0) for s in slots.values())
    assert len({round(s["4"], 6) for s in slots.values()}) > 1  # the slots differ
