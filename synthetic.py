"""A synthetic Stanford Cars in the real on-disk format (any of the three layouts), with drawn cars and true boxes.

All 196 real class names go in the meta file; the chosen classes get JPEGs of a car (silhouette from its body type,
colours from a hash of its name) on a class-free cluttered background. See ``docs/data.md``."""

from __future__ import annotations

import colorsys
import difflib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .data.class_names import STANFORD_CARS_CLASS_NAMES
from .data.common import BOX_FIELDS, LAYOUTS, PathLike
from .data.layouts import root_path
from .data.names import parse_class_name

logger = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC.txt"

# Meta order. The two BMW 2012 sedans make the seed's filter (BMW, Sedan, 2012) keep two classes;
# the other BMW 2012 and the other sedan check that the filter drops them.
DEFAULT_CLASS_NAMES: tuple[str, ...] = (
    "Audi S4 Sedan 2007",
    "BMW ActiveHybrid 5 Sedan 2012",
    "BMW 3 Series Sedan 2012",
    "BMW M3 Coupe 2012",
    "Chevrolet Express Cargo Van 2007",
    "Ford F-150 Regular Cab 2012",
    "Jeep Wrangler SUV 2012",
    "Volkswagen Beetle Hatchback 2012",
)
TINY_CLASS_NAMES: tuple[str, ...] = (
    "BMW ActiveHybrid 5 Sedan 2012",
    "BMW 3 Series Sedan 2012",
    "Jeep Wrangler SUV 2012",
)

# Silhouette of each family in unit coordinates (u along the car, front at u=1; v down, wheels' bottom at v=1):
# aspect (length / height), top of the lower body, roof height, cabin start and end along u, pillar slopes.
_FAMILIES: dict[str, tuple[float, float, float, float, float, float, float]] = {
    "sedan": (2.9, 0.45, 0.10, 0.22, 0.76, 0.10, 0.15),
    "coupe": (3.1, 0.50, 0.20, 0.26, 0.72, 0.18, 0.15),
    "convertible": (3.1, 0.50, 0.50, 0.30, 0.70, 0.0, 0.08),
    "hatchback": (2.4, 0.45, 0.08, 0.08, 0.72, 0.05, 0.16),
    "wagon": (3.0, 0.45, 0.10, 0.05, 0.76, 0.02, 0.14),
    "suv": (2.2, 0.42, 0.02, 0.05, 0.80, 0.02, 0.08),
    "van": (2.1, 0.45, 0.0, 0.0, 0.88, 0.0, 0.10),
    "pickup": (2.8, 0.45, 0.06, 0.36, 0.72, 0.0, 0.10),
    "sports": (3.3, 0.55, 0.26, 0.35, 0.70, 0.16, 0.20),
}
_LOOK_SALT = "1897:"  # chosen to keep the body colours of DEFAULT_CLASS_NAMES far apart
_META = {"class_names": np.array(STANFORD_CARS_CLASS_NAMES, dtype=object).reshape(1, -1)}  # a 1x196 cell array
# The .mat header's text holds the writing time; a fixed text makes the same seed give the same bytes.
_MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by CAM_Stanford_Cars.synthetic".ljust(116)


@dataclass(frozen=True)
class CarLook:
    """How the cars of one class are drawn."""

    family: str
    color: tuple[int, int, int]
    accent: tuple[int, int, int]
    glass: tuple[int, int, int]
    hub: tuple[int, int, int]
    n_windows: int
    stripe: bool
    aspect: float
    wheel_radius: float


