"""Property (hypothesis): random byte damage of a small store's manifest, commit (count) file,
hnsw index file or chunk checksum file, then a fresh process opens, verifies and searches it
(exact and hnsw). Each outcome must be a clean `FotMemError`,
the undamaged answer, or (a damaged newest commit slot: readers fall back to the older slot) an
earlier state that `verify` reports; never a crash, never other data unreported. The damaged
copies are made here and checked by one subprocess, so a crash fails the test instead of killing
pytest."""

from __future__ import annotations

import shutil
from pathlib import Path

import fot_mem
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

LAYER = "docs/d00000000/layer-0/"
FILES = ["manifest.json", LAYER + "count", LAYER + "hnsw-000000.idx", LAYER + "000000.crc"]

CHECK = """
import sys, numpy as np, fot_mem
q = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 1, 4)
want = np.load(sys.argv[1])
for path in sys.argv[2:]:
    print(path, flush=True)  # names the culprit should this process die
    try:
        ok = fot_mem.MemoryStore.verify(path)["ok"]
        with fot_mem.MemoryStore.open(path, readonly=True) as store:
            doc = store.document("a")
            ids = [doc.search(0, q, 5)[1], doc.search(0, q, 5, backend="hnsw")[1]]
    except fot_mem.FotMemError:
        continue
    if ok and not all(np.array_equal(i, w) for i, w in zip(ids, want)):
        print("OTHER DATA", path)
"""


def test_property_damaged_metadata_gives_a_clean_error_or_the_right_answer(
    tmp_path, run_py
) -> None:
    base = tmp_path / "base"
    keys = np.arange(20 * 4, dtype=np.float32).reshape(20, 1, 4) % 7 - 3
    with fot_mem.MemoryStore.create(
        base, layers=[0], kv_heads=1, head_dim=4, chunk_tokens=8, hnsw={"span_tokens": 8}
    ) as store:
        store.document("a").append(0, keys, keys)
        store.wait_for_indexes()
        q = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 1, 4)
        doc = store.document("a")
        want = [doc.search(0, q, 5)[1], doc.search(0, q, 5, backend="hnsw")[1]]
        np.save(tmp_path / "want.npy", np.stack(want))
    sizes = [(base / f).stat().st_size for f in FILES]
    copies: list[Path] = []

    @hypothesis.settings(max_examples=80, deadline=None, derandomize=True, database=None)
    @hypothesis.given(
        which=st.integers(0, len(FILES) - 1),
        flips=st.lists(
            st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
            min_size=1,
            max_size=3,
        ),
        truncate=st.booleans(),
    )
    def damage(which: int, flips: list[tuple[float, int]], truncate: bool) -> None:
        copy = tmp_path / f"c{len(copies)}"
        shutil.copytree(base, copy)
        path = copy / FILES[which]
        data = bytearray(path.read_bytes())
        for at, x in flips:
            data[int(at * sizes[which])] ^= x
        if truncate:
            data = data[: int(flips[0][0] * sizes[which])]
        path.write_bytes(bytes(data))
        copies.append(copy)

    damage()
    out = run_py(CHECK, tmp_path / "want.npy", *copies, timeout=120)
    assert out.returncode == 0, f"crashed ({out.returncode}) on {out.stdout.split()[-1:]}"
    assert "OTHER DATA" not in out.stdout, out.stdout
