"""The process group of a DDP run under torchrun (one process, rank 0, without it)."""

from __future__ import annotations

import dataclasses
import os

import torch


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a number over ranks."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t) / self.world

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' tensors, concatenated in rank order, with gradients to each."""
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))
