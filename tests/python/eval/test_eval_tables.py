"""The evaluation tables of docs/evaluations.md come from the result files
(benches/experiments/report/eval_tables.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location(
    "eval_tables", ROOT / "benches" / "experiments" / "report" / "eval_tables.py"
)
assert SPEC is not None and SPEC.loader is not None
tables = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tables)


def ppl(name: str, by: dict[int, float], tokens: int = 100) -> dict:
    return {
        "name": name,
        "documents": [{"id": "a"}, {"id": "b"}],
        "by_memory": [{"memory": m, "perplexity": p, "tokens": tokens} for m, p in by.items()],
    }


def test_tables_from_files(tmp_path: Path) -> None:
    (tmp_path / "ppl-fot.json").write_text(json.dumps(ppl("fot", {0: 4.0, 2048: 3.0})))
    (tmp_path / "ppl-base.json").write_text(json.dumps(ppl("base", {0: 5.0, 8192: 5.5})))
    (tmp_path / "distraction.json").write_text(
        json.dumps(
            {
                "models": {
                    "fot": {"results": [{"d": 1, "r": 1.0}, {"d": 4, "r": 0.8125}]},
                    "base": {"results": [{"d": 1, "r": 1.0}]},
                }
            }
        )
    )
    (tmp_path / "passkey-fot.json").write_text(
        json.dumps({"name": "fot", "accuracy": {"4096": 0.5, "131072": 0.25}})
    )
    text = tables.main([str(tmp_path)])
    lines = text.splitlines()
    assert "### distraction (distraction.json)" in lines
    assert "| fot | 1.000 | 0.812 |" in lines  # 0.8125 rounds half to even
    assert "| base | 1.000 |  |" in lines  # a d the model lacks stays empty
    assert "| 1/d | 1.000 | 0.250 |" in lines
    assert "### perplexity (2 documents, 100 scored tokens)" in lines
    assert "| memory | base | fot |" in lines  # files in name order
    assert "| 2K |  | 3.000 (-25.0%) |" in lines
    assert "| 8K | 5.500 (+10.0%) |  |" in lines
    assert "| fot | 0.50 | 0.25 |" in lines
    assert "| model | 4K | 128K |" in lines


def test_committed_results_render() -> None:
    """The committed H200 results still parse: the README's tables can be regenerated."""
    folders = [ROOT / "bench-results" / "eval-h200" / f for f in ("pipeline", "six-docs")]
    text = tables.main([str(f) for f in [*folders, ROOT / "bench-results" / "eval-cpu"]])
    assert text.count("### perplexity") == 3
    assert "| 1/d |" in text and "### passkey accuracy" in text
