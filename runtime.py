"""Device, threads, data loaders, seeds and mixed precision: where and how the computation runs."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .distributed import DistInfo, init_distributed

# On a CPU-only machine the network's threads and the loader's workers share the cores: torch gets
# them all and one worker loads between steps. Loading in the training process would put stacking
# and resizing through torch's thread pool, which stalls whenever another process holds a core.
CPU_LOADER_WORKERS = 1


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA, then Apple MPS, then CPU for ``"auto"``; otherwise the named device.

    Raises:
        ValueError: If the named device is not available here.
    """
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    kind = name.split(":")[0]
    if kind not in available:
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if not available[kind]:
        raise ValueError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return torch.device(name) if ":" in name or kind != "cuda" else torch.device("cuda", local_rank)


def start_process(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join ``torchrun``'s process group, if any, and choose this process's device.

    Raises:
        ValueError: If the device is not available, or cannot serve a distributed run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device_name.startswith("cuda:"):
        raise ValueError(
            f"--device {device_name} puts every process on one GPU; under torchrun each process takes the "
            "GPU of its LOCAL_RANK: pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose GPUs"
        )
    dist_info = init_distributed(device_name)
    device = select_device(device_name, dist_info.local_rank)
    if dist_info.distributed and device.type == "mps":  # gloo, the only backend off CUDA, cannot reduce on MPS
        raise ValueError(
            "torchrun cannot train on Apple MPS (no distributed backend supports it); "
            "use --device cpu, or run one process"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)  # pinned memory and capability queries then use this GPU
    return dist_info, device


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(dist_info: DistInfo, device: torch.device | None = None) -> int:
    """Loader workers for this process: ``CPU_LOADER_WORKERS`` when the network runs on the CPU,
    else the cores this process may use less one for the training step, at most 8."""
    per_process = max(1, usable_cpus() // dist_info.world_size)
    if device is not None and device.type == "cpu":
        return min(CPU_LOADER_WORKERS, per_process)
    return max(0, min(8, per_process - 1))


def configure_cpu_threads(dist_info: DistInfo, device: torch.device) -> int:
    """On the CPU, give torch one intra-op thread per core of this process; returns torch's thread count."""
    if device.type == "cpu":
        torch.set_num_threads(max(1, usable_cpus() // dist_info.world_size))
    return torch.get_num_threads()


def collate_batch(items: Sequence[tuple[Any, ...]]) -> Any:
    """``default_collate``, except that in the training process itself NumPy stacks the tensors: a
    single-threaded copy cannot stall on a busy machine as torch's parallel one can."""
    if torch.utils.data.get_worker_info() is not None:
        return default_collate(items)  # a worker stacks straight into shared memory
    return [
        torch.from_numpy(np.stack([t.numpy() for t in column]))
        if isinstance(column[0], Tensor) and column[0].device.type == "cpu" and column[0].dtype != torch.bfloat16
        else default_collate(list(column))
        for column in zip(*items)
    ]


def make_loader(
    dataset: Dataset, indices: Sequence[int], batch_size: int, num_workers: int, device: torch.device, seed: int
) -> DataLoader:
    """A loader over ``indices`` in that order (the order is decided by the caller)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums, except on Apple MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that compute in it, fp16 on older GPUs, None off CUDA.

    Pre-Ampere GPUs (T4, V100) only emulate bf16 and have no bf16 cuDNN convolutions, so they get
    fp16 (and a GradScaler); ``is_bf16_supported()`` alone counts emulation as support.
    """
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast_context(device: torch.device, enabled: bool) -> Any:
    """Autocast to :func:`amp_dtype` on CUDA, nothing elsewhere."""
    dtype = amp_dtype(device) if enabled else None
    return nullcontext() if dtype is None else torch.autocast(device_type="cuda", dtype=dtype)
