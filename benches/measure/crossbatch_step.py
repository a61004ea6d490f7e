"""Training step time of crossbatch against the plain model at equal tokens, and MFU.

Every variant runs forward + backward + AdamW on the same batch rows: `[b previous windows;
b current windows]` of `--window` tokens, logits and loss on the current windows. "plain" gives
no memory; "crossbatch d=N" lets each current window attend to its own previous window and
N-1 others at its memory layers. Random weights (the cost does not depend on them); one JSON.

    python benches/measure/crossbatch_step.py --device cuda \
        --json bench-results/crossbatch_step-h200.json
    python benches/measure/crossbatch_step.py --device cpu --shape tiny --batch 2 --window 64

MFU counts matmul FLOPs (6 x params x tokens for the linear layers and the LM head, plus
attention: 4 x keys x head_dim per query and head, x3 for the backward pass) against the
H200's dense bf16 peak of 989 TFLOP/s (datasheet; about 790 measured on random data).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fot_mem.torch import Crossbatch, FotConfig, FotForCausalLM, smollm2_135m

PEAK = 989e12


def flops(config: FotConfig, batch: int, window: int, d: int | None, lm_rows: int) -> float:
    """Matmul FLOPs of one training step (forward + backward); the LM head on `lm_rows` rows."""
    tokens = 2 * batch * window
    hd, heads = config.head_dim, config.num_heads
    per_layer = 2 * config.hidden_size * (heads + 2 * config.num_kv_heads) * hd  # q, k, v
    per_layer += (
        2 * heads * hd * config.hidden_size + 6 * config.hidden_size * config.intermediate_size
    )
    linear = (
        tokens * config.num_layers * per_layer
        + lm_rows * window * 2 * config.hidden_size * config.vocab_size
    )
    causal = 4 * heads * hd * (window + 1) / 2  # per query: scores and weighted sum
    attention = tokens * config.num_layers * causal
    if d is not None:
        attention += batch * window * len(config.memory_layers) * 4 * heads * hd * d * window
    return 3 * (linear + attention)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="smollm2", choices=["smollm2", "tiny"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--d", default="1,8,64")
    p.add_argument("--memory-layers", default="8,16,24")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    layers = tuple(int(x) for x in args.memory_layers.split(","))
    if args.shape == "smollm2":
        config = smollm2_135m(memory_layers=layers)
    else:
        config = FotConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            max_position_embeddings=args.window,
            memory_layers=(1, 3),
        )
    torch.manual_seed(0)
    model = FotForCausalLM(config).to(device)
    model.checkpointing = args.checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    b, w = args.batch, args.window
    ids = torch.randint(0, config.vocab_size, (2 * b, w + 1), device=device)
    inputs = ids[:, :-1]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    forward = torch.compile(model) if args.compile else model

    def step(memory: Any, first: int = b) -> None:
        """Loss on rows first.. (crossbatch: the current windows; plain: also all rows)."""
        with autocast:
            out = forward(inputs, memory=memory, logits_rows=slice(first, None))
        targets = ids[first:, 1:]
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # "plain" trains on the current rows like crossbatch (the previous rows are wasted work, as
    # they are for crossbatch); "plain, all rows" trains on every row: an honest baseline.
    variants: list[tuple[str, Any, int | None]] = [
        ("plain", None, None),
        ("plain, all rows", None, None),
    ]
    wanted = [int(d) for d in args.d.split(",")]
    variants += [(f"crossbatch d={d}", Crossbatch(slots=b, d=d), d) for d in wanted if d <= b]
    rows = []
    for name, memory, d in variants:
        first = 0 if name == "plain, all rows" else b
        for _ in range(args.warmup):
            step(memory, first)
        times = []
        for _ in range(args.steps):
            sync()
            t = time.perf_counter()
            step(memory, first)
            sync()
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        work = flops(config, b, w, d, lm_rows=2 * b if first == 0 else b)
        row = {
            "variant": name,
            "step_s": seconds,
            "tokens_per_s": 2 * b * w / seconds,
            "loss_tokens_per_s": (2 * b - first) * w / seconds,
            "tflops": work / seconds / 1e12,
            "mfu": work / seconds / PEAK,
        }
        if device.type == "cuda":
            row["max_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    plain = rows[0]["step_s"]
    for row in rows:
        row["vs_plain"] = row["step_s"] / plain
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "shape": args.shape,
        "batch": b,
        "window": w,
        "memory_layers": list(config.memory_layers),
        "checkpointing": args.checkpointing,
        "compile": args.compile,
        "tokens_per_step": 2 * b * w,
        "peak_flops": PEAK,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
