"""The `fot-mem` command through its real entry point (subprocesses), on a tiny trained model
with byte tokens: ingest, resume after a kill (also inside a window), score, generate, search,
info, verify, bench, and the errors a person meets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fot_mem import MemoryStore  # noqa: E402
from fot_mem.train.loop import TrainConfig, Trainer  # noqa: E402
from fot_mem.train.shards import write_shards  # noqa: E402

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(60))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    docs = [(f"d{i}", TEXT[i * 50 :] * 2) for i in range(6)]
    split = {"d0": "val", "d1": "val", "d2": "val"}
    write_shards(docs, root / "data", "bytes", lambda d: split.get(d, "train"), progress=False)
    cfg = TrainConfig(
        data=str(root / "data"),
        out=str(root / "run"),
        hidden_size=32,
        intermediate_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        memory_layers="1,2",
        batch=2,
        window=64,
        d_schedule="0:2",
        steps=2,
        eval_every=100,
        eval_batches=1,
        eval_d="1",
        dtype="float32",
        device="cpu",
    )
    Trainer(cfg).run(progress=False)
    (root / "doc.txt").write_text(TEXT)
    return root


def fot(
    *args: object, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "fot_mem", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )
    if check:
        assert run.returncode == 0, run.stdout + run.stderr
    return run


def ingest(setup: Path, memory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return fot(
        "ingest",
        memory,
        setup / "doc.txt",
        "--model",
        setup / "run",
        "--window",
        64,
        "--k",
        8,
        "--no-progress",
        env=env,
        check=not env,
    )


def contents(memory: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    store = MemoryStore.open(memory / "store", readonly=True)
    try:
        doc = store.document("doc.txt")
        return {layer: doc.read(layer, 0, doc.length(layer)) for layer in store.layers}
    finally:
        store.close()


def same(
    a: dict[int, tuple[np.ndarray, np.ndarray]], b: dict[int, tuple[np.ndarray, np.ndarray]]
) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]) for k in a
    )


@pytest.fixture(scope="module")
def whole(setup: Path) -> Path:
    memory = setup / "whole"
    run = ingest(setup, memory)
    assert f"doc.txt: {len(TEXT):,} tokens" in run.stdout and "tok/s" in run.stdout
    return memory


def test_ingest_stores_every_token(whole: Path) -> None:
    got = contents(whole)
    assert {layer: len(k) for layer, (k, _) in got.items()} == {1: len(TEXT), 2: len(TEXT)}
    ids = np.fromfile(whole / "tokens" / "doc.txt.u32", dtype="<u4")
    assert bytes(ids.astype(np.uint8)).decode() == TEXT
    again = fot(
        "ingest", whole, whole.parent / "doc.txt", "--model", whole.parent / "run", "--no-progress"
    )
    assert "0 read" in again.stdout and same(contents(whole), got)  # nothing to do twice


def test_a_kill_inside_a_window_resumes_to_the_same_store(setup: Path, whole: Path) -> None:
    memory = setup / "killed-in-window"
    cut = ingest(setup, memory, FOT_MEM_TEST_EXIT_AFTER_APPENDS="5")  # window 3, layer 1 only
    assert cut.returncode == 17
    part = contents(memory)
    assert (len(part[1][0]), len(part[2][0])) == (3 * 64, 2 * 64)
    run = ingest(setup, memory)
    assert "resumed at 128" in run.stdout
    assert same(contents(memory), contents(whole))


def test_a_real_kill_resumes_to_the_same_store(setup: Path, whole: Path) -> None:
    memory = setup / "killed"
    cmd = [
        sys.executable,
        "-m",
        "fot_mem",
        "ingest",
        str(memory),
        str(setup / "doc.txt"),
        "--model",
        str(setup / "run"),
        "--window",
        "64",
        "--k",
        "8",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    chunks = memory / "store"
    deadline = time.time() + 120
    while time.time() < deadline and not any(chunks.rglob("*")) and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ingest(setup, memory)
    assert same(contents(memory), contents(whole))


def test_score_generate_search_in_a_later_process(setup: Path, whole: Path) -> None:
    score = fot("score", whole, "--text", TEXT[-300:])
    lines = score.stdout.splitlines()
    with_memory = float(next(x for x in lines if x.startswith("perplexity with")).split()[-1])
    plain = float(next(x for x in lines if x.startswith("perplexity without")).split()[-1])
    assert with_memory > 1 and plain > 1 and with_memory != plain  # the memory is read
    gen = fot("generate", whole, "-n", 5, "--prompt-tokens", 16)
    assert "--- continuation (5 tokens" in gen.stdout
    hits = fot("search", whole, "--query", "return x * 7", "--top", 3, "--layer", 1, "--head", 2)
    rows = [x for x in hits.stdout.splitlines() if x.lstrip()[:2] in ("1.", "2.", "3.")]
    assert len(rows) == 3 and all("[" in r and "]" in r for r in rows)
    assert same(contents(whole), contents(whole))  # read-only: nothing appended
    store = MemoryStore.open(whole / "store", readonly=True)
    assert store.document("doc.txt").length(1) == len(TEXT)
    store.close()


def test_info(setup: Path, whole: Path) -> None:
    out = fot("info", whole).stdout
    assert "memory layers [1, 2]" in out and f"doc.txt: {len(TEXT):,} tokens" in out
    assert "1 documents" in out


def test_errors_are_clear(setup: Path, whole: Path) -> None:
    bad = fot("score", whole, "--doc", "nope", "--text", "abc", check=False)
    assert (
        bad.returncode == 2 and "no document 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    )
    bad = fot("info", setup / "missing", check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = fot("ingest", setup / "m2", setup / "missing.txt", "--model", setup / "run", check=False)
    assert bad.returncode == 2 and "missing.txt does not exist" in bad.stderr
    other = setup / "other-run"
    if not other.exists():
        cfg = TrainConfig(
            data=str(setup / "data"),
            out=str(other),
            hidden_size=32,
            intermediate_size=64,
            num_layers=3,
            num_heads=4,
            num_kv_heads=2,
            memory_layers="1,2",
            batch=2,
            window=64,
            d_schedule="0:2",
            steps=1,
            eval_every=100,
            eval_batches=1,
            eval_d="1",
            dtype="float32",
            device="cpu",
            seed=5,
        )
        Trainer(cfg).run(progress=False)
    bad = fot("ingest", whole, setup / "doc.txt", "--model", other, check=False)
    assert bad.returncode == 2 and "this model differs" in bad.stderr and "checksum" in bad.stderr


def test_bench_prints_ratios() -> None:
    out = fot("bench", "--tokens", 4096, "--queries", 16, "--repeats", 1, "--no-ann").stdout
    assert "fot_mem exact" in out and "1.00x" in out


def test_verify_reports_damage_and_changes_nothing(setup: Path, whole: Path) -> None:
    import shutil

    assert "no problems found" in fot("verify", whole).stdout
    damaged = setup / "damaged"
    shutil.copytree(whole, damaged)
    chunk = next(p for p in sorted((damaged / "store").rglob("*.keys")))
    with open(chunk, "r+b") as f:
        f.truncate(chunk.stat().st_size - 100)
    (damaged / "tokens" / "doc.txt.u32").write_bytes(b"\0" * 8)
    before = {p: p.read_bytes() for p in damaged.rglob("*") if p.is_file()}
    run = fot("verify", damaged, check=False)
    assert run.returncode == 1
    errors = [x for x in run.stdout.splitlines() if x.strip().startswith("error:")]
    assert any(chunk.name in x for x in errors) and any("doc.txt.u32" in x for x in errors)
    assert before == {p: p.read_bytes() for p in damaged.rglob("*") if p.is_file()}
