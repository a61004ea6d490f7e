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

from fot_mem import MemoryStore, exact_kernel_info  # noqa: E402
from fot_mem.data.shards import write_shards  # noqa: E402
from tiny import tiny_run  # noqa: E402

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(60))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    docs = [(f"d{i}", TEXT[i * 50 :] * 2) for i in range(6)]
    split = {"d0": "val", "d1": "val", "d2": "val"}
    write_shards(docs, root / "data", "bytes", lambda d: split.get(d, "train"), progress=False)
    tiny_run(root / "data", root / "run", num_layers=3, memory_layers="1,2", window=64)
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
        tiny_run(
            setup / "data", other, num_layers=3, memory_layers="1,2", window=64, steps=1, seed=5
        )
    bad = fot("ingest", whole, setup / "doc.txt", "--model", other, check=False)
    assert bad.returncode == 2 and "this model differs" in bad.stderr and "checksum" in bad.stderr


def test_bench_prints_ratios() -> None:
    out = fot("bench", "--tokens", 4096, "--queries", 16, "--repeats", 1, "--no-ann").stdout
    assert "fot_mem exact" in out and "1.00x" in out
    info = exact_kernel_info()
    assert f"CPU {info['cpu']}; exact kernel {info['kernel']}" in out


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


# -- review fixes: in-process calls of the same entry point (`fot_mem.cli.main`) where a
# subprocess would only add start-up time ------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    from fot_mem.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bounded_is_the_top_k_of_the_first_tokens_ties_and_all(tmp_path: Path) -> None:
    from fot_mem.torch.retrieval import Bounded, StoreRetriever

    rng = np.random.default_rng(0)
    for n, lim, k in [(100, 37, 8), (100, 5, 8), (10, 10, 16), (64, 64, 4), (50, 0, 4)]:
        keys = rng.integers(-2, 3, (n, 2, 4)).astype(np.float32)  # many tied scores
        values = rng.standard_normal((n, 2, 4)).astype(np.float32)
        whole, part = (
            MemoryStore.create(
                tmp_path / f"{name}{n}-{lim}-{k}", layers=[0], kv_heads=2, head_dim=4
            )
            for name in ("whole", "part")
        )
        whole.document("x").append(0, keys, values)
        if lim:
            part.document("x").append(0, keys[:lim], values[:lim])
        q = torch.from_numpy(rng.integers(-2, 3, (3, 4, 4)).astype(np.float32))
        got = Bounded(whole.document("x"), lim).retrieve(0, q, k)
        want = StoreRetriever(part.document("x")).retrieve(0, q, k) if lim else None
        if want is None:
            assert got is None
            continue
        for field in ("values", "scores", "mask"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (n, lim, k, field)


def test_a_kill_in_the_first_window_resumes_without_repeating_the_settings(
    setup: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = setup / "killed-first-window"
    cut = ingest(setup, memory, FOT_MEM_TEST_EXIT_AFTER_APPENDS="1")  # window 1, layer 1 only
    assert cut.returncode == 17
    assert {layer: len(k) for layer, (k, _) in contents(memory).items()} == {1: 64, 2: 0}
    code, out, _ = cli(capsys, "verify", memory)
    assert code == 0 and "warning" in out and "ingest not finished" in out
    code, out, _ = cli(capsys, "info", memory)
    assert code == 0 and "ingest not finished" in out
    # a later run from another directory: the model, window and k come from the memory
    run = subprocess.run(
        [sys.executable, "-m", "fot_mem", "ingest", memory, setup / "doc.txt", "--no-progress"],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert same(contents(memory), contents(whole))


def test_ingest_refuses_what_would_change_a_memory(
    setup: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = contents(whole)
    model = ("--model", setup / "run")
    code, _, err = cli(capsys, "ingest", whole, setup / "doc.txt", "--window", 32, "--k", 8)
    assert code == 2 and "other settings: --window 32 (it has 64)" in err and "--k" not in err
    code, _, err = cli(capsys, "ingest", whole, setup / "doc.txt", "--max-tokens", 100, *model)
    assert code == 2 and "another --max-tokens" in err
    (setup / "a").mkdir(exist_ok=True)
    (setup / "b").mkdir(exist_ok=True)
    (setup / "a" / "x.txt").write_text("one text")
    (setup / "b" / "x.txt").write_text("another")
    code, _, err = cli(capsys, "ingest", whole, setup / "a", setup / "b", *model)
    assert code == 2 and "would both be document 'x.txt'" in err
    assert same(contents(whole), before)
    assert MemoryStore.open(whole / "store", readonly=True).documents() == ["doc.txt"]


def test_bad_inputs_are_refused_before_anything_is_made(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = setup / "bad-inputs"
    bad.mkdir(exist_ok=True)
    (bad / "empty.txt").write_bytes(b"")
    (bad / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (bad / "dir").mkdir(exist_ok=True)
    (bad / "dir" / ".hidden").write_text("hidden text")
    (bad / "dir" / "blob.bin").write_bytes(b"\xff\xfe\x00")
    memory = bad / "memory"
    for path, says in [
        (bad / "empty.txt", "empty.txt is empty"),
        (bad / "latin1.txt", "latin1.txt is not UTF-8 text"),
        (bad / "dir", "no text files to ingest"),
    ]:
        code, _, err = cli(capsys, "ingest", memory, path, "--model", setup / "run")
        assert code == 2 and says in err and "Traceback" not in err, err
        assert not memory.exists()
    code, _, err = cli(capsys, "score", memory, "--text", "abc")
    assert code == 2 and "does not exist" in err


def test_a_memory_whose_creation_was_killed_is_made_again(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    memory = setup / "half-made"
    (memory / "tokens").mkdir(parents=True)  # killed before its fot-mem.json was saved
    (memory / "fot-mem.json.tmp").write_text("{")
    args = ("--model", setup / "run", "--window", 64, "--k", 8, "--no-progress")
    code, _, err = cli(capsys, "ingest", memory, setup / "doc.txt", "--max-tokens", 130, *args)
    assert code == 0, err
    # killed while making the store: the half-made one, under its temporary name, is discarded
    shutil.rmtree(memory / "store")
    (memory / "store.tmp").mkdir()
    (memory / "store.tmp" / "junk").write_text("")
    code, _, err = cli(capsys, "ingest", memory, setup / "doc.txt", "--max-tokens", 130)
    assert code == 0 and not (memory / "store.tmp").exists(), err
    store = MemoryStore.open(memory / "store", readonly=True)
    assert store.document("doc.txt").length(2) == 130
    store.close()


def test_search_generate_errors_and_defaults(
    setup: Path, whole: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, says in [
        (("--layer", 0), "layer 0 is not a memory layer"),
        (("--head", 4), "head 4 is not in 0..3"),
        (("--context", -1), "--context must be >= 0"),
    ]:
        code, _, err = cli(capsys, "search", whole, "--query", "x", *extra)
        assert code == 2 and says in err, err
    code, _, err = cli(capsys, "search", whole, "--query", "x" * 65)
    assert code == 2 and "the query must have 1..64 tokens, got 65" in err
    code, out, err = cli(capsys, "generate", whole, "-n", 3, "--prompt-tokens", 8)
    assert code == 0 and "--- prompt (" in out and "continuation (3 tokens" in out, err
    code, out, _ = cli(capsys, "generate", whole, "-n", 60, "--prompt", "def f1(x):\n")
    assert code == 0 and "holds 54 new tokens" in out and "continuation (54 tokens" in out


def test_the_smollm2_cache_is_published_whole(tmp_path: Path) -> None:
    from fot_mem.cli.models import _publish

    folder = tmp_path / "cache" / "model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half")  # an older, unmarked or killed cache

    def killed(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _publish(folder, killed)
    assert not (folder / "complete").exists() and len(list(folder.parent.iterdir())) == 1
    _publish(folder, lambda tmp: (tmp / "model.safetensors").write_bytes(b"whole"))
    assert (folder / "complete").is_file() and (
        folder / "model.safetensors"
    ).read_bytes() == b"whole"
    assert [p.name for p in folder.parent.iterdir()] == ["model"]


def test_bench_with_tokens_not_a_multiple_of_the_chunk(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "bench", "--tokens", 300, "--queries", 4, "--repeats", 1, "--k", 4)
    assert code == 0, err
    assert "fot_mem hnsw ef 128" in out


def test_device_and_mirror_retrieval(setup: Path, whole: Path) -> None:
    """`--retrieval mirror` (the path CUDA takes by default) searches a copy of the memory on the
    model's device: exact search both ways, so the same perplexity as the store's search; ingest
    through the mirror writes the same store (up to f32 summation order). A device that cannot run
    is refused clearly."""

    def ppl(*extra: object) -> str:
        out = fot("score", whole, "--text", TEXT[-300:], "--no-compare", *extra).stdout
        assert "model on cpu" in out
        return next(x for x in out.splitlines() if x.startswith("perplexity with"))

    store = ppl("--device", "cpu", "--retrieval", "store")
    assert ppl("--retrieval", "mirror") == store
    mirrored = setup / "mirrored"
    run = fot(
        "ingest", mirrored, setup / "doc.txt", "--model", setup / "run", "--window", 64, "--k", 8,
        "--no-progress", "--retrieval", "mirror",
    )  # fmt: skip
    assert "a mirror on the device" in run.stdout
    got, want = contents(mirrored), contents(whole)
    # Layer 1's keys come before any retrieval; layer 2's read layer 1's memory, where the two
    # searches add their f32 products in different orders (differences of ~1e-6 seen).
    assert got.keys() == want.keys() and all(np.array_equal(*p) for p in zip(got[1], want[1]))
    assert all(np.allclose(a, b, rtol=0, atol=1e-3) for a, b in zip(got[2], want[2]))
    gen = fot("generate", whole, "-n", 3, "--prompt", "def f1", "--retrieval", "mirror")
    assert "--- continuation (3 tokens" in gen.stdout
    bad = fot("score", whole, "--text", "abc", "--device", "tpu", check=False)
    assert bad.returncode == 2 and "--device 'tpu'" in bad.stderr, bad.stderr
    if not torch.cuda.is_available():
        bad = fot("score", whole, "--text", "abc", "--device", "cuda", check=False)
        assert bad.returncode == 2 and "no CUDA device" in bad.stderr, bad.stderr
