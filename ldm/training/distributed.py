"""Process-group set-up for `torchrun` (DDP); a plain single process when not launched by it.

`torchrun` sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process group is
initialised from those (env://). CUDA runs use NCCL with one device per local rank; CPU runs use
gloo, which is how the multi-process path is tested without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job: global rank, number of processes, rank on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes checkpoints."""
        return self.rank == 0

    def device(self, kind: str) -> torch.device:
        """This process's device: the CUDA device of its local rank, or the CPU."""
        return torch.device("cuda", self.local_rank) if kind == "cuda" else torch.device("cpu")


def wrap(module: nn.Module, dist: Dist, device: torch.device, **kwargs: Any) -> nn.Module:
    """`module` under DDP when there are several ranks (its gradients averaged over them), else
    `module` itself. DDP broadcasts rank 0's weights here."""
    if dist.world_size == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)


def init_distributed(device_kind: str) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    dist = Dist(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if torch_dist.is_initialized():
        return dist
    cuda = device_kind == "cuda"
    if cuda:  # set before NCCL starts, so that each rank's communicator binds to its own GPU
        torch.cuda.set_device(dist.local_rank)
    torch_dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method="env://",
        rank=dist.rank,
        world_size=world_size,
        device_id=dist.device(device_kind) if cuda else None,  # binds NCCL (and barriers) early
    )
    return dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all processes, in place (unchanged in a single process)."""
    if is_distributed():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= torch_dist.get_world_size()
    return tensor


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed():
        torch_dist.barrier()
