"""The distraction measure r_d (fot_mem.eval.distraction) on tiny float64 models: r_1 is 1, r_d
equals a brute-force softmax over queries rebuilt from the layer's weights, identical keys give
1/d, a model built to recognise its document gives ~1 (a random one ~1/d), the draws, the errors,
and the CLI on a saved checkpoint."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, python_env  # noqa: E402
from fot_mem import FotMemError, InvalidValueError  # noqa: E402
from fot_mem.cli.eval import distraction as dx_cli  # noqa: E402
from fot_mem.eval import distraction as dx  # noqa: E402
from fot_mem.torch import FotConfig, FotForCausalLM, Memory  # noqa: E402

W = 12
CONFIG = FotConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=100.0,
    memory_layers=(1, 2),
)


def peaked(config: FotConfig, seed: int = 0) -> FotForCausalLM:
    """Weights large enough that logits differ by units, so r_d is far from 1/d."""
    torch.manual_seed(seed)
    model = FotForCausalLM(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.35)
        for layer in model.model.layers:
            if layer.self_attn.qk_norm:
                layer.self_attn.log_temperature.uniform_(1.5, 2.5)  # temperatures 4.5 to 12
    return model


def random_docs(
    n: int, length: int, seed: int = 0, vocab: int = 50
) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"doc{i}", rng.integers(0, vocab, size=length)) for i in range(n)]


def brute_force(
    model: FotForCausalLM, current: torch.Tensor, contexts: torch.Tensor
) -> list[tuple[float, float, float, float, float]]:
    """r per memory layer for one query window `current [W]` and its `contexts [d, W]`: q and k
    rebuilt from the projections' outputs (forward hooks), RoPE by the pair formula, memory given
    as a mapping (not a provider), and a softmax over memory AND causal local keys per head and
    token, in explicit loops. Per layer: (r, the contexts' first keys' share of the memory mass,
    r over the other keys, memory's share of the whole softmax, attention on the positive over
    attention on memory summed over heads and tokens)."""
    cfg = model.config
    heads, kv_heads, dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for layer in cfg.memory_layers:
        attn = model.model.layers[layer].self_attn
        for name in ("q", "k", "v"):
            hooks.append(
                getattr(attn, f"{name}_proj").register_forward_hook(
                    lambda _m, _i, out, key=(name, layer): seen.__setitem__(key, out[0].detach())
                )
            )

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True) if cfg.qk_norm else x

    def rope(x: torch.Tensor) -> torch.Tensor:  # [T, heads, D], positions 0..T-1
        half = dim // 2
        angle = torch.arange(x.shape[0], dtype=torch.float64)[:, None] * (
            cfg.rope_theta ** (-2 * torch.arange(half, dtype=torch.float64) / dim)
        )
        cos, sin = angle.cos()[:, None], angle.sin()[:, None]
        a, b = x[..., :half], x[..., half:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    try:
        with torch.no_grad():
            mem_k: dict[int, list[torch.Tensor]] = {layer: [] for layer in cfg.memory_layers}
            mem_v: dict[int, list[torch.Tensor]] = {layer: [] for layer in cfg.memory_layers}
            for ctx in contexts:
                model(ctx[None])
                for layer in cfg.memory_layers:
                    mem_k[layer].append(norm(seen["k", layer].view(-1, kv_heads, dim)))
                    mem_v[layer].append(seen["v", layer].view(-1, kv_heads, dim))
            keys = {layer: torch.cat(ks) for layer, ks in mem_k.items()}  # [d * W, Hkv, D]
            memory = {
                layer: Memory(
                    keys=keys[layer].permute(1, 0, 2)[None],
                    values=torch.cat(mem_v[layer]).permute(1, 0, 2)[None],
                )
                for layer in cfg.memory_layers
            }
            model(current[None], memory=memory)
            out = []
            for layer in cfg.memory_layers:
                attn = model.model.layers[layer].self_attn
                q = norm(seen["q", layer].view(-1, heads, dim))
                if cfg.qk_norm:
                    q = q * attn.log_temperature.exp()[None, :, None]
                else:
                    q = q / dim**0.5
                q = rope(q)
                local = rope(norm(seen["k", layer].view(-1, kv_heads, dim)))
                w = contexts.shape[1]
                n = keys[layer].shape[0]
                firsts = list(range(0, n, w))  # each context's first key
                content = [i for i in range(n) if i % w]
                ratios, shares, rests, in_memory, on_positive = [], [], [], [], []
                for h in range(heads):
                    g = h // (heads // kv_heads)
                    for t in range(q.shape[0]):
                        logits = torch.cat(
                            (keys[layer][:, g] @ q[t, h], local[: t + 1, g] @ q[t, h])
                        )
                        p = torch.softmax(logits, dim=0)
                        ratios.append((p[:w].sum() / p[:n].sum()).item())
                        shares.append((p[firsts].sum() / p[:n].sum()).item())
                        rests.append((p[1:w].sum() / p[content].sum()).item())
                        in_memory.append(p[:n].sum().item())
                        on_positive.append(p[:w].sum().item())
                out.append(
                    (
                        float(np.mean(ratios)),
                        float(np.mean(shares)),
                        float(np.mean(rests)),
                        float(np.mean(in_memory)),
                        float(np.sum(on_positive) / np.sum(in_memory)),
                    )
                )
            return out
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("qk_norm", [False, True])
def test_matches_brute_force(qk_norm: bool) -> None:
    model = peaked(CONFIG.replace(qk_norm=qk_norm))
    docs = random_docs(3, 3 * W)
    ds = (1, 2, 3, 5)
    res = dx.distraction(model, docs, ds, windows=3, window=W, seed=4, batch=2, progress=False)
    draws = dx.draw_windows(docs, 3, W, max(ds) - 1, 4)
    current, contexts = dx.window_tokens(docs, draws, W)
    for row in res["results"]:
        d = row["d"]
        stats = np.array([brute_force(model, current[i], contexts[i, :d]) for i in range(3)])
        brute = stats[..., 0]  # [windows, layers]
        got = [row["per_layer"][str(layer)] for layer in CONFIG.memory_layers]
        np.testing.assert_allclose(got, brute.mean(axis=0), rtol=1e-7)
        np.testing.assert_allclose(row["per_window"], brute.mean(axis=1), rtol=1e-7)
        assert row["r"] == pytest.approx(brute.mean(), rel=1e-7)
        assert row["first_key_share"] == pytest.approx(stats[..., 1].mean(), rel=1e-7)
        assert row["r_without_first_keys"] == pytest.approx(stats[..., 2].mean(), rel=1e-7)
        assert row["memory_share"] == pytest.approx(stats[..., 3].mean(), rel=1e-7)
        assert row["r_weighted"] == pytest.approx(stats[..., 4].mean(), rel=1e-7)
        assert 0.02 < row["memory_share"] < 0.98  # memory and local keys both draw mass
        if d > 1:  # weighting changes r, so the two comparisons are not the same one
            assert abs(row["r_weighted"] - row["r"]) > 1e-4
        assert 0 < row["first_key_share"] < 1 and row["first_key_share"] != pytest.approx(1 / W)
        assert row["inverse_d"] == 1 / d and row["windows"] == 3
        if d == 1:
            assert row["r"] == 1.0 and set(row["per_layer"].values()) == {1.0}  # exactly
        else:
            # far from uniform attention, so that the comparison can fail
            assert np.abs(np.array(row["per_window"]) - 1 / d).max() > 0.01
    # One window per forward gives the same numbers.
    again = dx.distraction(model, docs, ds, windows=3, window=W, seed=4, batch=1, progress=False)
    for a, b in zip(res["results"], again["results"]):
        np.testing.assert_allclose(a["per_window"], b["per_window"], rtol=1e-12)
    json.dumps(res)  # JSON-able


def test_first_keys_that_hold_all_the_mass() -> None:
    """Sinks whose logits are hundreds above every other key's: their share is 1, and r over
    the other keys is still exact (not the context's mass minus the sink's, which rounds to 0)."""
    g = torch.Generator().manual_seed(0)
    b, h, hkv, t, w, d, dim = 2, 4, 2, 3, 5, 3, 8
    queries = torch.randn(b, h, t, dim, generator=g, dtype=torch.float64)
    queries[..., 0] = 1 + queries[..., 0].abs()  # every query leans towards dimension 0
    keys = torch.randn(b, hkv, d * w, dim, generator=g, dtype=torch.float64)
    keys[..., 0] = 0  # content keys: nothing along dimension 0
    content = [i for i in range(d * w) if i % w]
    want = []
    for i in range(b):
        rs = []
        for head in range(h):
            logits = queries[i, head] @ keys[i, head // (h // hkv)].T  # [t, d * w]
            mass = logits.exp()
            rs.append(mass[:, 1:w].sum(-1) / mass[:, content].sum(-1))
        want.append(torch.cat(rs).mean())
    keys[:, :, ::w] = 0
    keys[:, :, ::w, 0] = 300.0  # each context's first key: a sink 300+ above the rest
    stats = dx.mass_stats(queries.float(), keys.float(), d)
    assert torch.isfinite(stats[:, :3]).all() and stats[:, 3:5].isnan().all()  # no local
    assert stats[:, 1].min() > 0.999  # the sinks' share
    np.testing.assert_allclose(stats[:, 2].numpy(), torch.stack(want).numpy(), rtol=1e-4)


def test_a_sink_token_model_is_measured_with_its_sink_in_the_local_keys() -> None:
    model = peaked(CONFIG.replace(sink_token=3))
    docs = random_docs(3, 3 * W)
    res = dx.distraction(model, docs, (1, 2), windows=2, window=W, seed=0, progress=False)
    for row in res["results"]:
        assert 0 < row["memory_share"] < 1 and 0 < row["r_weighted"] <= 1
        assert np.isfinite([row["r"], row["first_key_share"], row["r_without_first_keys"]]).all()


def test_identical_keys_give_one_over_d() -> None:
    model = peaked(CONFIG)
    docs = random_docs(4, 3 * W, seed=1)
    current, contexts = dx.window_tokens(docs, dx.draw_windows(docs, 4, W, 7, 0), W)
    copies = contexts[:, :1].expand(-1, 8, -1).contiguous()  # every negative = the positive
    r = dx.attention_mass(model, current, copies, (1, 2, 4, 8), batch=3)
    for d, mass in r.items():
        assert mass.shape == (2, 4)
        np.testing.assert_allclose(mass.numpy(), 1 / d, rtol=1e-9)
    # while the real negatives of the same windows do not
    real = dx.attention_mass(model, current, contexts, (8,), batch=3)[8]
    assert abs(real.mean().item() - 1 / 8) > 0.01


def focused_model() -> FotForCausalLM:
    """One memory layer whose q and k are both the token's group (tokens 8g..8g+7) scaled up, in
    RoPE pairs that barely turn (rope_theta 1e30): q.k ~ 20 within a group, 0 across groups."""
    config = FotConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        rope_theta=1e30,
        memory_layers=(0,),
    )
    torch.manual_seed(0)
    model = FotForCausalLM(config).double().eval()
    attn = model.model.layers[0].self_attn
    slots = (1, 2, 3, 5)  # head dims outside pair (0, 4), the one that turns 1 rad per position
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 4:].normal_(0, 0.1)
        emb[torch.arange(32), torch.arange(32) // 8] = 1.0
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        for g, slot in enumerate(slots):
            attn.k_proj.weight[slot, g] = 2.0
            for h in range(2):
                attn.q_proj.weight[h * 8 + slot, g] = 2.0
    return model


def test_focused_model_near_one_random_model_near_one_over_d() -> None:
    rng = np.random.default_rng(0)
    docs = [(f"g{g}", rng.integers(8 * g, 8 * g + 8, size=3 * W)) for g in range(4)]
    ds = (1, 2, 4, 8)
    focused = dx.distraction(focused_model(), docs, ds, windows=4, window=W, progress=False)
    assert all(row["r"] > 0.999 for row in focused["results"])
    torch.manual_seed(1)
    vanilla = FotForCausalLM(CONFIG.replace(vocab_size=32)).double().eval()  # std 0.02: flat
    plain = dx.distraction(vanilla, docs, ds, windows=4, window=W, progress=False)
    for row in plain["results"]:
        assert row["r"] == pytest.approx(1 / row["d"], rel=0.02)


def test_draws_reproducible_and_never_from_the_query_document() -> None:
    docs = [*random_docs(3, 2 * W + 5), ("short", np.zeros(W - 1, dtype=np.int64))]
    draws = dx.draw_windows(docs, 7, W, 20, seed=3)
    assert draws == dx.draw_windows(docs, 7, W, 20, seed=3)
    assert draws != dx.draw_windows(docs, 7, W, 20, seed=4)
    assert len(draws) == 7 and {d.doc for d in draws} == {0, 1, 2}  # spread over documents
    for draw in draws:
        assert W <= draw.start <= len(docs[draw.doc][1]) - W
        assert len(draw.negatives) == 20
        assert all(j not in (draw.doc, 3) for j, _ in draw.negatives)  # nor the short one
        assert all(0 <= s <= len(docs[j][1]) - W for j, s in draw.negatives)
        # 20 negatives from the 2 other long documents: windows repeat documents
        assert {j for j, _ in draw.negatives} == {0, 1, 2} - {draw.doc}
    current, contexts = dx.window_tokens(docs, draws, W)
    first = draws[0]
    tokens = docs[first.doc][1]
    assert current[0].tolist() == tokens[first.start : first.start + W].tolist()
    assert contexts[0, 0].tolist() == tokens[first.start - W : first.start].tolist()
    j, s = first.negatives[4]
    assert contexts[0, 5].tolist() == docs[j][1][s : s + W].tolist()


def test_errors() -> None:
    model = peaked(CONFIG)
    docs = random_docs(2, 2 * W)
    bad = [
        dict(ds=(0, 2)),
        dict(ds=()),
        dict(ds=(1.5,)),
        dict(windows=0),
        dict(window=0),
        dict(batch=0),
        dict(docs=random_docs(3, 2 * W - 1)),  # no document holds two windows
        dict(docs=random_docs(1, 4 * W), ds=(1, 2)),  # no other document for negatives
    ]
    for options in bad:
        args = dict(docs=docs, ds=(1, 2), windows=2, window=W, progress=False) | options
        with pytest.raises(InvalidValueError):
            dx.distraction(model, args.pop("docs"), args.pop("ds"), **args)
    dx.distraction(model, random_docs(1, 4 * W), (1,), windows=2, window=W, progress=False)
    no_memory = FotForCausalLM(CONFIG.replace(memory_layers=())).double()
    with pytest.raises(InvalidValueError, match="no memory layers"):
        dx.distraction(no_memory, docs, (1, 2), windows=1, window=W, progress=False)
    with pytest.raises(FotMemError):
        dx_cli.main(["--model", "x", "--data", "y", "--d", "1,a", "--json", "j", "--png", "p"])


def test_cli_writes_json_and_png(tmp_path: Path) -> None:
    from fot_mem.data.shards import write_shards
    from safetensors.torch import save_model

    text = "def add(a, b):\n    return a + b\n"
    docs = [(f"doc{i}", f"# {i}\n" + text * 3) for i in range(4)]
    write_shards(docs, tmp_path / "data", "bytes", "val", progress=False)
    run = tmp_path / "run"
    ckpt = run / "checkpoint-0000002"  # the layout Trainer.save writes
    ckpt.mkdir(parents=True)
    config = CONFIG.replace(vocab_size=256)
    save_model(peaked(config).float(), str(ckpt / "model.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"model_config": dataclasses.asdict(config)}))
    (run / "latest").write_text(ckpt.name)
    out_json, out_png = tmp_path / "out" / "r.json", tmp_path / "out" / "r.png"
    args = ["--model", str(run), "--model", str(ckpt), "--name", "run", "--name", "ckpt"]
    args += ["--data", str(tmp_path / "data"), "--d", "1,2,4", "--windows", "3", "--window", "16"]
    args += ["--json", str(out_json), "--png", str(out_png), "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "fot_mem", "eval", "distraction", *args, "--dtype", "float64"],
        capture_output=True,
        text=True,
        env=python_env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "r_4=" in proc.stdout
    result = json.loads(out_json.read_text())
    assert set(result["models"]) == {"run", "ckpt"}
    rows = result["models"]["run"]["results"]
    assert [row["d"] for row in rows] == [1, 2, 4] and rows[0]["r"] == 1.0
    assert result["models"]["run"]["results"] == result["models"]["ckpt"]["results"]
    assert 0 < rows[2]["r"] < 1 and rows[2]["windows"] == 3
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shared_pool_embeds_each_window_once_and_rows_per_forward_do_not_matter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = peaked(CONFIG)
    docs = random_docs(5, 3 * W, seed=2)
    draws = dx.draw_windows(docs, 6, W, 7, seed=1)
    pool = {w for d in draws for w in d.negatives}
    assert len(pool) <= 14  # the default pool: 2 * negatives windows, shared
    for d in draws:
        assert len(set(d.negatives)) == 7 and all(j != d.doc for j, _ in d.negatives)
    current, contexts = dx.window_tokens(docs, draws, W)
    embedded: list[int] = []
    real = dx.context_kv

    def counting(model: FotForCausalLM, windows: torch.Tensor, *a: Any) -> Any:
        embedded.append(windows.shape[0])
        return real(model, windows, *a)

    monkeypatch.setattr(dx, "context_kv", counting)
    r = dx.attention_mass(model, current, contexts, (1, 4, 8), batch=6)
    distinct = len({tuple(row) for row in contexts.reshape(-1, W).tolist()})
    assert embedded == [distinct] and distinct <= 6 + 14 < 6 * 8
    monkeypatch.setattr(dx, "MEMORY_WINDOWS", 8)  # one query window per forward at d = 8
    again = dx.attention_mass(model, current, contexts, (1, 4, 8), batch=6)
    for d in r:
        np.testing.assert_allclose(again[d].numpy(), r[d].numpy(), rtol=1e-12)
    # without a pool, every query window draws its own negatives
    own = dx.draw_windows(docs, 6, W, 7, seed=1, pool=0)
    assert len({w for d in own for w in d.negatives}) > 14
