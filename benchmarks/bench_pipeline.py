"""Data pipeline figures: training from JPEG files vs from memory, the split of the cores, decode speed."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_helpers import Sizes, median_ratio, rotated, side_by_side, take
from bench_train_step import TrainStep
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.runtime import default_num_workers, make_loader, usable_cpus


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
    return {
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


def thread_split(root: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """End-to-end training images/s from JPEG files for each split of the cores (torch threads, loader workers)."""
    cores = usable_cpus()
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
