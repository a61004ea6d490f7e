"""What every evaluation needs besides its model (`fot_mem.torch.weights.load_model`): held-out
documents, and JSON/plot output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.shards import TokenDataset
from ..exceptions import InvalidValueError


def documents(
    data: str | os.PathLike[str], split: str = "val", *, min_tokens: int = 0, limit: int = 0
) -> list[tuple[str, np.ndarray]]:
    """(id, token ids) of a build's split, in index order, keeping documents of at least
    `min_tokens` tokens (the first `limit` of them if `limit`)."""
    ds = TokenDataset(data, split)
    out = [(ds.ids[i], ds[i]) for i in range(len(ds)) if len(ds[i]) >= min_tokens]
    if not out:
        raise InvalidValueError(
            f"{data} ({split}) has no document of >= {min_tokens} tokens; longest "
            f"{int(ds.lengths.max()) if len(ds) else 0}"
        )
    return out[:limit] if limit else out


def write_json(path: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Writes `result` whole or not at all (a temporary file renamed over `path`), so that an
    interrupted write never leaves a half file where an earlier result was."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    return out


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, png: str | os.PathLike[str]) -> Path:
    """Writes a finished matplotlib figure as PNG and closes it."""
    plt = pyplot()
    fig.tight_layout()
    out = Path(png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def load_results(files: list[str]) -> dict[str, Any]:
    """Saved results by name (their "name" field, else the file's stem): `--plot` input."""
    results = {}
    for f in files:
        res = json.loads(Path(f).read_text())
        results[str(res.get("name", Path(f).stem))] = res
    return results
