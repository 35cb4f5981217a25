"""Distributed context (torchrun / DDP) and the ONE place where features are gathered across ranks.

The contrastive matrices (CLIP loss and Mod-X) are built over the global batch: every rank gathers the
features of all ranks, keeping the gradient of its own slice (``torch.distributed.nn.all_gather``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def local_slice(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n samples."""
        bounds = [n * r // self.world_size for r in range(self.world_size + 1)]
        return slice(bounds[self.rank], bounds[self.rank + 1])


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_features(x: torch.Tensor, ctx: DistContext, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` [n_local, d] from all ranks in rank order; the local slice keeps its gradient.

    Ranks must hold equal-sized slices (the runner splits every global batch evenly, or nearly: sizes
    are padded here when they differ by one).
    """
    if not ctx.enabled:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(ctx.world_size)]
    torch.distributed.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s.item()) for s in sizes]
    top = max(sizes)
    padded = x if x.shape[0] == top else torch.cat([x, x.new_zeros((top - x.shape[0],) + tuple(x.shape[1:]))])
    if with_grad:
        parts = torch.distributed.nn.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        torch.distributed.all_gather(parts, padded.detach())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
