"""The distraction measure of several models, end to end: documents, each model loaded in turn,
JSON after every model (one model's failure spares the rest) and the plot (`fot-mem eval
distraction`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..exceptions import InvalidValueError
from ..torch import FotForCausalLM
from ..torch.weights import LoadOptions
from . import common
from .distraction import check_ds, distraction, plot


def run(
    models: Sequence[tuple[str, str]],
    data: str | os.PathLike[str],
    *,
    json: str | os.PathLike[str],
    png: str | Path,
    ds: Sequence[int],
    split: str = "val",
    windows: int = 16,
    window: int = 1024,
    batch: int = 8,
    pool: int | None = None,
    seed: int = 0,
    load: LoadOptions | None = None,
) -> dict[str, Any]:
    """r_d of each (name, model spec) of `models` on `data`'s `split`; writes `json` (after every
    model, "complete" once all are done) and `png`. Returns what `json` holds."""
    load = load or LoadOptions()
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise InvalidValueError(f"give one distinct --name per --model, got {names}")
    ds = check_ds(ds)
    docs = common.documents(data, split, min_tokens=2 * window)
    print(f"[distraction] {len(docs)} documents of >= {2 * window} tokens", flush=True)
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    out: dict[str, Any] = {
        "evaluation": "distraction",
        "data": str(data),
        "complete": False,  # until every model is done
        "models": results,
    }
    for name, spec in models:
        started = time.time()
        model: FotForCausalLM | None = None
        try:
            model = load.load(spec)
            print(f"[distraction] {name}: {spec} loaded ({time.time() - started:.1f}s)", flush=True)
            result = distraction(
                model, docs, ds, windows=windows, window=window, seed=seed, batch=batch, pool=pool
            )
        except Exception as e:  # one model's failure (a missing checkpoint, OOM) spares the rest
            if len(models) == 1:
                raise
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"[distraction] {name}: FAILED {failed[name]}", flush=True)
            out["failed"] = failed
            common.write_json(json, out)
            continue
        finally:
            model = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result.update(model=str(spec), dtype=load.dtype, device=load.device)
        results[name] = result
        summary = ", ".join(f"r_{row['d']}={row['r']:.3f}" for row in result["results"])
        print(f"[distraction] {name}: {summary} ({result['seconds']:.1f}s)", flush=True)
        common.write_json(json, out)  # each model's results as soon as they exist
    if not results:
        raise InvalidValueError(f"every model failed: {failed}")
    out["complete"] = not failed
    common.write_json(json, out)
    plot(results, png)
    print(f"[distraction] wrote {json} and {png}", flush=True)
    return out
