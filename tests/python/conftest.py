"""Shared fixtures: stores in temporary directories (small chunks, so a few dozen tokens already
span several chunk files), a seeded random generator, and a helper to run Python in a fresh
process (for the cross-process tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fot_mem
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's name: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


MakeStore = Callable[..., fot_mem.MemoryStore]


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    """Factory: `make_store(dtype=..., kv_heads=..., ...)` creates a fresh store (closed at the
    end of the test). Defaults: layers [6, 12, 18], kv_heads 2, head_dim 8, chunk_tokens 7."""
    opened: list[fot_mem.MemoryStore] = []
    counter = iter(range(1_000_000))

    def make(
        *,
        dtype: str = "float32",
        layers: tuple[int, ...] = (6, 12, 18),
        kv_heads: int = 2,
        head_dim: int = 8,
        value_dim: int | None = None,
        chunk_tokens: int = 7,
        path: Path | None = None,
        hnsw: dict[str, Any] | None = None,
    ) -> fot_mem.MemoryStore:
        if path is None:
            path = tmp_path / f"store-{next(counter)}"
        store = fot_mem.MemoryStore.create(
            path,
            layers=list(layers),
            kv_heads=kv_heads,
            head_dim=head_dim,
            value_dim=value_dim,
            dtype=dtype,
            chunk_tokens=chunk_tokens,
            hnsw=hnsw,
        )
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store: MakeStore) -> fot_mem.MemoryStore:
    """A float32 store: layers [6, 12, 18], kv_heads 2, head_dim 8, chunk_tokens 7."""
    return make_store()


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    # The fot_mem this process imported (the editable source, or an installed wheel where the
    # checkout has no built extension), then the test helpers.
    here = Path(fot_mem.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(
        [str(here), str(Path(__file__).parent), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


RunPy = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_py() -> RunPy:
    """Runs `code` (dedented) in a fresh interpreter (this venv's python) with `args` as
    sys.argv[1:]; returns the completed process (stdout/stderr as text)."""

    def run(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=python_env(),
            check=False,
        )

    return run
