"""Peak resident memory of each training epoch through the real loader, and whether it grows (Linux /proc)."""

from __future__ import annotations

import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from bench_helpers import Sizes, take
from bench_train_step import TrainStep
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.runtime import default_num_workers, make_loader


class RssSampler:
    """Peak resident memory of this process and of this process plus its children (loader workers)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss(pid: int | str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _children() -> list[str]:
        kids: list[str] = []
        for task in Path("/proc/self/task").iterdir():
            with suppress(OSError):
                kids += (task / "children").read_text().split()
        return kids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = self.rss("self") + sum(self.rss(pid) for pid in self._children())
            self.peak_tree = max(self.peak_tree, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        with suppress(OSError):  # resets VmHWM, so the kernel's own peak covers this block alone
            Path("/proc/self/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_self = self._hwm()

    @staticmethod
    def _hwm() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def memory(root: Path, sizes: Sizes) -> dict[str, Any]:
    """Peak resident memory of each training epoch (batch 32, CPU, the real loader), and whether it grows."""
    if not Path("/proc/self/status").exists():
        return {"value": None, "skipped": "needs Linux /proc"}
    device = torch.device("cpu")
    dataset = StanfordCarsCAM(root, split="train", return_box=True, image_size=sizes.image_size)
    workers = default_num_workers(DistInfo(), device)
    indices = take(sizes.batch * sizes.memory_batches, len(dataset))
    step = TrainStep(len(dataset.classes), device)
    before = RssSampler.rss("self")
    peaks_self, peaks_tree = [], []
    for epoch in range(sizes.memory_epochs):
        torch.manual_seed(epoch)
        with RssSampler() as sampler:
            step.epoch(make_loader(dataset, indices, sizes.batch, workers, device, seed=epoch))
        peaks_self.append(sampler.peak_self)
        peaks_tree.append(sampler.peak_tree)
    mib = [round(p / 2**20, 1) for p in peaks_self]
    growth = (peaks_self[-1] - peaks_self[1 if len(peaks_self) > 2 else 0]) / 2**20
    return {
        "value": mib[-1],
        "rss_mib_before_training": round(before / 2**20, 1),
        "peak_rss_mib_per_epoch": mib,
        "peak_rss_with_workers_mib_per_epoch": [round(p / 2**20, 1) for p in peaks_tree],
        "growth_mib_after_first_epoch": round(growth, 1),
        "flat": bool(growth <= max(16.0, 0.02 * mib[0])),
        "batch": sizes.batch,
        "loader_workers": workers,
        "images_per_epoch": len(indices),
    }
