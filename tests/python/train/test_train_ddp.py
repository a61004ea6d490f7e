"""Two gloo processes with negatives gathered across ranks compute the same gradients as one
process holding the whole global batch: the all-gather's backward returns every rank's share of
the gradient of its previous windows, and DDP's average turns the per-rank losses into the
global one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fot_mem.torch import Crossbatch, FotConfig, FotForCausalLM  # noqa: E402

SLOTS, WORLD, D, WINDOW = 2, 2, 3, 8  # d 3 of 4 global slots: negatives cross ranks


def model() -> FotForCausalLM:
    torch.manual_seed(0)
    config = FotConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=WINDOW,
        memory_layers=(1,),
    )
    return FotForCausalLM(config).double()


def batch() -> torch.Tensor:
    """`[global slots, 2 windows + 1]`: a previous window, then a current one with its target."""
    return torch.randint(
        0, 64, (SLOTS * WORLD, 2 * WINDOW + 1), generator=torch.Generator().manual_seed(1)
    )


def loss(net: torch.nn.Module, ids: torch.Tensor, spec: Crossbatch) -> torch.Tensor:
    slots = ids.shape[0]
    inputs = torch.cat((ids[:, :WINDOW], ids[:, WINDOW:-1]))
    out = net(inputs, memory=spec, logits_rows=slice(slots, None))
    return torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), ids[:, WINDOW + 1 :].flatten()
    )


def grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def worker(rank: int, port: int, out: str, gather: bool) -> None:
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        net = DistributedDataParallel(model())
        mine = batch()[rank * SLOTS : (rank + 1) * SLOTS]
        if gather:
            spec = Crossbatch(SLOTS, D, gather=lambda x: torch.cat(all_gather(x)), rank=rank)
        else:  # negatives from this rank's slots alone: a different loss
            spec = Crossbatch(SLOTS, min(D, SLOTS))
        loss(net, mine, spec).backward()
        if rank == 0:
            torch.save(grads(net.module), out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_grads(tmp_path: Path, gather: bool) -> dict[str, torch.Tensor]:
    out = str(tmp_path / f"grads-{gather}.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(worker, args=(free_port(), out, gather), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=True)


def test_gathered_negatives_give_the_global_batch_gradients(tmp_path: Path) -> None:
    net = model()
    loss(net, batch(), Crossbatch(SLOTS * WORLD, D)).backward()
    single = grads(net)
    gathered = ddp_grads(tmp_path, gather=True)
    assert single.keys() == gathered.keys()
    for name, g in single.items():
        assert torch.allclose(gathered[name], g, rtol=1e-9, atol=1e-12), name
    # the comparison can fail: negatives from the local slots alone give other gradients
    local = ddp_grads(tmp_path, gather=False)
    assert any(not torch.allclose(local[n], g, rtol=1e-6, atol=1e-9) for n, g in single.items())
