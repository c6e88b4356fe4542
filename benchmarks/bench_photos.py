"""Your own photos: the command's photos/s against the forward pass alone (the floor) and the peers' per-image loop."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench_helpers import Sizes, median_ratio, side_by_side, sync
from bench_memory import RssSampler
from bench_train_step import new_model
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.model import GAPNet
from CAM_Stanford_Cars.photos import PhotoDataset, PhotoExplainer, find_photos, photo_loader, write_explanations
from CAM_Stanford_Cars.runtime import autocast_context, default_num_workers
from CAM_Stanford_Cars.scoring import chosen_maps, score

NUM_CLASSES = 196
THRESHOLD = 0.2


def write_photos(folder: Path, n: int, wh: tuple[int, int]) -> list[Path]:
    """``n`` JPEGs (quality 90) of ``wh`` pixels: a sky and road, a car-like body, wheels and windows, seeded."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = wh
    paths = []
    for i in range(n):
        sky, road, body = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3))
        image = Image.new("RGB", wh, sky)
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, int(h * 0.6), w, h), fill=road)
        x1, y1 = int(rng.uniform(0.05, 0.3) * w), int(rng.uniform(0.3, 0.45) * h)
        x2, y2 = int(rng.uniform(0.6, 0.95) * w), int(rng.uniform(0.65, 0.8) * h)
        draw.rounded_rectangle((x1, y1, x2, y2), radius=max(2, (y2 - y1) // 4), fill=body)
        draw.rectangle((x1 + (x2 - x1) // 4, y1 - (y2 - y1) // 3, x2 - (x2 - x1) // 4, y1), fill=body)
        r = max(2, (y2 - y1) // 4)
        for cx in (x1 + (x2 - x1) // 5, x2 - (x2 - x1) // 5):
            draw.ellipse((cx - r, y2 - r, cx + r, y2 + r), fill=(20, 20, 20))
        noise = rng.integers(-12, 13, (h, w, 3))  # photo-like texture, so JPEG sizes are realistic
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def peer_colorize(cam: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """The peers' blend: the map upsampled to the photo, min-max to 8 bits, JET colours, 0.5 of each (BGR)."""
    import cv2

    h, w = rgb.shape[:2]
    cam = cv2.resize(cam, (w, h))
    cam = cam - cam.min()
    heat = cv2.applyColorMap(np.uint8(255 * cam / max(float(cam.max()), 1e-12)), cv2.COLORMAP_JET)
    return np.uint8(heat * 0.5 + rgb[:, :, ::-1] * 0.5)


def peer_loop(model: GAPNet, paths: list[Path], out_dir: Path, image_size: int, device: torch.device) -> None:
    """What the peers' command lines do per photo: open, resize, one-image forward with the CAM, upsample, colour
    map, blend, write a JPEG (quality 90)."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        x = np.asarray(Image.fromarray(rgb).resize((image_size, image_size), Image.Resampling.BILINEAR))
        x = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(device)
        with torch.no_grad():
            _, cam = model(x, return_cam=True)
        blended = peer_colorize(cam[0].float().cpu().numpy(), rgb)
        cv2.imwrite(str(out_dir / path.name), blended, [cv2.IMWRITE_JPEG_QUALITY, 90])


def decoded_batches(paths: list[Path], image_size: int, batch: int, device: torch.device) -> list[torch.Tensor]:
    """The photos as the command's loader decodes them, batched, on ``device``: the floor's input."""
    photos = find_photos([str(path) for path in paths])
    dataset = PhotoDataset(photos, image_size)
    inputs = [dataset[i][0] for i in range(len(dataset))]
    return [torch.stack(inputs[i : i + batch]).to(device) for i in range(0, len(inputs), batch)]


def forward_only(model: GAPNet, batches: list[torch.Tensor], device: torch.device) -> None:
    """The scoring pass's forward alone (features under the same autocast, then the head), nothing after it."""
    with torch.no_grad():
        for images in batches:
            with autocast_context(device, True):
                features = model.forward_features(images, check_input=False).float()
            model.forward_head(features).cpu()


def stages(
    model: GAPNet, paths: list[Path], image_size: int, batch: int, out_dir: Path, device: torch.device
) -> dict[str, float]:
    """Where the command's time goes, ms per photo, each stage alone in this process: decode (the loader's items),
    the forward pass alone on the decoded batches, the scoring pass on them (forward, map, boxes, records), the
    overlay drawn, the overlay's JPEG written."""
    photos = find_photos([str(path) for path in paths])
    n = len(photos)
    clock: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        clock[name] = 1000 * (time.perf_counter() - start) / n
        return value

    loader = photo_loader(photos, image_size, 1024, batch, 0)
    batches = timed("decode", lambda: [(images, labels, boxes, ids) for images, labels, boxes, ids, _ in loader])
    timed("forward", lambda: forward_only(model, [images.to(device) for images, *_ in batches], device))
    records: list[Any] = []
    explainer = PhotoExplainer(
        [f"class {k}" for k in range(NUM_CLASSES)], "map", "cam", THRESHOLD, None, records.append
    )
    timed(
        "score",
        lambda: score(model, batches, {"map": chosen_maps("cam", None)}, [explainer], device, threshold=THRESHOLD),
    )
    overlays = timed("overlay", lambda: [record.overlay() for record in records])
    out_dir.mkdir(parents=True, exist_ok=True)
    timed("jpeg", lambda: [image.save(out_dir / f"{i}.jpg", quality=90) for i, image in enumerate(overlays)])
    return {name: round(ms, 2) for name, ms in clock.items()}


def photos(base: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Photos/s of the command (``write_explanations``: decode, scoring pass, overlays, CSV, files), of the forward
    pass alone on the same photos in memory at the same batch size (the floor), and of the peers' per-image loop.

    ``value`` is the command at its defaults (``--num_workers 0``); ``with_workers`` the same with the loader workers
    the other figures use."""
    folder = base / "photos"
    paths = write_photos(folder / "in", sizes.photos, sizes.image_wh)
    model = new_model(NUM_CLASSES, device).eval()
    names = [f"class {k}" for k in range(NUM_CLASSES)]
    workers = default_num_workers(DistInfo(), device)
    batch, s = sizes.photo_batch, sizes.image_size
    memory = decoded_batches(paths, s, batch, device)
    out = folder / "out"

    def command(num_workers: int) -> Callable[[], None]:
        def run() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            found = find_photos([str(folder / "in")])
            done = write_explanations(
                model,
                names,
                s,
                found,
                out,
                threshold=THRESHOLD,
                batch_size=batch,
                num_workers=num_workers,
                device=device,
            )
            if done != len(paths):
                raise RuntimeError(f"the command explained {done} of {len(paths)} photos")

        return run

    fns = {
        "command": command(0),  # the command's default, --num_workers 0
        "command_workers": command(workers),
        "floor": lambda: forward_only(model, memory, device),
        "peer_loop": lambda: peer_loop(model, paths, folder / "peer", s, device),
    }
    times = side_by_side(fns, sizes.repeats, device)
    rates = {name: len(paths) / statistics.median(t) for name, t in times.items()}
    return {
        "value": median_ratio(times["command"], times["floor"]),
        "with_workers": median_ratio(times["command_workers"], times["floor"]),
        "command_vs_peer_loop": median_ratio(times["peer_loop"], times["command"]),
        "photos_per_s": rates,
        "seconds_by_round": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "stages_ms_per_photo": stages(model, paths, s, batch, folder / "stages", device),
        "photos": len(paths),
        "photo_wh": list(sizes.image_wh),
        "image_size": s,
        "batch": batch,
        "loader_workers": workers,
        "method": "cam",
        "arch": "alexnet (untrained)",
        "device": str(device),
    }


def photos_memory(base: Path, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Resident memory while the command (``write_explanations``) explains many small photos: sampled twenty times
    along the way. ``value``: the growth from the first tenth to the end, MiB (flat: a few MiB of noise)."""
    folder = base / "photos_memory"
    paths = write_photos(folder / "in", sizes.memory_photos, sizes.memory_photo_wh)
    model = new_model(NUM_CLASSES, device).eval()
    names = [f"class {k}" for k in range(NUM_CLASSES)]
    step = max(1, len(paths) // 20)
    samples: list[tuple[int, float]] = []  # (photos explained, resident MiB)
    seen = 0

    def sample(record: Any) -> None:
        nonlocal seen
        seen += 1
        if seen % step == 0:
            samples.append((seen, round(RssSampler.rss("self") / 2**20, 1)))

    start = time.perf_counter()
    done = write_explanations(
        model,
        names,
        sizes.memory_image_size,
        find_photos([str(folder / "in")]),
        folder / "out",
        threshold=THRESHOLD,
        batch_size=sizes.photo_batch,
        device=device,
        consumers=[sample],
    )
    seconds = time.perf_counter() - start
    if done != len(paths):
        raise RuntimeError(f"the command explained {done} of {len(paths)} photos")
    shutil.rmtree(folder, ignore_errors=True)
    tenth = samples[max(0, len(samples) // 10 - 1)][1]
    return {
        "value": samples[-1][1] - tenth,
        "rss_mib_by_photos": samples,
        "photos": len(paths),
        "photo_wh": list(sizes.memory_photo_wh),
        "image_size": sizes.memory_image_size,
        "batch": sizes.photo_batch,
        "photos_per_s": len(paths) / seconds,
        "device": str(device),
    }
