"""The networks' figures: what the CAM adds to a forward pass, each backbone's training speed, each CAM method."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bench_helpers import Sizes, median_ratio, side_by_side
from bench_train_step import TrainStep, new_model
from CAM_Stanford_Cars.cams import METHODS, compute_cams
from CAM_Stanford_Cars.model import ARCHS
from CAM_Stanford_Cars.sanity import MapChecks
from CAM_Stanford_Cars.scoring import method_maps, score


def cam_overhead(sizes: Sizes, device: torch.device, arch: str = "alexnet", batch: int | None = None) -> dict[str, Any]:
    """Forward with ``return_cam=True`` vs without, inference mode, backbone ``arch``, ``batch`` images
    (``sizes.cam_batch``)."""
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
    """Milliseconds per image of each CAM method (``compute_cams``) on AlexNet-GAP, the methods side by side; and of
    the map checks of the methods table (Average Drop, energy, randomisation) on the model's CAM."""
    model = new_model(196, device).eval()
    # Few images: Score-CAM alone runs 1,024 forward passes per image, over a minute a round on two CPU cores.
    shape = (sizes.cam_method_images, 3, sizes.image_size, sizes.image_size)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    fns = {method: (lambda method=method: compute_cams(model, x, method)) for method in METHODS}
    times = side_by_side(fns, 1, device, warmup=sizes.warmup)
    per_image = {method: 1000 * statistics.median(t) / x.shape[0] for method, t in times.items()}
    # The map checks' own cost (sanity.py) on the model's CAM: one scoring pass with them against one without.
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    loader = [(x, labels, torch.tensor([[0.0, 0.0, sizes.image_size / 2, sizes.image_size / 2]]).repeat(len(x), 1))]
    checks = MapChecks(model, ["cam"])
    passes = {
        with_checks: (lambda sinks=sinks: score(model, loader, {"cam": method_maps("cam")}, sinks, device))
        for with_checks, sinks in (("with", [checks]), ("without", []))
    }
    pass_times = side_by_side(passes, sizes.repeats, device, warmup=sizes.warmup)
    checks_ms = 1000 * (statistics.median(pass_times["with"]) - statistics.median(pass_times["without"])) / len(x)
    return {
        "value": per_image["scorecam"] / per_image["cam"],
        "ms_per_image": per_image,
        "checks_ms_per_image_cam": checks_ms,
        "batch": x.shape[0],
        "image_size": sizes.image_size,
        "arch": "alexnet",
        "device": str(device),
    }
