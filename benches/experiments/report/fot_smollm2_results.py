"""Issue 18's results file from one lease's evaluations (`smollm2.sh evals`):

    python benches/experiments/report/fot_smollm2_results.py EVAL_DIR OUT.json [--run RUN_DIR]

EVAL_DIR holds distraction.json, ppl-{code,books,code-multi}-{fot,base}.json and
passkey-{fot,base}.json. OUT gets `{"shipped": {...}, "base": {...}, "control": None}` with r_d
(all memory layers, and per layer), perplexity by memory size (code, books, code with four other
documents in memory) and passkey accuracy by length; keys are decimal strings, M = 0 is no
memory. Steps that did not run are left out, not filled in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MODELS = {"shipped": "fot", "base": "base"}


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _r_d(distraction: dict[str, Any], name: str) -> dict[str, Any]:
    model = distraction["models"].get(name)
    if model is None:
        return {}
    rows = model["results"]
    return {
        "r_d": {str(r["d"]): r["r"] for r in rows},
        "r_d_by_layer": {
            layer: {str(r["d"]): r["per_layer"][layer] for r in rows}
            for layer in rows[0]["per_layer"]
        },
        "memory_share": {str(r["d"]): r["memory_share"] for r in rows},
    }


def _perplexity(result: dict[str, Any] | None) -> dict[str, float] | None:
    if result is None:
        return None
    return {str(r["memory"]): r["perplexity"] for r in result["by_memory"]}


def collect(folder: Path, run: Path | None = None) -> dict[str, Any]:
    distraction = _load(folder / "distraction.json")
    out: dict[str, Any] = {}
    for key, name in MODELS.items():
        entry: dict[str, Any] = {}
        if distraction is not None:
            entry.update(_r_d(distraction, name))
        perplexity = {
            kind: _perplexity(_load(folder / f"ppl-{kind}-{name}.json"))
            for kind in ("code", "books", "code-multi")
        }
        entry["perplexity"] = {k: v for k, v in perplexity.items() if v is not None}
        passkey = _load(folder / f"passkey-{name}.json")
        if passkey is not None:
            entry["passkey"] = passkey["accuracy"]
        out[key] = entry
    out["control"] = None  # no d = 1 control fitted in this lease (see the closing note)
    if run is not None and (run / "config.json").is_file():
        out["training"] = json.loads((run / "config.json").read_text())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--run", type=Path, help="folder with the run's config.json")
    args = p.parse_args()
    result = collect(args.folder, args.run)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "training"}, indent=1)[:4000])


if __name__ == "__main__":
    main()
