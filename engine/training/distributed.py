"""torchrun integration: one process per device, DistributedDataParallel, gloo on CPU and nccl on CUDA."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Frees the process group; call it once nothing else holds it (DDP's reducer does).

        Freed through Python's handle, the group lets go of the GIL before its destructor waits for gloo's worker
        threads; freed by the reducer's destructor, it waits holding the GIL, while a worker may need the GIL to
        drop a Python tensor of the last collective: a deadlock at exit, in about one two-rank CPU run in three.
        """
        if self.world_size > 1 and dist.is_initialized():
            gc.collect()  # a model left in a reference cycle would otherwise outlive the group
            dist.destroy_process_group()


def init_distributed(device: str | None) -> DistContext:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; a single process when they are absent."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, dev)
