"""Distraction (paper section 3.3, Fig. 3): the positive attention mass r_d.

A query window C_curr of a held-out document reads, at every memory layer, the keys of d context
windows at position 0: its own previous window C_prev (the positive) and d-1 windows of other
documents (the negatives). r_d = attention on the positive's keys / attention on all d contexts'
keys, averaged over the window's tokens, the heads and the memory layers. A model that cannot
tell its document's keys from others' spreads its attention evenly, r_d ~ 1/d; FoT keeps it high.

The local keys are in the same softmax but cancel in the ratio, so r_d = sum over positive keys of
exp(q.k) / sum over all memory keys of exp(q.k), with q the layer's scaled, rotated query: exactly
what a memory provider is handed (layer.py). The provider keeps the queries while the real forward
runs (the queries of a memory layer depend on what earlier memory layers read), and a hook on the
layer's attention measures once its local keys are known: they give memory's share of the whole
softmax, beside r_d and the sinks' share (`mass_stats`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..exceptions import InvalidValueError
from ..torch import FotForCausalLM, Memory
from . import common
from .draws import check_positive, draw_windows, window_tokens

DEFAULT_DS = (1, 2, 4, 8, 16, 32, 64)
# float32 logits per block of the mass computation (1 GiB): bounds memory at large d.
LOGIT_BUDGET = 1 << 28
# Context windows in memory per forward (query windows x d): at d = 128 two query windows per
# forward, whose memory attention reads 2 x 128 x W keys (bounded even on SDPA's math path).
MEMORY_WINDOWS = 256


@torch.inference_mode()
def attention_mass(
    model: FotForCausalLM,
    current: torch.Tensor,
    contexts: torch.Tensor,
    ds: Sequence[int],
    *,
    batch: int = 8,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """{d: r `[memory layers, N]`}: the positive attention mass of each query window
    (`current [N, W]`) at each memory layer, averaged over its tokens and heads, with the first d
    windows of `contexts [N, n, W]` in memory (the positive first)."""
    stats = attention_stats(model, current, contexts, ds, batch=batch, progress=progress)
    return {d: s[..., 0] for d, s in stats.items()}


@torch.inference_mode()
def attention_stats(
    model: FotForCausalLM,
    current: torch.Tensor,
    contexts: torch.Tensor,
    ds: Sequence[int],
    *,
    batch: int = 8,
    progress: bool = False,
    positions: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """{d: `mass_stats` `[memory layers, N, 5 + H]`}: as `attention_mass`, with the other figures
    of `mass_stats` beside r. `positions [N, W]` (bool): average over these tokens only."""
    layers = model.config.memory_layers
    n = contexts.shape[1]
    if not layers:
        raise InvalidValueError("the model has no memory layers to measure")
    if any(d > n for d in ds):
        raise InvalidValueError(f"d up to {max(ds)} needs {max(ds)} contexts, got {n}")
    device = next(model.parameters()).device
    started = time.time()
    # Windows shared between query windows (the negative pool) are embedded once.
    flat = contexts.reshape(-1, contexts.shape[2])
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    index = inverse.view(contexts.shape[0], n).to(device)
    kv = context_kv(model, unique, batch, device)
    if progress:
        print(
            f"[distraction] keys of {unique.shape[0]} distinct context windows of "
            f"{contexts.shape[0] * n} ({time.time() - started:.1f}s)",
            flush=True,
        )
    out = {}
    for d in ds:
        started = time.time()
        rows = []
        # fewer query windows per forward as d grows: memory keys of at most MEMORY_WINDOWS
        step = max(1, min(batch, MEMORY_WINDOWS // d))
        for first in range(0, current.shape[0], step):
            rows.append(
                _window_mass(model, current, kv, index, d, range(first, first + step), positions)
            )
        out[d] = torch.cat(rows, dim=1)
        if progress:
            print(
                f"[distraction] d={d}: r={out[d][..., 0].mean().item():.4f}, first keys' share "
                f"{out[d][..., 1].mean().item():.3f} ({time.time() - started:.1f}s)",
                flush=True,
            )
    return out


def context_kv(
    model: FotForCausalLM, windows: torch.Tensor, batch: int, device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Memory-layer keys (unrotated: position 0) and values `[rows, Hkv, W, D]` of each window,
    from a plain forward with no memory, as crossbatch computes its previous windows."""
    parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for first in range(0, windows.shape[0], batch):
        ids = windows[first : first + batch].to(device)
        for layer, kv in model(ids, logits_rows=slice(0, 0)).memory_kv.items():
            parts.setdefault(layer, []).append(kv)
    return {
        layer: (torch.cat([k for k, _ in kvs]), torch.cat([v for _, v in kvs]))
        for layer, kvs in parts.items()
    }


