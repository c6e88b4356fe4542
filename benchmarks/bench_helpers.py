"""What every figure shares: how big it is (``Sizes``), how it is timed, and the machine it ran on."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.runtime import default_num_workers, usable_cpus
from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars


@dataclass
class Sizes:
    """How big each measurement is; ``--quick`` shrinks everything to a smoke test."""

    image_wh: tuple[int, int] = (700, 450)
    image_size: int = 224
    n_train_per_class: int = 24
    n_test_per_class: int = 12
    batch: int = 32
    train_batches: int = 6
    repeats: int = 3
    # Throughput on a shared VM moves by +-15 % from run to run: more rounds for these ratios.
    pipeline_repeats: int = 6
    overlay_repeats: int = 15
    decode_images: int = 64
    cam_batch: int = 64
    cam_method_images: int = 2
    warmup: int = 1  # rounds before the measured ones, where a figure asks for its warm-up from the sizes
    overlay_batch: int = 64
    sweep_images: int = 16
    eval_batches: int = 4
    memory_epochs: int = 4
    memory_batches: int = 3
    split_batches: int = 3
    # Every backbone, side by side: VGG16 trains at a few images/s on 2 CPU cores, so small batches.
    backbone_batch: int = 8
    backbone_steps: int = 2
    # The HTML report: small source JPEGs and a modest input size, so that writing 8,041 images and their report
    # takes a few minutes on 2 CPU cores. The demo set is demo.py's nine classes x 10 test images (``None``: all of
    # them); the large one 43 classes x 187 = 8,041, the size of the real Stanford Cars test split.
    report_image_wh: tuple[int, int] = (160, 104)
    report_image_size: int = 128
    report_thumb_size: int = 96
    report_batch: int = 32
    report_demo_classes: int | None = None
    report_demo_test_per_class: int = 10
    report_large_classes: int = 43
    report_large_test_per_class: int = 187
    # Your own photos: a folder of JPEGs at ``image_wh``, explained at the command's default batch size.
    photos: int = 256
    photo_batch: int = 16
    # Memory over many photos: small ones, so that 10,000 pass in a minute or two.
    memory_photos: int = 10_000
    memory_photo_wh: tuple[int, int] = (96, 64)
    memory_image_size: int = 64
    export_max_batch: int = 32  # the exported graph's largest timed batch
    # Saved maps: one per test image of a set the size of the real test split (43 classes x 187 = 8,041), at 112x112
    # (at 224 they would take 1.6 GB); wsolevaluation's own per-image loop on the first ``score_maps_loop`` only.
    # One round: each run scores every map, the exact protocol at 0.001 a thousand thresholds of each.
    score_maps_classes: int = 43
    score_maps_test_per_class: int = 187
    score_maps_size: int = 112
    score_maps_loop: int = 256
    score_maps_repeats: int = 1


QUICK = Sizes(
    image_wh=(160, 104),
    image_size=64,
    n_train_per_class=2,
    n_test_per_class=1,
    batch=4,
    train_batches=2,
    repeats=2,
    pipeline_repeats=2,
    overlay_repeats=2,
    decode_images=8,
    cam_batch=4,
    cam_method_images=1,
    warmup=0,
    overlay_batch=4,
    sweep_images=2,
    eval_batches=2,
    memory_epochs=2,
    memory_batches=2,
    split_batches=1,
    backbone_batch=2,
    backbone_steps=1,
    report_image_size=64,
    report_batch=4,
    report_demo_classes=2,
    report_demo_test_per_class=3,
    report_large_classes=2,
    report_large_test_per_class=3,
    photos=8,
    photo_batch=4,
    memory_photos=40,
    export_max_batch=4,
    score_maps_classes=2,
    score_maps_test_per_class=2,
    score_maps_size=32,
    score_maps_loop=4,
)


# --------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes, the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def rotated(names: Sequence[str], round_: int) -> list[str]:
    """``names`` started at a different one each round, so none always runs after the same other one."""
    k = round_ % len(names)
    return list(names[k:]) + list(names[:k])


def side_by_side(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating between them run by run (after ``warmup`` rounds)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name in rotated(list(fns), round_):
            fn = fns[name]
            seconds = timed(fn, device)
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the run-by-run ratios (runs made side by side share the machine's state)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


# --------------------------------------------------------------------------------------------
# Machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class OtherWork:
    """CPU time other processes took while this one ran: /proc/stat's busy time less this process tree's own."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def share(self) -> float | None:
        """Other processes' CPU seconds as a share of all the cores' time since construction."""
        end = self._snapshot()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others) / ((end[2] - self.start[2]) * usable_cpus())


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": usable_cpus(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": default_num_workers(DistInfo(), device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp's default)"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
    }
    if (load := load_average()) is not None:
        info["load_average_at_start"] = load
    return info


# --------------------------------------------------------------------------------------------
# Data


def build_data(folder: Path, sizes: Sizes) -> Path:
    """A synthetic Stanford Cars at realistic JPEG sizes (quality 90), in ``folder``."""
    return write_synthetic_stanford_cars(
        folder,
        n_train_per_class=sizes.n_train_per_class,
        n_test_per_class=sizes.n_test_per_class,
        image_size=sizes.image_wh,
        seed=0,
        quality=90,
    )


def take(n: int, length: int) -> list[int]:
    """``n`` indices cycling over a dataset of ``length``."""
    return [i % length for i in range(n)]
