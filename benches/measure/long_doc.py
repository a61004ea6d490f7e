"""Long-document inference with SmolLM2-135M + 3 FoT memory layers over a persistent store:
ingest throughput with the GPU mirror and with the CPU store, search throughput of each at
growing memory sizes, and the GPU memory the mirror needs. Writes one JSON file.

Two steps, so that the GPU machine (no network, no tokenizer needed) only reads token ids:

    # here: tokenize the Python standard library's source (benches/compare/extract_keys.py's text)
    python benches/measure/long_doc.py tokens --count 1050000 --out bench-data/stdlib-tokens.npy
    # there (or here with --device cpu and small --max-tokens):
    python benches/measure/long_doc.py run --tokens bench-data/stdlib-tokens.npy \
        --gguf SmolLM2.gguf \
        --device cuda --max-tokens 1048576 --json bench-results/long_doc-h200.json

`--random` replaces the GGUF weights by random ones of the same shape (say so in any figure).
The document is read in windows of `--window` tokens (positions 0..window-1 each); memory
layers retrieve `--k` memories per query and head. SmolLM2 was not trained with FoT memory, so
the losses are reported for what they are (memory read by a model that never learned to), not
as a result of the method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def make_tokens(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compare"))
    from extract_keys import stdlib_tokens
    from fot_mem.torch import load_tokenizer
    from fot_mem.torch.weights import smollm2_gguf

    tok = load_tokenizer(args.gguf or smollm2_gguf())
    ids, source = stdlib_tokens(tok, args.count)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, ids.astype(np.int32))
    Path(args.out).with_suffix(".json").write_text(json.dumps(source, indent=1))
    print(f"{len(ids)} tokens -> {args.out}")


def timed(fn: Any, sync: Any, reps: int) -> tuple[float, Any]:
    """Median seconds of `reps` calls (after one warm-up), and the last result."""
    out = fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F
    from fot_mem import MemoryStore
    from fot_mem.torch import FotForCausalLM, load_gguf, smollm2_135m
    from fot_mem.torch.reader import LongDocumentReader, create_store
    from fot_mem.torch.retrieval import DeviceMirror

    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    layers = tuple(int(x) for x in args.memory_layers.split(","))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    if args.random:
        torch.manual_seed(0)
        model = FotForCausalLM(smollm2_135m(memory_layers=layers, memory_k=args.k))
        weights = "random (SmolLM2-135M shape)"
    else:
        model = load_gguf(args.gguf, memory_layers=layers, memory_k=args.k)
        weights = f"SmolLM2-135M-Instruct Q4_1 GGUF ({Path(args.gguf).name}), dequantised"
    model = model.to(device, dtype).eval()
    load_s = time.perf_counter() - t0
    tokens = torch.from_numpy(np.load(args.tokens).astype(np.int64))
    n = min(args.max_tokens, tokens.numel() - args.window)
    probe = tokens[n : n + args.window]  # held-out window after the document
    milestones = sorted({m for m in (65536, 262144, 1048576, n) if m <= n})
    root = Path(args.store or tempfile.mkdtemp(prefix="fot-long-doc-"))
    hnsw = not (args.no_hnsw or args.mirror_only)
    store = create_store(root / "store", model, dtype="bfloat16", hnsw=hnsw)
    w = args.window
    result: dict[str, Any] = {
        "weights": weights,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model_dtype": args.dtype,
        "store_dtype": "bfloat16",
        "window": w,
        "k": args.k,
        "memory_layers": list(layers),
        "document_tokens": n,
        "load_s": load_s,
        "milestones": [],
    }

    # 1. Ingest with the GPU mirror, probing search at each milestone.
    doc = store.document("stdlib")
    reader = LongDocumentReader(model, doc, window=w, k=args.k, mirror=device, profile=args.profile)
    mirror = reader.source
    assert isinstance(mirror, DeviceMirror)
    window_s, window_loss, plain_loss = [], [], []
    read = 0
    ingest_t0 = time.perf_counter()
    for start in range(0, n, w):
        chunk = tokens[start : min(n, start + w)]
        sync()
        t = time.perf_counter()
        losses = reader.read(chunk)
        sync()
        window_s.append(time.perf_counter() - t)
        window_loss.append(float(losses.mean()))
        with torch.no_grad():
            logits = model(chunk[None].to(device)).logits[0, :-1].float()
            plain_loss.append(float(F.cross_entropy(logits, chunk[1:].to(device))))
        read = start + chunk.numel()
        if read in milestones:
            result["milestones"].append(probe_search(args, reader, doc, probe, sync, read))
            print(json.dumps(result["milestones"][-1]), flush=True)
    result["mirror_ingest"] = {
        "tokens": read,
        "seconds": sum(window_s),
        "tokens_per_s": read / sum(window_s),
        "wall_s_with_baseline_and_probes": time.perf_counter() - ingest_t0,
        "window_s_median_first_32": statistics.median(window_s[:32]),
        "window_s_median_last_32": statistics.median(window_s[-32:]),
        "retrieve_s": reader.stats["retrieve_s"],
        "append_s": reader.stats["append_s"],
        "mirror_bytes": mirror.nbytes,
        "mirror_bytes_per_token": mirror.nbytes / max(read, 1),
        "cuda_max_allocated": torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else None,
        "note": "seconds: reader.read() calls only (forward, retrieval, append to store+mirror); "
        "retrieve_s / append_s are host time unless profile",
        "profile": args.profile,
    }
    result["window_s"] = window_s
    result["window_loss_memory"] = window_loss
    result["window_loss_plain"] = plain_loss

    # 2. Ingest with the CPU store (exact search) into a second document, first tokens only.
    cpu_n = 0 if args.mirror_only else min(n, args.cpu_ingest_tokens)
    if cpu_n:
        doc2 = store.document("stdlib-cpu")

        cpu_reader = LongDocumentReader(model, doc2, window=w, k=args.k, backend="exact")
        sync()
        t = time.perf_counter()
        cpu_losses = cpu_reader.read(tokens[:cpu_n])
        sync()
        cpu_s = time.perf_counter() - t
        result["cpu_store_ingest"] = {
            "tokens": cpu_n,
            "tokens_per_s": cpu_n / cpu_s,
            "retrieve_s": cpu_reader.stats["retrieve_s"],
            "append_s": cpu_reader.stats["append_s"],
            "mean_loss": float(cpu_losses.mean()),
            "mirror_mean_loss_same_tokens": float(np.mean(window_loss[: (cpu_n + w - 1) // w])),
        }
        print(json.dumps(result["cpu_store_ingest"]), flush=True)

    # 3. Reopen in a fresh handle: the memory is there without re-reading the document.
    store.close()
    t = time.perf_counter()
    again = MemoryStore.open(root / "store", readonly=True)
    reopened = LongDocumentReader(
        model, again.document("stdlib"), window=w, k=args.k, mirror=device
    )
    sync()
    result["reopen"] = {
        "open_and_mirror_s": time.perf_counter() - t,
        "memory_tokens": reopened.memory_tokens(),
    }
    again.close()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("window_")}, indent=1))


def probe_search(
    args: argparse.Namespace, reader: Any, doc: Any, probe: Any, sync: Any, memory: int
) -> dict[str, Any]:
    """At `memory` tokens: the probe window's queries of every memory layer, searched by the
    mirror, by the CPU store exactly and by the CPU store's HNSW graphs."""
    import torch

    t_start = time.perf_counter()
    captured: dict[int, torch.Tensor] = {}
    inner = reader.provider

    def capture(layer: int, q: torch.Tensor) -> Any:
        captured[layer] = q[0].transpose(0, 1).detach()
        return inner(layer, q)

    with torch.no_grad():
        reader.model(probe[None].to(reader.device), memory=capture)
    out: dict[str, Any] = {"memory_tokens": memory, "layers": {}}
    mirror = reader.source
    k = args.k
    store = doc.store
    if store.hnsw is not None:
        t = time.perf_counter()
        store.wait_for_indexes()
        out["hnsw_wait_s"] = time.perf_counter() - t
    for layer, q in captured.items():
        nq = q.shape[0] * q.shape[1]
        qc = q.float().cpu()
        m_s, (_, mi) = timed(lambda: mirror.search(layer, q, k), sync, 3)  # noqa: B023
        row: dict[str, Any] = {"queries": nq, "mirror_queries_per_s": nq / m_s}
        if args.mirror_only:
            out["layers"][str(layer)] = row
            continue
        e_s, (_, ei) = timed(
            lambda: doc.search(layer, qc, k, backend="exact"),  # noqa: B023
            lambda: None,
            1,
        )
        g_s, _ = timed(lambda: doc.gather(layer, ei), lambda: None, 1)  # noqa: B023
        row |= {
            "cpu_exact_queries_per_s": nq / e_s,
            "cpu_gather_s": g_s,
            "mirror_vs_cpu_exact_id_agreement": float(
                (np.sort(mi.cpu().numpy(), -1) == np.sort(ei, -1)).mean()
            ),
        }
        if store.hnsw is not None:
            row["indexed_tokens"] = doc.indexed_tokens(layer)
            for ef in (128, 512):
                h_s, (_, hi) = timed(
                    lambda ef=ef: doc.search(layer, qc, k, backend="hnsw", ef=ef),  # noqa: B023
                    lambda: None,
                    1,
                )
                hit = [len(set(a) & set(b)) for a, b in zip(hi.reshape(-1, k), ei.reshape(-1, k))]
                row[f"cpu_hnsw_ef{ef}_queries_per_s"] = nq / h_s
                row[f"cpu_hnsw_ef{ef}_recall"] = float(np.mean(hit) / k)
        out["layers"][str(layer)] = row
    out["probe_s"] = time.perf_counter() - t_start
    return out


