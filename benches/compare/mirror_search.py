# ruff: noqa: B023  (every lambda here is timed at once, inside its own loop turn)
"""GPU mirror search on an H200: where the time of exact top-k goes (matmul vs topk per block),
and the whole search by plain per-block topk, by the group-max preselection, and by
fot_mem's DeviceMirror.search, on random bf16 keys (3 kv heads x 64, 2048 queries x 3 heads each,
k = 128: one SmolLM2 memory layer and window). Writes JSON:

    python benches/compare/mirror_search.py out.json
"""

import json
import sys
import types

import torch
from fot_mem.torch.retrieval import DeviceMirror, _block_topk
from gpu_search import timed as t

dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)


out = {}
kv, g, T, d, k = 3, 3, 2048, 64, 128
for n in (262144, 1048576):
    keys = torch.randn(kv, n, d, device=dev).bfloat16()
    q = torch.randn(kv, g * T, d, device=dev)
    B = 1 << 16
    r = {}
    blk = keys[:, :B].float()
    r["bmm_fp32_block"] = t(lambda: torch.bmm(q, blk.transpose(1, 2)))
    s = torch.bmm(q, blk.transpose(1, 2))
    r["topk_block"] = t(lambda: s.topk(k, dim=-1))
    r["max_groups_block"] = t(lambda: s.view(kv, g * T, -1, 128).amax(-1))
    torch.backends.cuda.matmul.allow_tf32 = True
    r["bmm_tf32_block"] = t(lambda: torch.bmm(q, blk.transpose(1, 2)))
    torch.backends.cuda.matmul.allow_tf32 = False
    qb = q.bfloat16()
    kb = keys[:, :B]
    r["bmm_bf16_block"] = t(lambda: torch.bmm(qb, kb.transpose(1, 2)))
    try:
        r["bmm_bf16_out32_block"] = t(
            lambda: torch.bmm(qb, kb.transpose(1, 2), out_dtype=torch.float32)
        )
    except Exception as e:
        r["bmm_bf16_out32_err"] = str(e)[:200]
    out[n] = r
    print(n, json.dumps(r), flush=True)


def search_blocks(q, keys, n, k, select, B=1 << 16, tf32=False):
    """Exact top-k over blocks of B keys, `select(scores, k)` picking each block's best."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    kvh, R, _ = q.shape
    best_s = torch.full((kvh, R, k), float("-inf"), device=dev)
    best_i = torch.full((kvh, R, k), -1, dtype=torch.int64, device=dev)
    for start in range(0, n, B):
        block = keys[:, start : min(n, start + B)].float()
        ts, ti = select(torch.bmm(q, block.transpose(1, 2)), k)
        cs = torch.cat((best_s, ts), -1)
        ci = torch.cat((best_i, ti + start), -1)
        best_s, p = cs.topk(k, dim=-1)
        best_i = ci.gather(-1, p)
    torch.backends.cuda.matmul.allow_tf32 = False
    return best_s, best_i


def search_plain(q, keys, n, k, B=1 << 16, tf32=False):
    return search_blocks(q, keys, n, k, lambda s, k: s.topk(min(k, s.shape[-1]), dim=-1), B, tf32)


def search_groups(q, keys, n, k, B=1 << 16, G=128, tf32=False):
    # the shipped group-max selection
    return search_blocks(q, keys, n, k, lambda s, k: _block_topk(s, k, G), B, tf32)


full = {}
for n in (262144, 1048576):
    keys = torch.randn(kv, n, d, device=dev).bfloat16()
    q = torch.randn(kv, g * T, d, device=dev)
    a = search_plain(q, keys, n, k)
    b = search_groups(q, keys, n, k)
    same = (a[1].sort(-1).values == b[1].sort(-1).values).float().mean().item()
    r = {
        "plain": t(lambda: search_plain(q, keys, n, k), 3),
        "groups": t(lambda: search_groups(q, keys, n, k), 3),
        "groups_B262k": t(lambda: search_groups(q, keys, n, k, B=1 << 18), 3),
        "plain_tf32": t(lambda: search_plain(q, keys, n, k, tf32=True), 3),
        "groups_tf32": t(lambda: search_groups(q, keys, n, k, tf32=True), 3),
        "groups_vs_plain_ids": same,
    }
    fake = types.SimpleNamespace(
        keys={0: keys},
        count={0: n},
        device=torch.device(dev),
        BLOCK=DeviceMirror.BLOCK,
        SCORE_BYTES=DeviceMirror.SCORE_BYTES,
        GROUP=DeviceMirror.GROUP,
        _layer=lambda layer: layer,
    )
    fake._score_budget = types.MethodType(DeviceMirror._score_budget, fake)
    qh = q.view(kv, g, T, d).permute(2, 0, 1, 3).reshape(T, kv * g, d)
    r["fot_mem_DeviceMirror"] = t(lambda: DeviceMirror.search(fake, 0, qh, k), 3)
    m_s, m_i = DeviceMirror.search(fake, 0, qh, k)
    a_i = a[1].view(kv, g, T, k).permute(2, 0, 1, 3).reshape(T, kv * g, k)
    r["fot_mem_vs_plain_ids"] = (m_i.sort(-1).values == a_i.sort(-1).values).float().mean().item()
    c = search_groups(q, keys, n, k, tf32=True)
    r["tf32_vs_fp32_ids"] = (a[1].sort(-1).values == c[1].sort(-1).values).float().mean().item()
    full[n] = r
    print("full", n, json.dumps(r), flush=True)
json.dump({"parts": out, "full": full}, open(sys.argv[1], "w"), indent=1)
