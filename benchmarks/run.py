"""Performance benchmark: is the network busy, and what do CAM, overlays, boxes and evaluation cost?

Builds its own data with the synthetic Stanford Cars generator (JPEG quality 90, about 700x450),
measures the figures of the table below on the machine it runs on, and writes
``benchmarks/results.json`` and ``benchmarks/results.md``. Every figure is the median over
repeated runs after a warm-up; a comparison is the median of ratios of runs made side by side
(alternating) in the same process. A GPU is used where one is present (and its absolute
images/s recorded), the CPU otherwise.

| figure | what | target |
|---|---|---|
| pipeline efficiency | training images/s from JPEG files through the real loader / on tensors in memory | >= 0.95 CPU, >= 0.85 GPU |
| decode speed-up | loader's decode + resize to 224 per core / ``Image.open().convert("RGB").resize()`` | >= 2x |
| CAM overhead | forward with ``return_cam=True`` / without, batch 64 | <= 1.03x |
| backbones | per backbone (AlexNet, VGG16, ResNet-18, ResNet-50): training images/s on tensors in memory, batch 8; CAM overhead, batch 8 | <= 1.03x |
| overlay speed | ``apply_cam`` / the faster of torchcam ``overlay_mask`` and grad-cam ``show_cam_on_image`` | >= 1.5x CPU, >= 20x GPU |
| box sweep | one-pass sweep / ``scipy.ndimage.label`` per threshold, 100 thresholds | >= 20x |
| evaluation speed | ``train.evaluate`` images/s / plain inference images/s | >= 0.5 |
| memory | peak resident memory per training epoch, batch 32, CPU | flat from epoch to epoch |
| report | ``report.write_report`` of an untrained AlexNet-GAP: the page's size (MB), seconds to write it, seconds per image, on the demo's 90 test images and on 8,041 (the real test split's size; 43 classes x 187), 160x104 JPEGs read at 128x128 | (a record, no target) |

``--only FIGURE ...`` measures those figures alone; the others are kept from the ``results.json`` already in ``--out``
(each with the ``machine`` and ``sizes`` of the run that measured it), so one figure can be re-measured or added
without losing the rest. A ``--quick`` run never mixes with a full one's figures.

Usage::

    pip install -e '.[bench]'        # torchcam, grad-cam, opencv (the peers)
    python benchmarks/run.py         # about 10 minutes on 2 CPU cores
    python benchmarks/run.py --quick --out /tmp/bench   # seconds, tiny sizes: a smoke test
    python benchmarks/run.py --only report              # one figure; the rest of results.json is kept
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# OpenMP threads that sleep at once when idle (the setting the README recommends for CPU runs).
# With libgomp's default (spin, then sleep), torch's two threads on a two-core machine that other
# processes also use wait whole scheduler slices for each other: apply_cam ran 25x slower and
# stacking a batch 20x slower that way; on an idle machine the policy changed nothing measurable.
# It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn

from CAM_Stanford_Cars.cams import METHODS, compute_cams
from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.data.class_names import STANFORD_CARS_CLASS_NAMES
from CAM_Stanford_Cars.dataset import StanfordCarsCAM, select_classes
from CAM_Stanford_Cars.demo import DEMO_FILTERS
from CAM_Stanford_Cars.localization import THRESHOLDS, normalize_cams, reference_boxes, sweep_boxes
from CAM_Stanford_Cars.model import ARCHS, GAPNet, create_model
from CAM_Stanford_Cars.report import write_report
from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars
from CAM_Stanford_Cars.train import (
    DistInfo,
    EpochProgress,
    StepSettings,
    autocast_context,
    build_scheduler,
    configure_cpu_threads,
    default_num_workers,
    evaluate,
    make_loader,
    train_one_epoch,
)
from CAM_Stanford_Cars.visualize import apply_cam

logger = logging.getLogger("benchmarks")

HERE = Path(__file__).resolve().parent
NOTES_HEADING = "## Notes on these figures"
TARGETS = {
    "pipeline_efficiency": {"cpu": (">=", 0.95), "cuda": (">=", 0.85)},
    "pipeline_efficiency_cached": {"cpu": (">=", 0.95), "cuda": (">=", 0.85)},
    "decode_speedup": {"any": (">=", 2.0)},
    # One row per backbone; AlexNet's comes from the batch-64 ``cam_overhead`` figure when that ran.
    **{f"cam_overhead_{arch}": {"any": ("<=", 1.03)} for arch in ARCHS},
    "overlay_speedup": {"cpu": (">=", 1.5), "cuda": (">=", 20.0)},
    "box_sweep_speedup": {"any": (">=", 20.0)},
    "evaluation_speed": {"any": (">=", 0.5)},
}


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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
        return max(0.0, others) / ((end[2] - self.start[2]) * usable_cores())


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": default_num_workers(DistInfo(), device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp's default)"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
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


# --------------------------------------------------------------------------------------------
# Figures


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


def pipeline_efficiency(root: Path, cache_dir: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Training images/s from JPEG files through ``make_loader`` vs the same step on tensors in memory."""
    workers = default_num_workers(DistInfo(), device)
    n = sizes.batch * sizes.train_batches
    plain = StanfordCarsCAM(root, split="train", return_box=True, image_size=sizes.image_size)
    cached = StanfordCarsCAM(root, split="train", return_box=True, image_size=sizes.image_size, cache_dir=cache_dir)
    indices = take(n, len(plain))
    generator = torch.Generator().manual_seed(0)
    memory = [
        (
            torch.rand(sizes.batch, 3, sizes.image_size, sizes.image_size, generator=generator),
            torch.randint(0, len(plain.classes), (sizes.batch,), generator=generator),
        )
        for _ in range(sizes.train_batches)
    ]
    if device.type == "cuda":
        memory = [(x.to(device), y.to(device)) for x, y in memory]
    step = TrainStep(len(plain.classes), device)
    for i in range(len(cached)):  # builds the cache, as a first epoch does
        cached[i]
    rates: dict[str, list[float]] = {"memory": [], "jpeg": [], "cached": []}
    runs = {
        "memory": lambda: step.epoch(memory),
        "jpeg": lambda: step.epoch(make_loader(plain, indices, sizes.batch, workers, device, seed=0)),
        "cached": lambda: step.epoch(make_loader(cached, indices, sizes.batch, workers, device, seed=0)),
    }
    step.epoch(memory[:1])  # warm-up: allocator, kernels, first workers
    for round_ in range(sizes.pipeline_repeats):
        for name in rotated(list(runs), round_):
            rates[name].append(runs[name]())
    result = {
        "value": statistics.median(j / m for j, m in zip(rates["jpeg"], rates["memory"])),
        "cached": statistics.median(c / m for c, m in zip(rates["cached"], rates["memory"])),
        "images_per_s_memory": statistics.median(rates["memory"]),
        "images_per_s_jpeg": statistics.median(rates["jpeg"]),
        "images_per_s_cached": statistics.median(rates["cached"]),
        "images_per_s_by_round": {name: [round(r, 2) for r in values] for name, values in rates.items()},
        "batch": sizes.batch,
        "images_per_run": n,
        "loader_workers": workers,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    return result


def thread_split(root: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """End-to-end training images/s from JPEG files for each split of the cores (torch threads, loader workers)."""
    cores = usable_cores()
    if device.type == "cuda" or cores > 4:
        return {"skipped": "measured only on small CPU machines, where the split matters"}
    dataset = StanfordCarsCAM(root, split="train", return_box=True, image_size=sizes.image_size)
    indices = take(sizes.batch * sizes.split_batches, len(dataset))
    before = torch.get_num_threads()
    candidates = sorted({(t, w) for t in (1, cores) for w in (0, 1, cores - 1)})
    rates: dict[str, list[float]] = {f"threads={t},workers={w}": [] for t, w in candidates}
    step = TrainStep(len(dataset.classes), device)
    try:
        for round_ in range(1 + min(sizes.repeats, 2)):
            for (t, w), name in zip(candidates, rates):
                torch.set_num_threads(t)
                rate = step.epoch(make_loader(dataset, indices, sizes.batch, w, device, seed=0))
                if round_ > 0:
                    rates[name].append(rate)
    finally:
        torch.set_num_threads(before)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"images_per_s": medians, "best": max(medians, key=medians.get)}


def decode_speedup(root: Path, cache_dir: Path, sizes: Sizes) -> dict[str, Any]:
    """Per-core images/s of the loader's decode + resize vs plain PIL, on the same files."""
    from PIL import Image

    view = StanfordCarsCAM(root, split="test", image_size=sizes.image_size)
    crops = StanfordCarsCAM(root, split="train", image_size=sizes.image_size)
    cached = StanfordCarsCAM(root, split="test", image_size=sizes.image_size, cache_dir=cache_dir)
    n = sizes.decode_images
    paths = [view.samples[i][0] for i in take(n, len(view))]
    size = (sizes.image_size, sizes.image_size)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one core for each
    try:
        for i in range(len(cached)):
            cached[i]
        fns = {
            "plain": lambda: [np.asarray(Image.open(p).convert("RGB").resize(size)) for p in paths],
            "loader": lambda: [view[i] for i in take(n, len(view))],
            "loader_train_crop": lambda: [crops[i] for i in take(n, len(crops))],
            "loader_cached": lambda: [cached[i] for i in take(n, len(cached))],
        }
        times = side_by_side(fns, sizes.repeats, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    return {
        "value": median_ratio(times["plain"], times["loader"]),
        "train_crop": median_ratio(times["plain"], times["loader_train_crop"]),
        "cached": median_ratio(times["plain"], times["loader_cached"]),
        "images_per_s_per_core": rate,
        "plain": "np.asarray(Image.open(p).convert('RGB').resize((S, S)))  (PIL's default bicubic)",
    }


def cam_overhead(sizes: Sizes, device: torch.device, arch: str = "alexnet", batch: int | None = None) -> dict[str, Any]:
    """Forward with ``return_cam=True`` vs without, inference mode, backbone ``arch``, ``batch`` images (``sizes.cam_batch``)."""
    batch = sizes.cam_batch if batch is None else batch
    model = new_model(196, device, arch).eval()
    x = torch.rand(batch, 3, sizes.image_size, sizes.image_size, device=device)
    with torch.inference_mode():
        times = side_by_side(
            {"plain": lambda: model(x), "cam": lambda: model(x, return_cam=True)}, sizes.repeats + 2, device
        )
        cam = model(x[:1], return_cam=True)[1]
    return {
        "value": median_ratio(times["cam"], times["plain"]),
        "images_per_s": {name: batch / statistics.median(t) for name, t in times.items()},
        "batch": batch,
        "arch": arch,
        "title": model.title,
        "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "cam_size": list(cam.shape[-2:]),
        "image_size": sizes.image_size,
    }


def backbones(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Per backbone: training images/s of the real step on tensors in memory (the backbones side by side), the
    CAM overhead (as ``cam_overhead``), parameters and the CAM's size."""
    generator = torch.Generator().manual_seed(0)
    b, s, classes = sizes.backbone_batch, sizes.image_size, 196
    memory = [
        (torch.rand(b, 3, s, s, generator=generator), torch.randint(0, classes, (b,), generator=generator))
        for _ in range(sizes.backbone_steps)
    ]
    if device.type == "cuda":
        memory = [(x.to(device), y.to(device)) for x, y in memory]
    steps = {arch: TrainStep(classes, device, arch) for arch in ARCHS}
    times = side_by_side(
        {arch: (lambda step=step: step.epoch(memory)) for arch, step in steps.items()}, sizes.repeats, device
    )
    del steps
    n = b * sizes.backbone_steps
    archs: dict[str, Any] = {}
    for arch in ARCHS:
        cam = cam_overhead(sizes, device, arch, batch=b)
        archs[arch] = {
            "title": cam["title"],
            "train_images_per_s": n / statistics.median(times[arch]),
            "train_images_per_s_by_round": [round(n / t, 2) for t in times[arch]],
            "cam_overhead": cam["value"],
            "inference_images_per_s": cam["images_per_s"],
            "parameters_millions": cam["parameters_millions"],
            "cam_size": cam["cam_size"],
        }
    return {
        "archs": archs,
        "batch": b,
        "image_size": s,
        "steps_per_run": sizes.backbone_steps,
        "repeats": sizes.repeats,
        "device": str(device),
    }


def cam_methods(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Milliseconds per image of each CAM method (``compute_cams``) on AlexNet-GAP, the methods side by side."""
    model = new_model(196, device).eval()
    # Two images: Score-CAM alone runs 1,024 forward passes per image, over a minute a round on two CPU cores.
    x = torch.rand(2, 3, sizes.image_size, sizes.image_size, generator=torch.Generator().manual_seed(0)).to(device)
    fns = {method: (lambda method=method: compute_cams(model, x, method)) for method in METHODS}
    times = side_by_side(fns, 1, device)
    per_image = {method: 1000 * statistics.median(t) / x.shape[0] for method, t in times.items()}
    return {
        "value": per_image["scorecam"] / per_image["cam"],
        "ms_per_image": per_image,
        "batch": x.shape[0],
        "image_size": sizes.image_size,
        "arch": "alexnet",
        "device": str(device),
    }


def overlay_speed(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """``apply_cam`` vs torchcam's ``overlay_mask`` and grad-cam's ``show_cam_on_image``, same images and maps."""
    generator = torch.Generator().manual_seed(0)
    b, s = sizes.overlay_batch, sizes.image_size
    images = torch.rand(b, 3, s, s, generator=generator)
    cams = torch.randn(b, 13, 13, generator=generator)
    ours_images, ours_cams = images.to(device), cams.to(device)
    fns: dict[str, Callable[[], Any]] = {"apply_cam": lambda: apply_cam(ours_images, ours_cams, alpha=0.5)}
    missing: dict[str, str] = {}
    # The peers get their inputs in their own formats, converted beforehand; each one's timing
    # holds what its API leaves to the caller: min-max normalisation and, for grad-cam, the resize.
    hwc = [np.ascontiguousarray(img.permute(1, 2, 0).numpy()) for img in images]  # (H, W, 3) float32
    maps = [c.numpy() for c in cams]
    try:
        from PIL import Image
        from torchcam.utils import overlay_mask

        pil_images = [Image.fromarray((img * 255).round().astype(np.uint8)) for img in hwc]

        def torchcam_run() -> list[Any]:
            out = []
            for img, cam in zip(pil_images, maps):
                norm = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-12)
                out.append(overlay_mask(img, Image.fromarray(norm.astype(np.float32), mode="F"), alpha=0.5))
            return out

        fns["torchcam_overlay_mask"] = torchcam_run
    except ImportError as err:
        missing["torchcam_overlay_mask"] = f"not installed ({err}); pip install torchcam"
    try:
        import cv2
        from pytorch_grad_cam.utils.image import show_cam_on_image

        def gradcam_run() -> list[Any]:
            out = []
            for img, cam in zip(hwc, maps):
                norm = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-12)
                mask = cv2.resize(norm, (s, s), interpolation=cv2.INTER_LINEAR)
                out.append(show_cam_on_image(img, mask, use_rgb=True, image_weight=0.5))
            return out

        fns["gradcam_show_cam_on_image"] = gradcam_run
    except ImportError as err:
        missing["gradcam_show_cam_on_image"] = f"not installed ({err}); pip install grad-cam opencv-python-headless"
    times = side_by_side(fns, sizes.overlay_repeats, device)
    rate = {name: b / statistics.median(t) for name, t in times.items()}
    result: dict[str, Any] = {"images_per_s": rate, "batch": b, "missing": missing}
    peers = [name for name in times if name != "apply_cam"]
    if peers:
        fastest = max(peers, key=lambda name: rate[name])
        result.update(value=median_ratio(times[fastest], times["apply_cam"]), fastest_peer=fastest)
    else:
        result["value"] = None
    return result


def box_sweep(sizes: Sizes) -> dict[str, Any]:
    """One-pass boxes for 100 thresholds vs ``scipy.ndimage.label`` per threshold, one core each."""
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(sizes.sweep_images, 13, 13, generator=generator)
    maps = normalize_cams(raw, (sizes.image_size, sizes.image_size)).numpy()  # (N, S, S) like real CAMs
    sweep_boxes(maps[:1], THRESHOLDS, num_threads=1)  # compile
    fns = {
        "sweep": lambda: sweep_boxes(maps, THRESHOLDS, num_threads=1),
        "scipy_label": lambda: [reference_boxes(m, THRESHOLDS) for m in maps],
    }
    times = side_by_side(fns, sizes.repeats, torch.device("cpu"))
    same = bool(
        np.array_equal(
            sweep_boxes(maps, THRESHOLDS, num_threads=1), np.stack([reference_boxes(m, THRESHOLDS) for m in maps])
        )
    )
    return {
        "value": median_ratio(times["scipy_label"], times["sweep"]),
        "images_per_s": {name: sizes.sweep_images / statistics.median(t) for name, t in times.items()},
        "thresholds": len(THRESHOLDS),
        "equal_to_reference": same,
    }


def evaluation_speed(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """``train.evaluate`` (forward, CAM, all thresholds, metrics) vs plain inference, same batches in memory."""
    model = new_model(196, device).eval()
    generator = torch.Generator().manual_seed(0)
    s = sizes.image_size
    batches = []
    for _ in range(sizes.eval_batches):
        images = torch.rand(sizes.batch, 3, s, s, generator=generator)
        corner = torch.rand(sizes.batch, 2, generator=generator) * s / 2
        boxes = torch.cat([corner, corner + s / 3], dim=1)
        batches.append((images.to(device), torch.randint(0, 196, (sizes.batch,), generator=generator), boxes))
    channels_last = device.type == "cuda"

    def plain() -> None:
        with torch.inference_mode(), autocast_context(device, True):  # the dtype evaluate uses
            for images, _, _ in batches:
                model(images.contiguous(memory_format=torch.channels_last) if channels_last else images).float().cpu()

    times = side_by_side(
        {
            "plain": plain,
            "evaluate": lambda: evaluate(model, batches, device, s, amp=True, channels_last=channels_last),
        },
        sizes.repeats,
        device,
    )
    n = sizes.batch * sizes.eval_batches
    return {
        "value": median_ratio(times["plain"], times["evaluate"]),
        "images_per_s": {name: n / statistics.median(t) for name, t in times.items()},
        "batch": sizes.batch,
    }


class RssSampler:
    """Peak resident memory of this process and of this process plus its children (loader workers)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(pid: int | str) -> int:
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
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                pass
        return kids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = self._rss("self") + sum(self._rss(pid) for pid in self._children())
            self.peak_tree = max(self.peak_tree, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        try:  # resets VmHWM, so the kernel's own peak covers this block alone
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
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
    before = RssSampler._rss("self")
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


def spread(names: Sequence[str], n: int) -> list[str]:
    """``n`` of ``names``, evenly spaced over the list (so over brands and years too)."""
    return [names[i * len(names) // n] for i in range(n)]


def report_case(
    folder: Path,
    class_names: list[str],
    filters: dict[str, Any],
    n_test_per_class: int,
    sizes: Sizes,
    device: torch.device,
    repeats: int,
) -> dict[str, Any]:
    """Write the test images of ``class_names`` and an untrained checkpoint on ``filters``; time ``write_report``.

    The median of ``repeats`` runs after one warm-up run (none when ``repeats`` is 0: one run, timed).
    """
    start = time.perf_counter()
    root = write_synthetic_stanford_cars(
        folder / "data",
        class_names=class_names,
        n_train_per_class=0,
        n_test_per_class=n_test_per_class,
        image_size=sizes.report_image_wh,
        seed=0,
        quality=90,
    )
    data_seconds = time.perf_counter() - start
    full_filters = {"car_type": None, "car_brand": None, "car_production_year": None, **filters}
    classes = StanfordCarsCAM(root, split="test", image_size=sizes.report_image_size, **full_filters).classes
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        folder / "checkpoint.pt",
        create_model("alexnet", len(classes)),
        class_names=list(classes),
        image_size=sizes.report_image_size,
        epoch=0,
        args={"root": str(root)},
        **full_filters,
    )
    page = folder / "report.html"

    def write() -> dict[str, Any]:
        return write_report(
            checkpoint,
            page,
            split="test",
            batch_size=sizes.report_batch,
            device=device.type,
            progress=False,
            thumb_size=sizes.report_thumb_size,
        )

    runs = [time.perf_counter()]
    for _ in range(1 + repeats if repeats else 1):
        result = write()
        runs.append(time.perf_counter())
    seconds = [b - a for a, b in zip(runs, runs[1:])][1 if repeats else 0 :]
    n = len(class_names) * n_test_per_class
    if result["n_cards"] != n:
        raise RuntimeError(f"the report has {result['n_cards']} cards for {n} test images")
    writing = statistics.median(seconds)
    return {
        "images": n,
        "classes_with_images": len(class_names),
        "classes_in_checkpoint": len(classes),
        "filters": {k: v for k, v in filters.items() if v is not None},
        "mb": page.stat().st_size / 1e6,
        "seconds": writing,
        "seconds_per_image": writing / n,
        "seconds_by_run": [round(t, 3) for t in seconds],
        "data_writing_seconds": round(data_seconds, 2),
    }


def report(base: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The HTML report of an untrained AlexNet-GAP checkpoint: page size and writing time, demo set and 8,041 images."""
    demo_names = [STANFORD_CARS_CLASS_NAMES[i] for i in select_classes(STANFORD_CARS_CLASS_NAMES, **DEMO_FILTERS)]
    demo_names = demo_names[: sizes.report_demo_classes]
    demo = report_case(
        base / "report_demo",
        demo_names,
        dict(DEMO_FILTERS),
        sizes.report_demo_test_per_class,
        sizes,
        device,
        sizes.repeats,
    )
    large_names = spread(STANFORD_CARS_CLASS_NAMES, sizes.report_large_classes)
    large = report_case(base / "report_large", large_names, {}, sizes.report_large_test_per_class, sizes, device, 0)
    return {
        "value": large["seconds_per_image"],
        "demo": demo,
        "large": large,
        "arch": "alexnet (untrained, epoch 0)",
        "device": str(device),
        "batch": sizes.report_batch,
        "loader_workers": default_num_workers(DistInfo(), device),
        "source_image_wh": list(sizes.report_image_wh),
        "image_size": sizes.report_image_size,
        "thumb_size": sizes.report_thumb_size,
        "timing": f"demo: median of {sizes.repeats} run(s) after a warm-up run; large: one run (after the demo's)",
        "mb_unit": "10^6 bytes",
    }


# --------------------------------------------------------------------------------------------
# Report


ROWS = [
    ("pipeline_efficiency", "pipeline efficiency (JPEG decoded every epoch)", "pipeline_efficiency", "value"),
    ("pipeline_efficiency_cached", "pipeline efficiency (with `cache_dir`)", "pipeline_efficiency", "cached"),
    ("decode_speedup", "decode speed-up (per core)", "decode_speedup", "value"),
    ("overlay_speedup", "overlay speed vs faster peer", "overlay_speed", "value"),
    ("box_sweep_speedup", "box sweep, 100 thresholds", "box_sweep", "value"),
    ("evaluation_speed", "evaluation / plain inference", "evaluation_speed", "value"),
]


def target_for(key: str, device: torch.device) -> tuple[str, float] | None:
    options = TARGETS.get(key, {})
    return options.get("any") or options.get("cuda" if device.type == "cuda" else "cpu")


def verdict(value: float | None, target: tuple[str, float] | None) -> bool | None:
    if value is None or target is None:
        return None
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def cam_rows(figures: dict[str, Any]) -> list[tuple[str, str, float | None, Any]]:
    """(key, label, value, note) of the CAM overhead of each backbone. AlexNet's is the batch-64 ``cam_overhead``
    figure when that ran (the backbones figure's batch-8 AlexNet otherwise), so it shows once."""
    single = figures.get("cam_overhead", {})
    table = figures.get("backbones", {})
    by_arch = table.get("archs", {})
    rows = []
    for arch in ARCHS:
        if arch == "alexnet" and single:
            data, value, batch = single, single.get("value"), single.get("batch", "?")
        else:
            data, value, batch = table, by_arch.get(arch, {}).get("cam_overhead"), table.get("batch", "?")
        title = by_arch.get(arch, {}).get("title") or data.get("title") or arch
        rows.append((f"cam_overhead_{arch}", f"CAM overhead, {title} (batch {batch})", value, data.get("error") or ""))
    return rows


def figure_device(data: Any, device: torch.device) -> torch.device:
    """The device a figure was measured on: its own ``machine``'s where it was kept from an earlier run, else ``device``."""
    machine = data.get("machine") if isinstance(data, dict) else None
    return torch.device(machine["device"]) if isinstance(machine, dict) and machine.get("device") else device


def summarize(figures: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    entries, devices = [], {}
    for key, label, figure, field_name in ROWS:
        data = figures.get(figure, {})
        value = data.get(field_name) if isinstance(data, dict) else None
        entries.append((key, label, value, data.get("error") or data.get("missing") or ""))
        devices[key] = figure_device(data, device)
    after = next(i for i, entry in enumerate(entries) if entry[0] == "decode_speedup") + 1
    entries[after:after] = cam_rows(figures)
    rows = []
    for key, label, value, note in entries:
        target = target_for(key, devices.get(key, device))
        rows.append(
            {
                "figure": key,
                "label": label,
                "measured": value,
                "target": f"{target[0]} {target[1]:g}" if target else "",
                "met": verdict(value, target),
                "note": note,
            }
        )
    mem = figures.get("memory", {})
    rows.append(
        {
            "figure": "memory",
            "label": f"memory: peak RSS per training epoch, batch {mem.get('batch', '?')}",
            "measured": mem.get("value"),
            "target": "flat",
            "met": mem.get("flat"),
            "note": mem.get("error") or mem.get("skipped") or f"per epoch {mem.get('peak_rss_mib_per_epoch')}",
        }
    )
    return rows


def machine_text(m: dict[str, Any]) -> str:
    return (
        f"{m.get('device_name')} ({m.get('cores')} cores usable, torch {m.get('torch')}, {m.get('torch_threads')} torch "
        f"threads, {m.get('loader_workers')} loader workers, device `{m.get('device')}`, OMP_WAIT_POLICY "
        f"{m.get('omp_wait_policy')})"
    )


def kept_figures(figures: dict[str, Any]) -> dict[str, list[str]]:
    """The figures kept from earlier runs (those carrying their own ``machine``), by the date of the run that measured them."""
    by_date: dict[str, list[str]] = {}
    for name, data in figures.items():
        if isinstance(data, dict) and isinstance(data.get("machine"), dict):
            by_date.setdefault(str(data["machine"].get("date")), []).append(name)
    return by_date


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    kept = kept_figures(results["figures"])
    if kept:
        measured = ", ".join(f"`{name}`" for name in results.get("measured", [])) or "none"
        lines = [f"This run measured {measured} on {m['date']} on {machine_text(m)}."]
    else:
        lines = [f"Measured {m['date']} on {machine_text(m)}."]
    lines.append("")
    other = m.get("other_processes_cpu_share")
    if other is not None and other > 0.05:
        lines += [f"Other processes used {other:.0%} of the machine's CPU time during the run: figures are noisy.", ""]
    for date, names in sorted(kept.items()):
        old = results["figures"][names[0]]["machine"]
        share = old.get("other_processes_cpu_share")
        busy = f"; other processes used {share:.0%} of its CPU time" if share is not None and share > 0.05 else ""
        lines += [
            f"Kept from the run of {date} (not re-measured here) on {machine_text(old)}{busy}: "
            + ", ".join(f"`{name}`" for name in names)
            + ".",
            "",
        ]
    lines += [
        "| figure | measured | target | met? |",
        "|---|---|---|---|",
    ]
    for row in results["summary"]:
        value = row["measured"]
        shown = (
            "n/a" if value is None else (f"{value:.3g}x" if row["figure"] not in ("memory",) else f"{value:.0f} MiB")
        )
        if (
            row["figure"] in ("evaluation_speed", "pipeline_efficiency", "pipeline_efficiency_cached")
            and value is not None
        ):
            shown = f"{value:.3f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        note = row["note"]
        if isinstance(note, dict):
            note = "; ".join(f"{k}: {v}" for k, v in note.items())
        lines.append(f"| {row['label']} | {shown}{' (' + str(note) + ')' if note else ''} | {row['target']} | {met} |")
    pipe = results["figures"].get("pipeline_efficiency", {})
    if "images_per_s_memory" in pipe:
        lines += [
            "",
            f"Absolute training images/s ({pipe['device']}, batch {pipe['batch']}): in memory "
            f"{pipe['images_per_s_memory']:.1f}, from JPEG {pipe['images_per_s_jpeg']:.1f}, "
            f"from the cache {pipe['images_per_s_cached']:.1f}.",
        ]
    methods = results["figures"].get("cam_methods", {})
    if "ms_per_image" in methods:
        lines += [
            "",
            f"CAM methods, ms per image ({methods['device']}, AlexNet-GAP, batch {methods['batch']}, "
            f"{methods['image_size']}x{methods['image_size']}): "
            + ", ".join(f"{name} {ms:.1f}" for name, ms in methods["ms_per_image"].items())
            + ".",
        ]
    table = results["figures"].get("backbones", {})
    if table.get("archs"):
        lines += [
            "",
            f"Training images/s per backbone ({table['device']}, batch {table['batch']}, {table['image_size']}x"
            f"{table['image_size']}, in memory): "
            + ", ".join(
                f"{a['title']} {a['train_images_per_s']:.1f} ({a['parameters_millions']:.1f} M parameters, CAM "
                f"{'x'.join(map(str, a['cam_size']))})"
                for a in table["archs"].values()
            )
            + ".",
        ]
    split = results["figures"].get("thread_split", {})
    if "images_per_s" in split:
        lines += [
            "",
            "Training images/s from JPEG by split of the cores: "
            + ", ".join(f"{name} {rate:.1f}" for name, rate in split["images_per_s"].items())
            + f" (best: {split['best']}).",
        ]
    page = results["figures"].get("report", {})
    if "demo" in page and "large" in page:
        demo, large = page["demo"], page["large"]
        lines += [
            "",
            f"Report: demo set {demo['images']:,} images {demo['mb']:.2f} MB in {demo['seconds']:.2f} s; "
            f"{large['images']:,} images {large['mb']:.{1 if large['mb'] >= 10 else 2}f} MB in {large['seconds']:.1f} s "
            f"({1000 * large['seconds_per_image']:.1f} ms per image). `write_report` of an untrained AlexNet-GAP "
            f"({page['device']}, batch {page['batch']}, {page['loader_workers']} loader workers), "
            f"{'x'.join(map(str, page['source_image_wh']))} JPEGs read at {page['image_size']}x{page['image_size']}, "
            f"{page['thumb_size']}-pixel thumbnails; {large['classes_with_images']} classes x "
            f"{large['images'] // large['classes_with_images']} test images for the large set.",
        ]
    return "\n".join(lines) + "\n"


def keep_previous(path: Path, results: dict[str, Any]) -> list[str]:
    """Copy into ``results`` the figures of the earlier ``results.json`` at ``path`` that this run did not measure,
    each with the ``machine`` and ``sizes`` of the run that measured it (a figure kept before keeps its own); their names.
    A quick run's figures and a full run's are never mixed."""
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        figures = previous["figures"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("%s is unreadable (%s): the figures not measured now are not kept", path, err)
        return []
    was_quick = bool((previous.get("sizes") or {}).get("quick"))
    if was_quick != bool(results["sizes"]["quick"]):
        logger.warning(
            "%s holds a %s run's figures and this is a %s run: they are not kept",
            path,
            "quick" if was_quick else "full",
            "quick" if results["sizes"]["quick"] else "full",
        )
        return []
    kept = []
    for name, data in figures.items():
        if name in results["figures"] or not isinstance(data, dict):
            continue
        results["figures"][name] = {
            **data,
            "machine": data.get("machine") or previous.get("machine"),
            "sizes": data.get("sizes") or previous.get("sizes"),
        }
        kept.append(name)
    return kept


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: a smoke test of every figure")
    parser.add_argument("--out", default=str(HERE), help="folder for results.json and results.md")
    parser.add_argument(
        "--data", default=None, help="folder for the synthetic data and cache (default: a temporary one)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the network runs")
    parser.add_argument("--repeats", type=int, default=None, help="measured runs per figure (after a warm-up)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=[
            "pipeline",
            "split",
            "decode",
            "cam",
            "backbones",
            "methods",
            "overlay",
            "sweep",
            "evaluate",
            "memory",
            "report",
        ],
        help="measure only these figures; the others are kept from --out's results.json",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = QUICK if args.quick else Sizes()
    if args.repeats is not None:
        sizes.repeats = sizes.pipeline_repeats = sizes.overlay_repeats = max(1, args.repeats)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    configure_cpu_threads(DistInfo(), device)
    only = set(args.only) if args.only else None
    other_work = OtherWork()
    results: dict[str, Any] = {
        "machine": machine_info(device),
        "sizes": vars(sizes) | {"quick": args.quick},
        "figures": {},
    }
    with tempfile.TemporaryDirectory(prefix="cam_bench_") as scratch:
        base = Path(args.data) if args.data else Path(scratch)
        needs_data = only is None or bool(only & {"pipeline", "decode", "memory", "split"})
        root = build_data(base / "data", sizes) if needs_data else base / "data"
        cache_dir = base / "cache"
        jobs: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("pipeline", "pipeline_efficiency", lambda: pipeline_efficiency(root, cache_dir, sizes, device)),
            ("decode", "decode_speedup", lambda: decode_speedup(root, cache_dir, sizes)),
            ("cam", "cam_overhead", lambda: cam_overhead(sizes, device)),
            ("backbones", "backbones", lambda: backbones(sizes, device)),
            ("methods", "cam_methods", lambda: cam_methods(sizes, device)),
            ("overlay", "overlay_speed", lambda: overlay_speed(sizes, device)),
            ("sweep", "box_sweep", lambda: box_sweep(sizes)),
            ("evaluate", "evaluation_speed", lambda: evaluation_speed(sizes, device)),
            ("memory", "memory", lambda: memory(root, sizes)),
            ("split", "thread_split", lambda: thread_split(root, sizes, device)),
            ("report", "report", lambda: report(base, sizes, device)),
        ]
        for short, name, job in jobs:
            if only is not None and short not in only:
                continue
            logger.info("measuring %s", name)
            start = time.perf_counter()
            try:
                results["figures"][name] = job()
            except Exception as err:  # one broken figure must not lose the others
                logger.exception("%s failed", name)
                results["figures"][name] = {"value": None, "error": f"{type(err).__name__}: {err}"}
            results["figures"][name]["seconds"] = round(time.perf_counter() - start, 1)
    try:
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    share = other_work.share()
    results["machine"]["other_processes_cpu_share"] = None if share is None else round(share, 3)
    out = Path(args.out)
    results["measured"] = list(results["figures"])
    if only is not None:
        kept = keep_previous(out / "results.json", results)
        if kept:
            logger.info("kept from the previous %s: %s", out / "results.json", ", ".join(kept))
        order = [name for _, name, _ in jobs]
        results["figures"] = dict(
            sorted(
                results["figures"].items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)
            )
        )
    results["summary"] = summarize(results["figures"], device)
    atomic_write(out / "results.json", json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    # The hand-written notes below the generated table survive a new run.
    previous = out / "results.md"
    notes = previous.read_text(encoding="utf-8").partition(NOTES_HEADING)[1:] if previous.is_file() else ("", "")
    atomic_write(out / "results.md", markdown(results) + ("\n" + "".join(notes) if notes[0] else ""))
    print(markdown(results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
