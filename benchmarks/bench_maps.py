"""What is done with a map once computed: the overlay against its peers, and the box sweep against SciPy."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench_helpers import Sizes, median_ratio, side_by_side
from CAM_Stanford_Cars.localization import THRESHOLDS, normalize_cams, reference_boxes, sweep_boxes
from CAM_Stanford_Cars.overlay import apply_cam


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
    swept = sweep_boxes(maps, THRESHOLDS, num_threads=1)
    same = bool(np.array_equal(swept, np.stack([reference_boxes(m, THRESHOLDS) for m in maps])))
    return {
        "value": median_ratio(times["scipy_label"], times["sweep"]),
        "images_per_s": {name: sizes.sweep_images / statistics.median(t) for name, t in times.items()},
        "thresholds": len(THRESHOLDS),
        "equal_to_reference": same,
    }
