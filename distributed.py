"""``torchrun`` helpers: joining the process group, sharding data, summing across ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (NCCL on CUDA, else gloo), if any."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = (device_name == "auto" or device_name.startswith("cuda")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def shutdown_distributed() -> None:
    """Leave the process group ``init_distributed`` joined, if any (NCCL warns, or can hang, otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def epoch_sampler(dataset: Dataset, epoch: int, seed: int, dist_info: DistInfo) -> DistributedSampler:
    """This rank's shuffled share of ``dataset`` for one epoch, seeded by ``(seed, epoch)``."""
    sampler = DistributedSampler(
        dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    return sampler


def eval_indices(n: int, dist_info: DistInfo) -> list[int]:
    """This rank's share of an evaluation set, with no padding, so every image counts once."""
    return list(range(dist_info.rank, n, dist_info.world_size))


def gather_rng_states(dist_info: DistInfo, device: torch.device) -> list[Tensor]:
    """Every rank's CPU RNG state (uint8), in rank order (augmentation draws a varying count per image)."""
    if not dist_info.distributed:
        return [torch.get_rng_state()]
    local = torch.get_rng_state().to(device)
    states = [torch.empty_like(local) for _ in range(dist_info.world_size)]
    dist.all_gather(states, local)
    return [s.cpu() for s in states]


def all_reduce_sum(values: Tensor, dist_info: DistInfo) -> Tensor:
    """Sum a tensor over all ranks (a no-op in a one-process run)."""
    if not dist_info.distributed:
        return values
    dist.all_reduce(values := values.clone(), op=dist.ReduceOp.SUM)
    return values
