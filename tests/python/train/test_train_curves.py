"""benches/experiments/report/train_curves.py: the summary figures and the plot, made-up run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
SCRIPT = (
    Path(__file__).resolve().parents[3] / "benches" / "experiments" / "report" / "train_curves.py"
)


def write_run(folder: Path, rows: list[dict[str, float]]) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_and_plot(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(
        runs / "fot",
        [
            {"step": 0, "val_loss_d1": 2.0, "val_loss_d8": 2.5},
            {"step": 1, "loss": 3.0, "step_s": 0.5},
            {"step": 2, "loss": 1.0, "step_s": 0.1, "val_loss_d1": 1.5, "val_loss_d8": 1.25},
            {"step": 3, "loss": 2.0, "step_s": 0.2},
        ],
    )
    write_run(runs / "control", [{"step": 1, "loss": 4.0, "step_s": 1.0, "val_loss_d1": 3.0}])
    (runs / "empty").mkdir()  # no metrics: not a run
    png = tmp_path / "out" / "curves.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(runs), "--png", str(png), "--tail", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "| run | steps | val d=1 | val d=8 | train loss (last 2) | step s (median) |"
    assert lines[2] == "| control | 1 | 3.0000 |  | 4.0000 | 1.000 |"
    assert lines[3] == "| fot | 3 | 1.5000 | 1.2500 | 1.5000 | 0.200 |"
    assert len(lines) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_folder_without_runs_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "no */metrics.jsonl" in done.stderr
