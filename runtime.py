"""Device, threads, seeds and mixed precision: where and how the computation runs."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from .distributed import DistInfo


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA, then Apple MPS, then CPU for ``"auto"``; otherwise the named device.

    Raises:
        ValueError: If the named device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    kind = name.split(":")[0]
    if kind not in available:
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if not available[kind]:
        raise ValueError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return torch.device(name) if ":" in name or kind != "cuda" else torch.device("cuda", local_rank)


def _cores_per_process(dist_info: DistInfo) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // dist_info.world_size)


# On a CPU-only machine the network's threads and the loader's workers share the cores. Measured
# on 2 cores (benchmarks/run.py, "thread split"): torch on both cores trains twice as fast as on
# one, and one worker process beats loading in the training process, whose batch stacking and
# resizing then go through torch's thread pool and stall it whenever another process holds a core.
CPU_LOADER_WORKERS = 1


def default_num_workers(dist_info: DistInfo, device: torch.device | None = None) -> int:
    """Loader workers for this process.

    With an accelerator: the cores this process may use, less one for the training step, at most
    8. When the network itself runs on the CPU: ``CPU_LOADER_WORKERS``, as measured best (the
    loader then works between steps instead of competing with the network's threads).
    """
    per_process = _cores_per_process(dist_info)
    if device is not None and device.type == "cpu":
        return min(CPU_LOADER_WORKERS, per_process)
    return max(0, min(8, per_process - 1))


def configure_cpu_threads(dist_info: DistInfo, device: torch.device) -> int:
    """When the network runs on the CPU, give torch one intra-op thread per core of this process.

    Returns:
        The number of torch threads now set.
    """
    if device.type == "cpu":
        torch.set_num_threads(_cores_per_process(dist_info))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums, except on Apple MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on GPUs that compute in it, fp16 on older GPUs, None off CUDA.

    Pre-Ampere GPUs (T4, V100) only emulate bf16 and have no bf16 cuDNN convolutions, so they
    get fp16 (and a GradScaler); ``is_bf16_supported()`` alone counts emulation as support.
    """
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def autocast_context(device: torch.device, enabled: bool) -> Any:
    """Autocast to :func:`amp_dtype` on CUDA, nothing elsewhere."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
