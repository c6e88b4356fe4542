"""The training step the figures time: ``train.py``'s own, on a seeded model, clocked from the second batch."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bench_helpers import sync
from CAM_Stanford_Cars.model import GAPNet, create_model
from CAM_Stanford_Cars.train import EpochProgress, StepSettings, build_scheduler, train_one_epoch


def new_model(num_classes: int, device: torch.device, arch: str = "alexnet") -> GAPNet:
    torch.manual_seed(0)
    return create_model(arch, num_classes).to(device)


class TrainStep:
    """The training step of ``train.py`` (same function, optimiser, schedule and AMP settings) for backbone ``arch``."""

    def __init__(self, num_classes: int, device: torch.device, arch: str = "alexnet") -> None:
        self.device = device
        self.channels_last = device.type == "cuda"
        self.model = new_model(num_classes, device, arch)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.scheduler = build_scheduler(self.optimizer, 10**6, 0)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def epoch(self, loader: Any) -> float:
        """Run ``loader`` through ``train_one_epoch``; returns the steady-state images/s.

        The clock starts when the second batch arrives, so neither the start of the loader's
        workers nor the first batch's loading (paid once per epoch, hundreds of steps on the real
        data) counts; every step after the first, and the loading of every batch after the
        first, does.
        """
        timed_loader = _ClockedLoader(loader, self.device)
        state = EpochProgress()
        settings = StepSettings(
            self.criterion,
            self.scheduler,
            self.device,
            amp=True,
            channels_last=self.channels_last,
            progress=False,
            log_every=10**9,
        )
        train_one_epoch(self.model, timed_loader, self.optimizer, settings, 0, state)
        sync(self.device)
        if len(timed_loader.arrivals) < 2:
            return state.sums[2] / state.seconds
        return (state.sums[2] - timed_loader.first_size) / (time.perf_counter() - timed_loader.arrivals[1])


class _ClockedLoader:
    """Passes a loader's batches through, noting when each arrives.

    Before noting the second arrival it waits for the device, so the first step's queued GPU
    work (whose images are not counted) falls outside the timed window.
    """

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader = loader
        self.device = device
        self.arrivals: list[float] = []
        self.first_size = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for batch in self.loader:
            if len(self.arrivals) == 1:
                sync(self.device)
            self.arrivals.append(time.perf_counter())
            if len(self.arrivals) == 1:
                self.first_size = len(batch[1])
            yield batch