def car_look(class_name: str) -> CarLook:
    """The looks of a class's cars: silhouette from its body type, the rest from a hash of its name."""

    def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
        return int(r * 255), int(g * 255), int(b * 255)

    unit = [byte / 255.0 for byte in hashlib.sha256((_LOOK_SALT + class_name).encode("utf-8")).digest()]
    kind = (parse_class_name(class_name).body_type or "").lower()  # one of BODY_TYPES, or none: a sports car
    family = "sports" if not kind else "pickup" if kind.endswith("cab") else "van" if kind.endswith("van") else kind
    return CarLook(
        family,
        color=hsv(unit[0], 0.55 + 0.4 * unit[1], 0.5 + 0.45 * unit[2]),
        accent=hsv(unit[0] + 0.5, 0.3 + 0.6 * unit[3], 0.35 + 0.6 * unit[4]),
        glass=hsv(0.55 + 0.1 * unit[5], 0.3 + 0.4 * unit[6], 0.15 + 0.25 * unit[7]),
        hub=hsv(unit[8], 0.5 * unit[9], 0.4 + 0.6 * unit[10]),
        n_windows=1 + int(unit[11] * 2.999),
        stripe=unit[12] > 0.5,
        aspect=_FAMILIES[family][0] * (0.9 + 0.2 * unit[13]),
        wheel_radius=0.13 + 0.05 * unit[14],
    )


