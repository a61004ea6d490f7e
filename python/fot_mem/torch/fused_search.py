"""Exact top-k over a device mirror's bf16 keys without the float32 score matrix (issue 21).

The torch path (`DeviceMirror.search`) writes every query's float32 score against every key of a
block and then selects from it: the selection, not the product, is its cost. Here a Triton kernel
scores bf16 queries against bf16 keys on the tensor cores in two passes, and writes only:

1. per query and group of `GROUP` keys, the group's best score. The k-th largest of these
   maxima is the score of one of k distinct keys, so at most the k-th best score overall: a
   threshold `tau` that every top-k key reaches.
2. the ids of the keys scoring at least `tau - 2 e` (`e` bounds the bf16 score's distance from
   the float32 one: the query's bf16 rounding times the largest key norm, plus float32
   summation), compacted per query into `cap` slots with atomic counters.

The candidates are then rescored in float32 (the keys gathered and widened) and the top k taken,
so the ids equal the float32 oracle's up to ties at the k-th score. A query with more than `cap`
candidates (thousands of copies of one key) is answered by the torch path instead.

Not yet measured on a GPU: no GPU time was left when it was written. The tests run the kernel
under Triton's interpreter on the CPU (`TRITON_INTERPRET=1`), where bf16 products are widened
first (the interpreter's bf16 dot is not exact); `DeviceMirror` keeps the torch path as its default
until the kernel's speed is measured.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

try:
    import triton  # type: ignore[import-untyped]
    import triton.language as tl  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - torch's CUDA wheels ship triton
    triton = None

GROUP = 128  # keys per group maximum of pass 1 (and per tensor-core product)
ROWS = 64  # query rows per program
SPAN = 4  # groups of keys per program (the rows' queries are loaded once for all of them)
CHUNK_GROUPS = 8192  # groups per launch of pass 1 (1M keys: 2.4 GB of maxima at 18K queries x 3)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

Reference = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


def supported(keys: torch.Tensor) -> bool:
    """True where the kernel can search `keys [G, N, D]`: bf16, a power-of-two head_dim >= 16
    (`tl.dot`'s tiles), and Triton on a CUDA device or its interpreter on the CPU."""
    dim = keys.shape[-1]
    if triton is None or keys.dtype != torch.bfloat16 or dim < 16 or dim & (dim - 1):
        return False
    return keys.device.type == "cuda" or (INTERPRET and keys.device.type == "cpu")


if triton is not None:

    @triton.jit
    def _score_pass(
        q_ptr,
        k_ptr,
        tau_ptr,
        gmax_ptr,
        ids_ptr,
        cnt_ptr,
        R,
        N,
        key_stride,
        n_groups,
        D: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        SPAN: tl.constexpr,
        CAP: tl.constexpr,
        FILTER: tl.constexpr,
        WIDE: tl.constexpr,
    ):
        # One program: BM query rows of one kv head (loaded once) against SPAN groups of BN keys.
        pm, pn, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = pm * BM + tl.arange(0, BM)
        rmask = rows < R
        d = tl.arange(0, D)
        at = (g * R + rows)[:, None] * D + d[None, :]
        q = tl.load(q_ptr + at, mask=rmask[:, None], other=0.0)
        if WIDE:  # the interpreter (CPU tests): its bf16 dot is not exact, f32 of bf16 values is
            q = q.to(tl.float32)
        if FILTER:
            tau = tl.load(tau_ptr + g * R + rows, mask=rmask, other=float("inf"))
        for j in range(SPAN):
            group = pn * SPAN + j
            cols = group * BN + tl.arange(0, BN)
            cmask = cols < N
            k = tl.load(
                k_ptr + g * key_stride + cols[:, None] * D + d[None, :],
                mask=cmask[:, None],
                other=0.0,
            )
            if WIDE:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k))
            s = tl.where(cmask[None, :], s, float("-inf"))
            if FILTER:
                keep = (s >= tau[:, None]) & cmask[None, :] & rmask[:, None]
                ki = keep.to(tl.int32)
                base = tl.atomic_add(cnt_ptr + g * R + rows, tl.sum(ki, 1), mask=rmask)
                pos = base[:, None] + tl.cumsum(ki, 1) - 1
                slot = (g * R + rows)[:, None] * CAP + pos
                tl.store(ids_ptr + slot, cols[None, :], mask=keep & (pos < CAP))
            else:
                gm_at = (g * R + rows) * n_groups + group
                inside = (rows * 0 + group) < n_groups  # past the last group: nothing to write
                tl.store(gmax_ptr + gm_at, tl.max(s, 1), mask=rmask & inside)