def _window_mass(
    model: FotForCausalLM,
    current: torch.Tensor,
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
    index: torch.Tensor,
    d: int,
    rows: range,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """`mass_stats` `[memory layers, rows, 5 + H]` of the query windows `rows`, d contexts in memory
    (each memory layer's queries and memory from its provider call, its local keys from the
    attention's output, through a forward hook)."""
    rows = range(rows.start, min(rows.stop, current.shape[0]))
    masses: dict[int, torch.Tensor] = {}
    tokens = None if positions is None else positions[rows.start : rows.stop]

    pick = index[rows.start : rows.stop, :d]  # [rows, d]: rows of the distinct windows' kv

    def first_d(x: torch.Tensor) -> torch.Tensor:
        # [distinct, Hkv, W, D] -> [rows, Hkv, d * W, D]: the contexts side by side per kv head.
        _, hkv, w, dim = x.shape
        return x[pick].transpose(1, 2).reshape(len(rows), hkv, d * w, dim)

    asked: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def provider(layer: int, queries: torch.Tensor) -> Memory:
        keys, values = kv[layer]
        memory = Memory(keys=first_d(keys), values=first_d(values))
        assert memory.keys is not None
        asked[layer] = (queries, memory.keys)
        return memory

    def measure(layer: int) -> Callable[..., None]:
        # after the layer's attention: its output holds the rotated local keys the queries saw
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            queries, keys = asked.pop(layer)
            masses[layer] = mass_stats(queries, keys, d, local=output[1][0], positions=tokens)

        return hook

    hooks = []
    for layer in model.config.memory_layers:
        attention = model.model.layers[layer].self_attn
        assert isinstance(attention, torch.nn.Module)
        hooks.append(attention.register_forward_hook(measure(layer)))
    try:
        ids = current[rows.start : rows.stop].to(kv[model.config.memory_layers[0]][0].device)
        model(ids, memory=provider, logits_rows=slice(0, 0))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([masses[layer] for layer in model.config.memory_layers]).cpu()


def mass_stats(
    queries: torch.Tensor,
    keys: torch.Tensor,
    contexts: int,
    *,
    local: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[B, 5 + H]` per row, means over heads and tokens: the positive mass r; the share of all
    memory mass on the contexts' first keys; r with those first keys left out; and, given the
    rotated `local` keys `[B, Hkv, T, D]` the queries attend causally (else NaN), memory's share
    of the whole softmax and r weighted by it (attention on the positive over attention on all
    of memory, summed over heads and tokens); then r of each of the H query heads.

    A window's first token is an attention sink (it saw nothing before it), so every context
    brings one key that draws mass whatever the query: the share says how much of r's
    denominator sinks hold, and the third figure is r over content keys alone. r is a mean
    over every query, also those that barely read memory; the weighted r counts each query as
    much as it reads memory.

    `positions [B, T]` (bool): means and sums over these tokens only (the rest weigh 0).

    Log-sum-exp per context in float32 (or wider); query head h reads kv head h // (H / Hkv),
    as grouped-query attention does."""
    b, h, t, dim = queries.shape
    hkv, w = keys.shape[1], keys.shape[2] // contexts
    dtype = torch.promote_types(queries.dtype, torch.float32)
    q = queries.reshape(b, hkv, (h // hkv) * t, dim).to(dtype)
    step = max(1, LOGIT_BUDGET // max(1, q.shape[:3].numel() * w))
    lse, first, rest = [], [], []
    for start in range(0, contexts, step):
        k = keys[:, :, start * w : (start + step) * w].to(dtype)
        logits = torch.matmul(q, k.transpose(-1, -2)).unflatten(-1, (-1, w))
        lse.append(logits.logsumexp(dim=-1))
        first.append(logits[..., 0])
        # summed apart, not lse minus the first: a sink can hold all of a context's mass
        rest.append(logits[..., 1:].logsumexp(dim=-1))
    per_context = torch.cat(lse, dim=-1)  # [B, Hkv, G * T, contexts]
    total = per_context.logsumexp(dim=-1)
    r = (per_context[..., 0] - total).exp()
    share = (torch.cat(first, dim=-1).logsumexp(dim=-1) - total).exp()
    without = torch.cat(rest, dim=-1)  # -inf everywhere when W = 1: r is then NaN
    r_rest = (without[..., 0] - without.logsumexp(dim=-1)).exp()
    # weight of each (kv head, query) entry: its token's, over heads alike
    weight = torch.ones(b, t, dtype=dtype, device=q.device)
    if positions is not None:
        weight = positions.to(q.device, dtype)
    weight = weight.repeat(1, h // hkv)[:, None, :].expand(b, hkv, -1)

    def mean(x: torch.Tensor) -> torch.Tensor:
        w = weight if x.dim() == 3 else weight[..., None]
        return (x * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2))

    stats = mean(torch.stack([r, share, r_rest], dim=-1))
    # r of each query head (head kv * G + g reads kv head kv), over the same tokens
    by_head = (r * weight).unflatten(-1, (h // hkv, t)).sum(-1) / weight.unflatten(
        -1, (h // hkv, t)
    ).sum(-1)
    by_head = by_head.reshape(b, h)
    if local is None:
        nan = torch.full_like(stats[:, :2], float("nan"))
        return torch.cat((stats, nan, by_head), dim=1)
    # causal local log-sum-exp: query t (of each group's T) sees local keys 0..t
    n = local.shape[2]
    logits = torch.matmul(q, local.to(dtype).transpose(-1, -2))  # [B, Hkv, G * T, n]
    seen = (
        torch.arange(n, device=q.device)[None, :]
        <= torch.arange(n - t, n, device=q.device)[:, None]
    )
    logits = logits.masked_fill(~seen.repeat(h // hkv, 1), float("-inf"))
    whole = torch.logaddexp(total, logits.logsumexp(dim=-1))
    memory = (total - whole).exp()  # memory's share of each query's softmax
    positive = (per_context[..., 0] - whole).exp()
    weighted = (positive * weight).sum(dim=(1, 2)) / (memory * weight).sum(dim=(1, 2))
    return torch.cat((stats, mean(memory)[:, None], weighted[:, None], by_head), dim=1)


def distraction(
    model: FotForCausalLM,
    docs: Sequence[tuple[str, np.ndarray]],
    ds: Sequence[int] = DEFAULT_DS,
    *,
    windows: int = 16,
    window: int = 1024,
    seed: int = 0,
    batch: int = 8,
    pool: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """r_d for each d of `ds`, over `windows` query windows of `window` tokens drawn from `docs`
    (the negatives of d are the first d-1 of the largest d's, so the curve is nested; `pool`:
    the shared negative windows, see `draw_windows`).

    Returns {"ds", "window", "windows", "seed", "memory_layers", "seconds", "results": [{"d",
    "r" (mean), "first_key_share", "r_without_first_keys", "memory_share" and "r_weighted"
    (`mass_stats`), "inverse_d", "per_layer" {layer: mean}, "per_window" [mean over layers],
    "std" (over windows), "windows"}]}."""
    ds = check_ds(ds)
    check_positive("batch", batch)
    if device is not None:
        model = model.to(device)
    started = time.time()
    draws = draw_windows(docs, windows, window, max(ds) - 1, seed, pool=pool)
    current, contexts = window_tokens(docs, draws, window)
    stats = attention_stats(model, current, contexts, ds, batch=batch, progress=progress)
    layers = model.config.memory_layers
    results = []
    for d in ds:
        r = stats[d][..., 0].double()  # [layers, windows]
        per_window = r.mean(dim=0)
        results.append(
            {
                "d": d,
                "r": r.mean().item(),
                "first_key_share": stats[d][..., 1].double().mean().item(),
                "r_without_first_keys": stats[d][..., 2].double().mean().item(),
                "memory_share": stats[d][..., 3].double().mean().item(),
                "r_weighted": stats[d][..., 4].double().mean().item(),
                "inverse_d": 1.0 / d,
                "per_layer": {str(layer): r[i].mean().item() for i, layer in enumerate(layers)},
                "per_window": per_window.tolist(),
                "std": per_window.std().item() if len(draws) > 1 else 0.0,
                "windows": len(draws),
            }
        )
    return {
        "ds": list(ds),
        "window": window,
        "windows": len(draws),
        "seed": seed,
        "pool": 2 * (max(ds) - 1) if pool is None else pool,
        "memory_layers": list(layers),
        "query_documents": len({d.doc for d in draws}),
        "seconds": time.time() - started,
        "results": results,
    }


def plot(results_by_model: dict[str, dict[str, Any]], png: str | Path) -> Path:
    """r_d against d (log2 axis), one line per model (dotted: without the contexts' first
    keys, the sinks), 1/d dashed."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    every_d: set[int] = set()
    for name, result in results_by_model.items():
        ds = [row["d"] for row in result["results"]]
        every_d.update(ds)
        (line,) = ax.plot(ds, [row["r"] for row in result["results"]], marker="o", label=name)
        rest = [row.get("r_without_first_keys") for row in result["results"]]
        if all(r is not None for r in rest):  # results saved before this figure lack it
            ax.plot(ds, rest, ":", marker=".", color=line.get_color(), label=f"{name}, no sinks")
    ticks = sorted(every_d)
    ax.plot(ticks, [1.0 / d for d in ticks], "k--", label="1/d")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(d) for d in ticks])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("d (contexts in memory)")
    ax.set_ylabel("positive attention mass r_d")
    ax.set_title("Distraction (paper section 3.3)")
    ax.grid(alpha=0.3)
    ax.legend()
    return common.save_figure(fig, png)


def check_ds(ds: Sequence[int]) -> tuple[int, ...]:
    values = tuple(ds)
    if not values:
        raise InvalidValueError("ds is empty: give at least one d")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidValueError(f"every d must be an integer >= 1, got {d!r}")
    return tuple(sorted({int(d) for d in values}))
