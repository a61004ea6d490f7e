"""The type stub python/fot_mem/_core.pyi matches the compiled extension (mypy's stubtest)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_env


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed in this environment (pip install -e '.[test]' brings it)",
)
def test_stubtest_passes(tmp_path: Path) -> None:
    env = python_env()
    env["MYPY_CACHE_DIR"] = str(tmp_path / "mypy-cache")  # keep the checkout clean
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fot_mem._core"],
        cwd=REPO,  # picks up [tool.mypy] from pyproject.toml
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"stubtest failed:\n{output}"
    assert "Success" in output, output


def test_stub_file_exists_and_is_shipped() -> None:
    stub = REPO / "python" / "fot_mem" / "_core.pyi"
    assert stub.is_file(), stub
    assert (REPO / "python" / "fot_mem" / "py.typed").is_file()
    assert os.path.getsize(stub) > 0