def _margin(q: torch.Tensor, qb: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """[G, R] bound on |bf16 score - float32 score| for keys of norm <= kmax [G]: the query's
    rounding times the key norm, plus float32 summation in both (tensor cores and the
    rescoring), with slack; and an absolute term for flushed subnormals."""
    dim = q.shape[-1]
    eps = torch.finfo(torch.float32).eps
    dq = (q - qb.float()).norm(dim=-1)
    qn = q.norm(dim=-1) + qb.float().norm(dim=-1)
    km = kmax[:, None]
    return 1.01 * (dq * km + 2.0 * (dim + 2) * eps * qn * km) + 1e-30 * dim


def fused_topk(
    q: torch.Tensor,
    keys: torch.Tensor,
    n: int,
    k: int,
    reference: Reference,
    cap: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of `q [G, R, D]` (float32) against the first `n` keys of `keys [G, cap_n, D]`
    (bfloat16, on the same device): scores float32 and ids int64, `[G, R, k]`, best first, -inf /
    -1 past `n`. `reference(q_rows, keys, n, k)` answers rows with too many candidates."""
    g, r, dim = q.shape
    dev = q.device
    if not supported(keys):
        raise ValueError("fused_topk takes bf16 keys of a power-of-two head_dim >= 16 on CUDA")
    cap = cap or max(4 * k, k + 256)
    kk = min(k, n)
    q = q.float().contiguous()
    qb = q.to(torch.bfloat16).contiguous()
    keys = keys.contiguous()
    # Norms accumulated in float32 without a float32 copy of the keys.
    kmax = torch.linalg.vector_norm(keys[:, :n], dim=-1, dtype=torch.float32).amax(dim=1)
    n_groups = triton.cdiv(n, GROUP)
    dummy_i = torch.empty(1, dtype=torch.int32, device=dev)
    common = {"D": dim, "BM": ROWS, "BN": GROUP, "SPAN": SPAN, "CAP": cap, "WIDE": INTERPRET}
    stride = keys.stride(0)
    # Pass 1 in chunks of keys, keeping the k largest group maxima of each row so far.
    top = torch.full((g, r, 0), float("-inf"), device=dev)
    for first in range(0, n_groups, CHUNK_GROUPS):
        groups = min(CHUNK_GROUPS, n_groups - first)
        lo, hi = first * GROUP, min(n, (first + groups) * GROUP)
        gmax = torch.empty(g, r, groups, dtype=torch.float32, device=dev)
        grid = (triton.cdiv(r, ROWS), triton.cdiv(groups, SPAN), g)
        _score_pass[grid](qb, keys[:, lo:hi], gmax, gmax, dummy_i, dummy_i, r, hi - lo, stride,
                          groups, FILTER=False, **common)  # fmt: skip
        top = torch.cat((top, gmax), dim=-1)
        top = top.topk(min(kk, top.shape[-1]), dim=-1).values
        del gmax
    best = top[..., -1]
    if kk > n_groups:  # fewer groups than k: every key is a candidate
        best = torch.full_like(best, float("-inf"))
    tau = (best - 2.0 * _margin(q, qb, kmax)).contiguous()
    grid = (triton.cdiv(r, ROWS), triton.cdiv(n_groups, SPAN), g)
    ids = torch.full((g, r, cap), -1, dtype=torch.int32, device=dev)
    count = torch.zeros(g, r, dtype=torch.int32, device=dev)
    _score_pass[grid](qb, keys, tau, tau, ids, count, r, n, stride, n_groups,
                      FILTER=True, **common)  # fmt: skip
    scores = torch.full((g, r, k), float("-inf"), device=dev)
    out = torch.full((g, r, k), -1, dtype=torch.int64, device=dev)
    # Rescore in float32, a chunk of rows at a time (about 256 MB of gathered keys).
    chunk = max(1, (256 << 20) // (g * cap * dim * 4))
    for start in range(0, r, chunk):
        sl = slice(start, min(r, start + chunk))
        cid = ids[:, sl].long()
        valid = cid >= 0
        got = torch.stack([keys[h][cid[h].clamp(min=0)] for h in range(g)]).float()
        s = torch.einsum("grd,grcd->grc", q[:, sl], got).masked_fill(~valid, float("-inf"))
        top_s, pos = s.topk(kk, dim=-1)
        scores[:, sl, :kk] = top_s
        out[:, sl, :kk] = cid.gather(-1, pos)
    out = out.masked_fill(scores == float("-inf"), -1)
    over = (count > cap).nonzero()
    if len(over):  # a crowd past the cap (copies of one key): the torch path for those rows
        for h in over[:, 0].unique().tolist():
            rows = over[over[:, 0] == h, 1]
            s_ref, i_ref = reference(q[h : h + 1, rows], keys[h : h + 1], n, k)
            scores[h, rows], out[h, rows] = s_ref[0], i_ref[0]
    return scores, out
