"""Scoring figures: evaluation against plain inference, and the HTML report on the demo set and on 8,041 images."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench_helpers import Sizes, median_ratio, side_by_side
from bench_train_step import new_model
from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.data.class_names import STANFORD_CARS_CLASS_NAMES
from CAM_Stanford_Cars.data.names import select_classes
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.demo import DEMO_FILTERS
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.evaluation import evaluate
from CAM_Stanford_Cars.model import create_model
from CAM_Stanford_Cars.report import write_report
from CAM_Stanford_Cars.runtime import autocast_context, default_num_workers
from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars


def evaluation_speed(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """``evaluation.evaluate`` (forward, CAM, all thresholds, metrics) vs plain inference, same batches in memory."""
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
            "evaluate": lambda: evaluate(model, batches, device, amp=True, channels_last=channels_last),
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
    seconds = [b - a for a, b in itertools.pairwise(runs)][1 if repeats else 0 :]
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