def losses(args: argparse.Namespace) -> None:
    """Per-window mean next-token loss with memory (store, exact top-k) and without, float32."""
    import torch
    import torch.nn.functional as F
    from fot_mem.torch import load_gguf
    from fot_mem.torch.reader import LongDocumentReader, create_store

    torch.set_grad_enabled(False)
    layers = tuple(int(x) for x in args.memory_layers.split(","))
    model = load_gguf(args.gguf, memory_layers=layers, memory_k=args.k).eval()
    tokens = torch.from_numpy(np.load(args.tokens).astype(np.int64))[: args.max_tokens]
    root = Path(args.store or tempfile.mkdtemp(prefix="fot-losses-"))
    store = create_store(root / "store", model, dtype="float32")
    reader = LongDocumentReader(model, store.document("doc"), window=args.window, k=args.k)
    rows = []
    t0 = time.perf_counter()
    for start in range(0, tokens.numel(), args.window):
        chunk = tokens[start : start + args.window]
        memory = reader.memory_tokens()
        with_memory = float(reader.read(chunk).mean())  # first token: no previous logit here
        logits = model(chunk[None]).logits[0, :-1]
        plain = float(F.cross_entropy(logits, chunk[1:]))
        rows.append(
            {"start": start, "memory_tokens": memory, "memory": with_memory, "plain": plain}
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "weights": f"{Path(args.gguf).name}, dequantised, float32, CPU",
        "window": args.window,
        "k": args.k,
        "memory_layers": list(layers),
        "tokens": int(tokens.numel()),
        "seconds": time.perf_counter() - t0,
        "windows": rows,
        "note": "loss of tokens 1..W-1 of each window (the first is left out in both columns)",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("--count", type=int, default=1_050_000)
    t.add_argument("--out", default="bench-data/stdlib-tokens.npy")
    t.add_argument("--gguf", default=None)
    r = sub.add_parser("run")
    r.add_argument("--tokens", default="bench-data/stdlib-tokens.npy")
    r.add_argument("--gguf", default=None)
    r.add_argument("--random", action="store_true")
    r.add_argument("--device", default="cuda")
    r.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    r.add_argument("--max-tokens", type=int, default=1 << 20)
    r.add_argument("--window", type=int, default=2048)
    r.add_argument("--k", type=int, default=128)
    r.add_argument("--memory-layers", default="8,16,24")
    r.add_argument("--cpu-ingest-tokens", type=int, default=65536)
    r.add_argument("--no-hnsw", action="store_true")
    r.add_argument(
        "--profile", action="store_true", help="synchronise so retrieve_s / append_s hold GPU time"
    )
    r.add_argument(
        "--mirror-only",
        action="store_true",
        help="no CPU-store probes or ingest (implies --no-hnsw)",
    )
    r.add_argument("--store", default=None)
    r.add_argument("--json", default="bench-results/long_doc.json")
    ls = sub.add_parser("losses")
    ls.add_argument("--tokens", default="bench-data/stdlib-tokens.npy")
    ls.add_argument("--gguf", default=None)
    ls.add_argument("--max-tokens", type=int, default=1 << 17)
    ls.add_argument("--window", type=int, default=2048)
    ls.add_argument("--k", type=int, default=128)
    ls.add_argument("--memory-layers", default="8,16,24")
    ls.add_argument("--store", default=None)
    ls.add_argument("--json", default="bench-results/long_doc-losses-cpu.json")
    args = p.parse_args()
    if args.cmd == "tokens":
        make_tokens(args)
        return
    if not args.gguf and not getattr(args, "random", False):
        from fot_mem.torch.weights import smollm2_gguf

        args.gguf = str(smollm2_gguf())
    (losses if args.cmd == "losses" else run)(args)


if __name__ == "__main__":
    main()