def draw_car(look: CarLook, length: int, rng: np.random.Generator, facing_right: bool = True) -> Image.Image:
    """One car on a transparent RGBA canvas ``length`` pixels long; its alpha is its extent."""
    height = max(8, round(length / (look.aspect * rng.uniform(0.96, 1.04))))
    light = rng.uniform(0.85, 1.15)  # lighting varies per image, never per class
    body, accent, glass, hub = (
        (*(int(min(255, max(0, c * light))) for c in color), 255)
        for color in (look.color, look.accent, look.glass, look.hub)
    )
    canvas = Image.new("RGBA", (length, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    w, h = length - 1, height - 1

    def pt(u: float, v: float) -> tuple[float, float]:
        return (u if facing_right else 1.0 - u) * w, v * h

    def quad(u0: float, v0: float, u1: float, v1: float, fill: Any) -> None:
        draw.polygon([pt(u0, v0), pt(u1, v0), pt(u1, v1), pt(u0, v1)], fill=fill)

    _, top, roof, c0, c1, rear, front = _FAMILIES[look.family]
    bottom = 0.86
    draw.polygon(
        [
            pt(0.0, top + 0.06),
            pt(0.03, top),
            pt(0.96, top + 0.04),
            pt(1.0, top + 0.12),
            pt(1.0, bottom - 0.04),
            pt(0.97, bottom),
            pt(0.03, bottom),
            pt(0.0, bottom - 0.04),
        ],
        fill=body,
    )
    if look.family == "convertible":  # the folded top and the windscreen
        draw.polygon(
            [pt(c0, top), pt(c0 + 0.04, top - 0.08), pt(c1 - 0.1, top - 0.08), pt(c1 - 0.06, top)],
            fill=(25, 25, 25, 255),
        )
        draw.polygon(
            [pt(c1 - 0.06, top), pt(c1 - 0.02, top - 0.22), pt(c1, top - 0.22), pt(c1 + 0.01, top)], fill=glass
        )
    else:  # the cabin, then its windows: the cabin shrunk inwards, cut by pillars into n_windows panes
        draw.polygon([pt(c0, top + 0.01), pt(c0 + rear, roof), pt(c1 - front, roof), pt(c1, top + 0.01)], fill=body)
        g_top, g_bottom = roof + 0.06 * (top - roof) + 0.03, top - 0.02
        slant = (g_bottom - g_top) / max(top - roof, 1e-3)
        edges = np.linspace(c0 + rear * slant + 0.03, c1 - 0.03, look.n_windows + 1)
        for i, (u0, u1) in enumerate(zip(edges[:-1] + 0.008, edges[1:] - 0.008)):
            pane_rear = rear * slant if i == 0 else 0.0
            pane_front = front * slant if i == look.n_windows - 1 else 0.0
            draw.polygon(
                [pt(u0, g_bottom), pt(u0 + pane_rear * 0.5, g_top), pt(u1 - pane_front, g_top), pt(u1, g_bottom)],
                fill=glass,
            )
    if look.family == "pickup":
        quad(0.03, top + 0.02, c0 - 0.02, top + 0.07, (30, 30, 30, 255))  # the bed
    quad(*((0.02, 0.62, 0.99, 0.68) if look.stripe else (0.02, bottom - 0.08, 0.98, bottom - 0.04)), accent)
    draw.polygon(
        [pt(0.95, top + 0.1), pt(1.0, top + 0.12), pt(1.0, top + 0.2), pt(0.95, top + 0.2)], fill=(250, 245, 200, 255)
    )
    quad(0.0, top + 0.08, 0.03, top + 0.18, (200, 20, 20, 255))  # tail light
    radius = min(look.wheel_radius * h * 1.15, 0.16 * w)
    for u in (0.2, 0.8):
        cx, cy = pt(u, 1.0)[0], h - radius
        for r, fill in ((radius, (28, 28, 28, 255)), (radius * 0.55, hub)):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)  # not draw.circle: it needs Pillow 10.4
    return canvas


def draw_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A cluttered RGB scene that carries no information about any class, in muted colours as streets mostly are."""

    def muted() -> np.ndarray:
        return np.clip(rng.uniform(40, 215) + rng.uniform(-25, 25, 3), 0, 255)

    sky_top, sky_bottom, ground_top, ground_bottom = (muted() for _ in range(4))
    horizon = int(rng.uniform(0.3, 0.7) * height)
    column = np.concatenate(
        [
            top * (1 - t) + bottom * t
            for top, bottom, t in (  # (H, 3): sky, then ground
                (sky_top, sky_bottom, np.linspace(0.0, 1.0, max(horizon, 1))[:, None]),
                (ground_top, ground_bottom, np.linspace(0.0, 1.0, max(height - horizon, 1))[:, None]),
            )
        ]
    )[:height]
    image = Image.fromarray(np.broadcast_to(column[:, None, :], (height, width, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 20))):
        color = tuple(int(c) for c in muted())
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.02, 0.35) * width, y0 + rng.uniform(0.02, 0.35) * height
        kind = rng.integers(0, 4)
        if kind < 2:
            (draw.ellipse if kind else draw.rectangle)([x0, y0, x1, y1], fill=color)
        elif kind == 2:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, 8)))
        else:
            draw.polygon(
                [(float(x), float(y)) for x, y in zip(rng.uniform(x0, x1, 3), rng.uniform(y0, y1, 3))], fill=color
            )
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def render_image(
    class_name: str, size: tuple[int, int], rng: np.random.Generator
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One synthetic RGB photo of size ``(width, height)`` of a car of ``class_name``, drawn from ``rng``, and the
    car's tight box ``(left, top, right, bottom)``, 0-based half-open."""
    width, height = size
    image = draw_background(rng, width, height)
    look = car_look(class_name)
    length = max(16, min(int(rng.uniform(0.55, 0.9) * width), int(0.9 * height * look.aspect), width))
    car = draw_car(look, length, rng, facing_right=bool(rng.integers(0, 2)))
    x, y = int(rng.integers(0, width - car.width + 1)), int(rng.integers(0, height - car.height + 1))
    image.paste(car, (x, y), car)
    left, top, right, bottom = car.getchannel("A").getbbox()  # type: ignore[misc]
    return image, (x + left, y + top, x + right, y + bottom)


def _savemat(path: Path, records: Sequence[dict[str, Any]] = (), fields: Sequence[str] = (), **extra: Any) -> None:
    """Write ``extra``, after ``records`` as a 1xN struct array ``annotations`` (numbers 1x1, strings char arrays)."""
    import scipy.io as sio  # here, not at the top: it takes longer to import than the CLI needs to start

    if fields:
        rows = [
            tuple(np.array([record[name]], ndmin=1 if isinstance(record[name], str) else 2) for name in fields)
            for record in records
        ]
        extra = {"annotations": np.array([rows], dtype=[(name, object) for name in fields]), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)  # in the staging folder: no temporary file needed
    with open(path, "wb") as handle:
        sio.savemat(handle, extra, do_compression=False, oned_as="row")
        handle.seek(0)
        handle.write(_MAT_HEADER_TEXT)


def write_synthetic_stanford_cars(
    root: PathLike,
    class_names: Sequence[str] | None = None,
    n_train_per_class: int = 8,
    n_test_per_class: int = 4,
    image_size: tuple[int, int] = (700, 450),
    seed: int = 0,
    layout: str = "torchvision",
    size_jitter: float = 0.15,
    n_grayscale: int = 0,
    n_cmyk: int = 0,
    quality: int = 90,
) -> Path:
    """Write a small Stanford Cars under ``root/stanford_cars`` in a real layout; the same seed gives the same bytes.

    A ``SYNTHETIC.txt`` marks the folder: a synthetic folder already there is replaced, anything else refused.

    Args:
        root: Folder to pass as ``root`` to the readers; returned as a Path.
        class_names: Real class names that get images; :data:`DEFAULT_CLASS_NAMES` if None.
        image_size: Typical ``(width, height)``; each side varies by up to ``size_jitter`` (a fraction).
        layout: ``"torchvision"`` (what ``torchvision.datasets.StanfordCars`` reads), ``"kaggle"`` or ``"car_ims"``.
        n_grayscale, n_cmyk: The first train images written as grayscale, then as CMYK JPEGs.

    Raises:
        ValueError: For an unknown layout or class name, or negative counts.
        FileExistsError: If ``root/stanford_cars`` exists and is not synthetic.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    chosen = list(DEFAULT_CLASS_NAMES if class_names is None else class_names)
    if not chosen:
        raise ValueError("class_names is empty; pass None for the default selection")
    for name in chosen:
        if name not in STANFORD_CARS_CLASS_NAMES:
            close = difflib.get_close_matches(name, STANFORD_CARS_CLASS_NAMES, n=3)
            raise ValueError(
                f"{name!r} is not a Stanford Cars class name" + (f"; did you mean {close}?" if close else "")
            )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"class_names repeats a name: {chosen}")
    counts = {
        "n_train_per_class": n_train_per_class,
        "n_test_per_class": n_test_per_class,
        "n_grayscale": n_grayscale,
        "n_cmyk": n_cmyk,
    }
    for name, value in counts.items():
        if int(value) < 0:
            raise ValueError(f"{name}={value!r}: expected a count >= 0")
    if n_grayscale + n_cmyk > n_train_per_class * len(chosen):
        raise ValueError(
            f"n_grayscale + n_cmyk = {n_grayscale + n_cmyk} exceeds the {n_train_per_class * len(chosen)} train images"
        )
    if not 0.0 <= size_jitter < 1.0:
        raise ValueError(f"size_jitter={size_jitter!r}: expected a fraction in [0, 1)")
    root = root_path(root)
    target = root / "stanford_cars"
    if (target.exists() or target.is_symlink()) and not (target / MARKER_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a synthetic Stanford Cars; choose another root or remove it")
    staging = root / f".stanford_cars.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        records = _draw_records(
            chosen, image_size, seed, size_jitter, **{name: int(value) for name, value in counts.items()}
        )
        _write_layout(staging, records, layout, seed, quality)
        (staging / MARKER_FILE).write_text(
            f"Synthetic Stanford Cars written by CAM_Stanford_Cars.synthetic ({layout} layout, "
            f"seed {seed}); classes with images: {', '.join(chosen)}.\n"
        )
        if target.exists() or target.is_symlink():
            (target.unlink if target.is_symlink() else shutil.rmtree)(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote a synthetic Stanford Cars (%s layout, %d classes) to %s", layout, len(chosen), target)
    return root


def _draw_records(
    chosen: list[str],
    image_size: tuple[int, int],
    seed: int,
    size_jitter: float,
    n_train_per_class: int,
    n_test_per_class: int,
    n_grayscale: int,
    n_cmyk: int,
) -> dict[str, list[dict[str, Any]]]:
    """Per split, shuffled: each image with its file name, class and box as the devkit stores them (1-based,
    inclusive)."""
    order_rng = np.random.default_rng([seed, 0])
    records: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for split_id, (split, per_class) in enumerate(zip(records, (n_train_per_class, n_test_per_class)), start=1):
        jobs = [name for name in chosen for _ in range(per_class)]
        order_rng.shuffle(jobs)
        for index, name in enumerate(jobs):
            rng = np.random.default_rng([seed, split_id, index])
            scale = rng.uniform(1.0 - size_jitter, 1.0 + size_jitter, 2) if size_jitter else np.ones(2)
            size = (max(32, int(image_size[0] * scale[0])), max(32, int(image_size[1] * scale[1])))
            image, (left, top, right, bottom) = render_image(name, size, rng)
            if split == "train" and index < n_grayscale + n_cmyk:
                image = image.convert("L" if index < n_grayscale else "CMYK")
            box = np.array([left + 1, top + 1, right, bottom], dtype=np.uint16)
            records[split].append(
                {
                    "image": image,
                    "fname": f"{index + 1:05d}.jpg",
                    **dict(zip(BOX_FIELDS, box)),
                    "class": np.uint8(STANFORD_CARS_CLASS_NAMES.index(name) + 1),
                }
            )
    return records


def _write_layout(folder: Path, records: dict[str, list[dict[str, Any]]], layout: str, seed: int, quality: int) -> None:
    """The JPEGs and .mat files of ``records`` in ``layout``."""
    if layout == "car_ims":  # the original release: both splits interleaved in car_ims/, one cars_annos.mat
        (folder / "car_ims").mkdir(parents=True, exist_ok=True)
        mixed = [dict(record, test=np.uint8(test)) for test, split in enumerate(records.values()) for record in split]
        order = np.random.default_rng([seed, 3]).permutation(len(mixed))
        rows = [dict(mixed[p], relative_im_path=f"car_ims/{n:06d}.jpg") for n, p in enumerate(order, start=1)]
        for row in rows:
            row["image"].save(folder / row["relative_im_path"], "JPEG", quality=quality)
        _savemat(folder / "cars_annos.mat", rows, ("relative_im_path", *BOX_FIELDS, "class", "test"), **_META)
        return
    devkit = folder / ("devkit" if layout == "torchvision" else "car_devkit/devkit")  # Kaggle nests the folders
    for split, split_records in records.items():
        images = folder / f"cars_{split}" / (f"cars_{split}" if layout == "kaggle" else "")
        images.mkdir(parents=True, exist_ok=True)
        for record in split_records:
            record["image"].save(images / record["fname"], "JPEG", quality=quality)
    _savemat(devkit / "cars_meta.mat", **_META)
    _savemat(devkit / "cars_train_annos.mat", records["train"], (*BOX_FIELDS, "class", "fname"))
    # The devkit's own test file has no labels; the labelled one sits beside the image folders.
    _savemat(devkit / "cars_test_annos.mat", records["test"], (*BOX_FIELDS, "fname"))
    _savemat(folder / "cars_test_annos_withlabels.mat", records["test"], (*BOX_FIELDS, "class", "fname"))


def write_tiny_stanford_cars(root: PathLike, layout: str = "torchvision", seed: int = 0) -> Path:
    """A deterministic tiny Stanford Cars for tests: 3 classes, 3 train and 2 test images each, about
    160x104, one grayscale and one CMYK train image among them, as in the real set."""
    return write_synthetic_stanford_cars(
        root,
        class_names=TINY_CLASS_NAMES,
        n_train_per_class=3,
        n_test_per_class=2,
        image_size=(160, 104),
        seed=seed,
        layout=layout,
        n_grayscale=1,
        n_cmyk=1,
    )
