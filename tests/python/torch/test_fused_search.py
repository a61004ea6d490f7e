"""The fused bf16 score + top-k kernel of the device mirror (`fot_mem.torch.fused_search`):
against a float32 top-k oracle on the CPU under Triton's interpreter (a subprocess with
`TRITON_INTERPRET=1`, which Triton reads when the kernel is defined), crowds of copies past the
candidate cap included; through `DeviceMirror(kernel="fused")` against the torch path; and on
CUDA where there is one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from fot_mem.exceptions import InvalidValueError  # noqa: E402
from fot_mem.torch import fused_search  # noqa: E402

CHECK = """
import torch
from fot_mem.torch import fused_search as fs

def oracle(q, keys, n, k):
    s = q @ keys[:, :n].float().transpose(1, 2)
    v, i = s.topk(min(k, n), dim=-1)
    return v, i

def check(q, keys, n, k, got_s, got_i):
    '''Ids equal to the oracle's up to ties at the k-th score, scores the keys' own.'''
    want_s, want_i = oracle(q, keys, n, k)
    kth = want_s[..., -1:]
    exact = torch.einsum("grd,grkd->grk", q, torch.stack(
        [keys[h][got_i[h].clamp(min=0)] for h in range(q.shape[0])]).float())
    tol = 1e-5 * (1 + kth.abs())
    assert bool((got_i >= 0).all() and (got_i < n).all()), "an id out of range"
    assert bool(((got_s - exact).abs() <= tol).all()), "a score is not its key's"
    assert bool((got_s >= kth - tol).all()), "a key below the k-th score"
    assert bool(((got_s - want_s).abs() <= tol).all()), "scores differ from the oracle's"
    for row in got_i.flatten(0, 1):
        assert len(set(row.tolist())) == k, "duplicate ids"

def same_up_to_ties(s, i, pi):
    '''The same ids at every rank, except among scores tied within the paths' rounding (two keys
    1e-7 apart may come back either way round, and a tie at the k-th score either key).'''
    k = s.shape[-1]
    for rs, ri, rp in zip(s.reshape(-1, k), i.reshape(-1, k), pi.reshape(-1, k)):
        tol = 1e-5 * (1 + rs.abs())
        for j in range(k):
            if ri[j] != rp[j]:
                tied = (rs - rs[j]).abs() <= tol[j]
                assert int(rp[j]) in ri[tied].tolist() or bool(tied[-1]), (j, ri, rp)
"""


def interpreted(body: str) -> None:
    code = CHECK + textwrap.dedent(body)
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout, run.stdout + run.stderr


def test_fused_topk_equals_the_float32_oracle_up_to_ties() -> None:
    interpreted(
        """
        torch.manual_seed(0)
        fs.CHUNK_GROUPS = 5  # pass 1 in several launches, the last one short
        for g, r, d, n, k in [(2, 70, 32, 4500, 8), (1, 64, 16, 2049, 16), (3, 5, 64, 1300, 1)]:
            q = torch.randn(g, r, d)
            keys = torch.randn(g, n + 37, d).to(torch.bfloat16)  # capacity past n is ignored
            keys[:, n:] = 1e4
            s, i = fs.fused_topk(q, keys, n, k, oracle)
            check(q, keys, n, k, s, i)
        print("ok")
        """
    )


def test_crowds_past_the_cap_and_exact_ties() -> None:
    """300 copies of one key, and a query that ranks them first: more candidates than the cap,
    so the row is answered by the reference; rows of copies within the cap stay on the kernel."""
    interpreted(
        """
        torch.manual_seed(1)
        g, r, d, n, k = 2, 40, 32, 3000, 8
        q = torch.randn(g, r, d)
        keys = torch.randn(g, n, d).to(torch.bfloat16)
        keys[1, 100:400] = keys[1, 50]
        keys[0, 700:720] = keys[0, 10]
        q[1, 3] = keys[1, 50].float() * 4
        q[0, 5] = keys[0, 10].float() * 4
        calls = []
        def counted(qq, kk, nn, kk_):
            calls.append(qq.shape[1])
            return oracle(qq, kk, nn, kk_)
        s, i = fs.fused_topk(q, keys, n, k, counted)
        check(q, keys, n, k, s, i)
        assert calls == [1], calls  # only the row of 300 copies overflowed the cap
        assert set(i[1, 3].tolist()) <= {50, *range(100, 400)}
        print("ok")
        """
    )


def test_mirror_with_the_fused_kernel_matches_the_torch_path(tmp_path) -> None:
    interpreted(
        f"""
        import numpy as np
        from fot_mem import MemoryStore
        from fot_mem.torch.retrieval import DeviceMirror
        store = MemoryStore.create({str(tmp_path / "s")!r}, layers=[0], kv_heads=2, head_dim=32,
                                   dtype="bfloat16", chunk_tokens=1024)
        doc = store.document("d")
        rng = np.random.default_rng(0)
        doc.append(0, rng.standard_normal((2500, 2, 32), dtype=np.float32),
                   rng.standard_normal((2500, 2, 32), dtype=np.float32))
        fused = DeviceMirror(doc, "cpu", kernel="fused")
        plain = DeviceMirror(doc, "cpu")
        torch.manual_seed(3)
        queries = torch.randn(7, 4, 32)
        for k in (1, 16):
            assert fused._fused(fused.keys[0], 2500, k)
            s, i = fused.search(0, queries, k)
            ps, pi = plain.search(0, queries, k)
            assert torch.allclose(s, ps, atol=1e-5, rtol=1e-5)
            same_up_to_ties(s, i, pi)
        store.close()
        print("ok")
        """
    )


def test_the_kernel_is_opt_in_and_named(tmp_path) -> None:
    from fot_mem import MemoryStore
    from fot_mem.torch.retrieval import DeviceMirror

    store = MemoryStore.create(tmp_path / "s", layers=[0], kv_heads=1, head_dim=16)
    doc = store.document("d")
    assert DeviceMirror(doc, "cpu").kernel == "torch"
    with pytest.raises(InvalidValueError, match="mirror kernel"):
        DeviceMirror(doc, "cpu", kernel="cuda")
    store.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_topk_on_cuda() -> None:
    torch.manual_seed(2)
    g, r, d, n, k = 3, 2048, 64, 300_000, 128
    q = torch.randn(g, r, d, device="cuda")
    keys = torch.randn(g, n, d, device="cuda").to(torch.bfloat16)

    def oracle(qq, kk, nn, k_):
        return (qq @ kk[:, :nn].float().transpose(1, 2)).topk(k_, dim=-1)

    s, i = fused_search.fused_topk(q, keys, n, k, oracle)
    want_s, want_i = oracle(q, keys, n, k)
    tol = 1e-4 * (1 + want_s[..., -1:].abs())
    assert bool((s >= want_s[..., -1:] - tol).all())
    assert bool(((s - want_s).abs() <= tol).all())
    assert (i == want_i).float().mean() > 0.99  # equal up to ties and summation order
