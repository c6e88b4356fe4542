"""A synthetic Stanford Cars: real on-disk format, drawn cars, true boxes.

:func:`write_synthetic_stanford_cars` writes a small Stanford Cars that readers cannot tell from
the real one by its files: torchvision's layout (or Kaggle's, or the original ``car_ims/`` +
``cars_annos.mat``), ``.mat`` files written with ``scipy.io.savemat`` as MATLAB struct arrays
shaped like the devkit's, all 196 real class names in ``cars_meta.mat``, and JPEGs of realistic
sizes for a chosen set of classes.

Each image is a cluttered background that does not depend on the class (gradients, random
shapes, noise) with one drawn "car" on it, at a random position and scale, facing left or right.
The car's looks depend on its class (:func:`car_look`): the silhouette follows the body type in
the class name (sedan, coupe, convertible, hatchback, wagon, SUV, van, pickup, or a low sports
car for names without a type) and the colour, stripe, window count, proportions and wheels are
drawn from a hash of the name. Its tight box is written into the annotations, so a network can
learn the classes and a CAM can be scored on where the cars are.

Example:
    >>> from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars
    >>> from CAM_Stanford_Cars.dataset import StanfordCarsCAM
    >>> root = write_synthetic_stanford_cars("synthetic_cars", n_train_per_class=20, n_test_per_class=5)
    >>> StanfordCarsCAM(root, car_brand="BMW", car_type="Sedan", car_production_year=2012).classes
    ['BMW ActiveHybrid 5 Sedan 2012', 'BMW 3 Series Sedan 2012']
"""

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
from typing import Any, Union

import numpy as np
from PIL import Image, ImageDraw

from .data.class_names import STANFORD_CARS_CLASS_NAMES
from .data.names import parse_class_name

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

LAYOUTS = ("torchvision", "kaggle", "car_ims")
MARKER_FILE = "SYNTHETIC.txt"

# Meta order. The two BMW 2012 sedans make the seed README's filter (BMW, Sedan, 2012) keep two
# classes; the other BMW 2012 and the other sedan check that the filter drops them.
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

# Silhouette of each family in unit coordinates (u along the car, front at u=1; v down, wheels'
# bottom at v=1): aspect (length / height), top of the lower body, roof height, cabin start and
# end along u, and how far the rear and front pillars slope.
_FAMILIES: dict[str, dict[str, float]] = {
    "sedan": dict(aspect=2.9, body_top=0.45, roof=0.10, c0=0.22, c1=0.76, rear=0.10, front=0.15),
    "coupe": dict(aspect=3.1, body_top=0.50, roof=0.20, c0=0.26, c1=0.72, rear=0.18, front=0.15),
    "convertible": dict(aspect=3.1, body_top=0.50, roof=0.50, c0=0.30, c1=0.70, rear=0.0, front=0.08),
    "hatchback": dict(aspect=2.4, body_top=0.45, roof=0.08, c0=0.08, c1=0.72, rear=0.05, front=0.16),
    "wagon": dict(aspect=3.0, body_top=0.45, roof=0.10, c0=0.05, c1=0.76, rear=0.02, front=0.14),
    "suv": dict(aspect=2.2, body_top=0.42, roof=0.02, c0=0.05, c1=0.80, rear=0.02, front=0.08),
    "van": dict(aspect=2.1, body_top=0.45, roof=0.0, c0=0.0, c1=0.88, rear=0.0, front=0.10),
    "pickup": dict(aspect=2.8, body_top=0.45, roof=0.06, c0=0.36, c1=0.72, rear=0.0, front=0.10),
    "sports": dict(aspect=3.3, body_top=0.55, roof=0.26, c0=0.35, c1=0.70, rear=0.16, front=0.20),
}
_FAMILY_OF_TYPE = {
    "Sedan": "sedan", "Coupe": "coupe", "Convertible": "convertible", "Hatchback": "hatchback",
    "Wagon": "wagon", "SUV": "suv", "Minivan": "van", "Van": "van", "Cargo Van": "van",
    "Passenger Van": "van", "Wagon Van": "van", "Crew Cab": "pickup", "Extended Cab": "pickup",
    "Regular Cab": "pickup", "Club Cab": "pickup", "Quad Cab": "pickup", "SuperCab": "pickup",
}


# Salt of the looks' hash: of the first 3000 tried, the one that keeps the body colours of
# DEFAULT_CLASS_NAMES farthest apart (every pair at least ~98 apart in RGB).
_LOOK_SALT = "1897:"


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


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def car_look(class_name: str) -> CarLook:
    """The looks of a class's cars: silhouette from its body type, the rest from a hash of its name."""
    digest = hashlib.sha256((_LOOK_SALT + class_name).encode("utf-8")).digest()
    unit = [byte / 255.0 for byte in digest]
    body_type = parse_class_name(class_name).body_type
    family = _FAMILY_OF_TYPE.get(body_type, "sports") if body_type else "sports"
    hue = unit[0]
    return CarLook(
        family=family,
        color=_hsv(hue, 0.55 + 0.4 * unit[1], 0.5 + 0.45 * unit[2]),
        accent=_hsv(hue + 0.5, 0.3 + 0.6 * unit[3], 0.35 + 0.6 * unit[4]),
        glass=_hsv(0.55 + 0.1 * unit[5], 0.3 + 0.4 * unit[6], 0.15 + 0.25 * unit[7]),
        hub=_hsv(unit[8], 0.5 * unit[9], 0.4 + 0.6 * unit[10]),
        n_windows=1 + int(unit[11] * 2.999),
        stripe=unit[12] > 0.5,
        aspect=_FAMILIES[family]["aspect"] * (0.9 + 0.2 * unit[13]),
        wheel_radius=0.13 + 0.05 * unit[14],
    )


def _jitter(color: tuple[int, int, int], factor: float) -> tuple[int, int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in color) + (255,)  # type: ignore[return-value]


def draw_car(look: CarLook, length: int, rng: np.random.Generator, facing_right: bool = True) -> Image.Image:
    """One car on a transparent RGBA canvas ``length`` pixels long; its alpha is its extent."""
    aspect = look.aspect * rng.uniform(0.96, 1.04)
    height = max(8, int(round(length / aspect)))
    shape = _FAMILIES[look.family]
    light = rng.uniform(0.85, 1.15)  # lighting varies per image, never per class
    body, accent, glass, hub = (_jitter(c, light) for c in (look.color, look.accent, look.glass, look.hub))
    canvas = Image.new("RGBA", (length, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    w, h = length - 1, height - 1

    def pt(u: float, v: float) -> tuple[float, float]:
        return (u if facing_right else 1.0 - u) * w, v * h

    top = shape["body_top"]
    bottom = 0.86
    lower = [pt(0.0, top + 0.06), pt(0.03, top), pt(0.96, top + 0.04), pt(1.0, top + 0.12),
             pt(1.0, bottom - 0.04), pt(0.97, bottom), pt(0.03, bottom), pt(0.0, bottom - 0.04)]
    draw.polygon(lower, fill=body)
    c0, c1, roof = shape["c0"], shape["c1"], shape["roof"]
    if look.family == "convertible":
        draw.polygon([pt(c0, top), pt(c0 + 0.04, top - 0.08), pt(c1 - 0.1, top - 0.08), pt(c1 - 0.06, top)], fill=(25, 25, 25, 255))
        draw.polygon([pt(c1 - 0.06, top), pt(c1 - 0.02, top - 0.22), pt(c1, top - 0.22), pt(c1 + 0.01, top)], fill=glass)
    else:
        cabin = [pt(c0, top + 0.01), pt(c0 + shape["rear"], roof), pt(c1 - shape["front"], roof), pt(c1, top + 0.01)]
        draw.polygon(cabin, fill=body)
        # Windows: the cabin shrunk inwards, cut by pillars into n_windows panes.
        inset_v = 0.06 * (top - roof) + 0.03
        g_top, g_bottom = roof + inset_v, top - 0.02
        span0 = c0 + shape["rear"] * (g_bottom - g_top) / max(top - roof, 1e-3) + 0.03
        span1 = c1 - 0.03
        panes = look.n_windows
        edges = np.linspace(span0, span1, panes + 1)
        for i in range(panes):
            u0, u1 = edges[i] + 0.008, edges[i + 1] - 0.008
            rear_slope = shape["rear"] * (g_bottom - g_top) / max(top - roof, 1e-3) if i == 0 else 0.0
            front_slope = shape["front"] * (g_bottom - g_top) / max(top - roof, 1e-3) if i == panes - 1 else 0.0
            draw.polygon([pt(u0, g_bottom), pt(u0 + rear_slope * 0.5, g_top), pt(u1 - front_slope, g_top), pt(u1, g_bottom)], fill=glass)
    if look.family == "pickup":
        draw.polygon([pt(0.03, top + 0.02), pt(c0 - 0.02, top + 0.02), pt(c0 - 0.02, top + 0.07), pt(0.03, top + 0.07)], fill=(30, 30, 30, 255))
    if look.stripe:
        draw.polygon([pt(0.02, 0.62), pt(0.99, 0.62), pt(0.99, 0.68), pt(0.02, 0.68)], fill=accent)
    else:
        draw.polygon([pt(0.02, bottom - 0.08), pt(0.98, bottom - 0.08), pt(0.98, bottom - 0.04), pt(0.02, bottom - 0.04)], fill=accent)
    draw.polygon([pt(0.95, top + 0.1), pt(1.0, top + 0.12), pt(1.0, top + 0.2), pt(0.95, top + 0.2)], fill=(250, 245, 200, 255))
    draw.polygon([pt(0.0, top + 0.08), pt(0.03, top + 0.08), pt(0.03, top + 0.18), pt(0.0, top + 0.18)], fill=(200, 20, 20, 255))
    radius = min(look.wheel_radius * h * 1.15, 0.16 * w)
    for u in (0.2, 0.8):
        cx, cy = pt(u, 1.0)[0], h - radius
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(28, 28, 28, 255))
        r_hub = radius * 0.55
        draw.ellipse([cx - r_hub, cy - r_hub, cx + r_hub, cy + r_hub], fill=hub)
    return canvas


def draw_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A cluttered RGB scene that carries no information about any class.

    Its colours are muted (greys with a slight tint), as streets and showrooms mostly are, so
    the painted car stands out the way real cars do against their surroundings.
    """

    def muted() -> np.ndarray:
        return np.clip(rng.uniform(40, 215) + rng.uniform(-25, 25, 3), 0, 255)

    sky_top, sky_bottom, ground_top, ground_bottom = (muted() for _ in range(4))
    horizon = int(rng.uniform(0.3, 0.7) * height)
    t = np.linspace(0.0, 1.0, max(horizon, 1))[:, None]
    sky = sky_top * (1 - t) + sky_bottom * t
    t = np.linspace(0.0, 1.0, max(height - horizon, 1))[:, None]
    ground = ground_top * (1 - t) + ground_bottom * t
    column = np.concatenate([sky, ground])[:height]  # (H, 3)
    array = np.broadcast_to(column[:, None, :], (height, width, 3)).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 20))):
        color = tuple(int(c) for c in muted())
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.02, 0.35) * width, y0 + rng.uniform(0.02, 0.35) * height
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=color)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=color)
        elif kind == 2:
            draw.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, 8)))
        else:
            points = [(float(x), float(y)) for x, y in zip(rng.uniform(x0, x1, 3), rng.uniform(y0, y1, 3))]
            draw.polygon(points, fill=color)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def render_image(class_name: str, size: tuple[int, int], rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One synthetic photo of a car of ``class_name``.

    Args:
        class_name: A Stanford Cars class name.
        size: ``(width, height)`` of the image.
        rng: The image's generator (background, placement, facing, lighting).

    Returns:
        ``(image, box)``: an RGB image and the car's tight box ``(left, top, right, bottom)`` in
        0-based half-open pixels (``bbox_x1 = left + 1``, ``bbox_x2 = right`` in the annotations).
    """
    width, height = size
    image = draw_background(rng, width, height)
    look = car_look(class_name)
    length = int(rng.uniform(0.55, 0.9) * width)
    length = max(16, min(length, int(0.9 * height * look.aspect), width))
    car = draw_car(look, length, rng, facing_right=bool(rng.integers(0, 2)))
    x = int(rng.integers(0, width - car.width + 1))
    y = int(rng.integers(0, height - car.height + 1))
    image.paste(car, (x, y), car)
    left, top, right, bottom = car.getchannel("A").getbbox()  # type: ignore[misc]
    return image, (x + left, y + top, x + right, y + bottom)


def _struct(records: Sequence[dict[str, Any]], fields: Sequence[tuple[str, Any]]) -> np.ndarray:
    """A 1xN MATLAB struct array; numbers as 1x1 matrices of the given dtype, strings as char arrays."""
    array = np.zeros((1, len(records)), dtype=[(name, object) for name, _ in fields])
    for i, record in enumerate(records):
        for name, dtype in fields:
            value = record[name]
            array[0, i][name] = np.array([value]) if dtype is str else np.array([[value]], dtype=dtype)
    return array


def _savemat(path: Path, variables: dict[str, Any]) -> None:
    import scipy.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as handle:
        sio.savemat(handle, variables, do_compression=False, oned_as="row")
        # The header's 116 text bytes hold the writing time; a fixed text makes the same seed
        # give byte-identical files.
        handle.seek(0)
        handle.write(_MAT_HEADER_TEXT)
    os.replace(temporary, path)


_MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, written by CAM_Stanford_Cars.synthetic".ljust(116)


_BOX_FIELDS = [("bbox_x1", np.uint16), ("bbox_y1", np.uint16), ("bbox_x2", np.uint16), ("bbox_y2", np.uint16)]


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    chosen = list(class_names)
    if not chosen:
        raise ValueError("class_names is empty; pass None for the default selection")
    for name in chosen:
        if name not in STANFORD_CARS_CLASS_NAMES:
            close = difflib.get_close_matches(name, STANFORD_CARS_CLASS_NAMES, n=3)
            raise ValueError(f"{name!r} is not a Stanford Cars class name" + (f"; did you mean {close}?" if close else ""))
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"class_names repeats a name: {chosen}")
    return chosen


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
    """Write a small Stanford Cars under ``root/stanford_cars`` in a real layout.

    ``layout="torchvision"`` writes ``devkit/{cars_meta.mat, cars_train_annos.mat,
    cars_test_annos.mat}``, ``cars_test_annos_withlabels.mat``, ``cars_train/00001.jpg...`` and
    ``cars_test/00001.jpg...``, which ``torchvision.datasets.StanfordCars(root)`` reads.
    ``"kaggle"`` nests the images (``cars_train/cars_train/``) and puts the devkit in
    ``car_devkit/devkit/``. ``"car_ims"`` writes ``car_ims/000001.jpg...`` and one
    ``cars_annos.mat`` with ``relative_im_path``, ``class``, ``test`` and the boxes. The meta file
    always holds all 196 real class names; only ``class_names`` get images, in shuffled order
    as in the real files. A ``SYNTHETIC.txt`` marks the folder; a synthetic folder already there
    is replaced, anything else is refused.

    Args:
        root: Folder to pass as ``root`` to the readers.
        class_names: Real class names that get images; :data:`DEFAULT_CLASS_NAMES` if None.
        n_train_per_class: Train images per class.
        n_test_per_class: Test images per class.
        image_size: Typical ``(width, height)``; each image's sides vary by up to ``size_jitter``.
        seed: Everything drawn follows from it.
        layout: ``"torchvision"``, ``"kaggle"`` or ``"car_ims"``.
        size_jitter: Relative spread of image sides (the real images vary in size).
        n_grayscale: The first this many train images are written as grayscale JPEGs.
        n_cmyk: The next this many train images are written as CMYK JPEGs.
        quality: JPEG quality.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: For an unknown layout or class name, or negative counts.
        FileExistsError: If ``root/stanford_cars`` exists and is not synthetic.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    chosen = _check_class_names(DEFAULT_CLASS_NAMES if class_names is None else class_names)
    for name, value in (("n_train_per_class", n_train_per_class), ("n_test_per_class", n_test_per_class),
                        ("n_grayscale", n_grayscale), ("n_cmyk", n_cmyk)):
        if int(value) < 0:
            raise ValueError(f"{name}={value!r}: expected a count >= 0")
    if n_grayscale + n_cmyk > n_train_per_class * len(chosen):
        raise ValueError(f"n_grayscale + n_cmyk = {n_grayscale + n_cmyk} exceeds the {n_train_per_class * len(chosen)} train images")
    if not 0.0 <= size_jitter < 1.0:
        raise ValueError(f"size_jitter={size_jitter!r}: expected a fraction in [0, 1)")
    root = Path(os.path.expanduser(os.fspath(root)))
    target = root / "stanford_cars"
    if (target.exists() or target.is_symlink()) and not (target / MARKER_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a synthetic Stanford Cars; choose another root or remove it")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".stanford_cars.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        _write(staging, chosen, int(n_train_per_class), int(n_test_per_class), image_size, seed, layout,
               size_jitter, int(n_grayscale), int(n_cmyk), quality)
        if target.exists() or target.is_symlink():
            if target.is_symlink():
                target.unlink()
            else:
                shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote a synthetic Stanford Cars (%s layout, %d classes) to %s", layout, len(chosen), target)
    return root


def _write(
    folder: Path, chosen: list[str], n_train: int, n_test: int, image_size: tuple[int, int], seed: int,
    layout: str, size_jitter: float, n_grayscale: int, n_cmyk: int, quality: int,
) -> None:
    label_of = {name: STANFORD_CARS_CLASS_NAMES.index(name) + 1 for name in chosen}  # 1-based, as in the files
    order_rng = np.random.default_rng([seed, 0])
    records: dict[str, list[dict[str, Any]]] = {}
    for split_id, (split, per_class) in enumerate((("train", n_train), ("test", n_test)), start=1):
        jobs = [name for name in chosen for _ in range(per_class)]
        order_rng.shuffle(jobs)
        records[split] = []
        for index, name in enumerate(jobs):
            rng = np.random.default_rng([seed, split_id, index])
            scale = rng.uniform(1.0 - size_jitter, 1.0 + size_jitter, 2) if size_jitter else np.ones(2)
            size = (max(32, int(image_size[0] * scale[0])), max(32, int(image_size[1] * scale[1])))
            image, (left, top, right, bottom) = render_image(name, size, rng)
            mode = "RGB"
            if split == "train" and index < n_grayscale:
                mode = "L"
            elif split == "train" and index < n_grayscale + n_cmyk:
                mode = "CMYK"
            records[split].append(dict(
                image=image.convert(mode) if mode != "RGB" else image, **{"class": label_of[name]},
                bbox_x1=left + 1, bbox_y1=top + 1, bbox_x2=right, bbox_y2=bottom,
            ))
    meta = {"class_names": np.array(STANFORD_CARS_CLASS_NAMES, dtype=object).reshape(1, -1)}
    annotation_fields = _BOX_FIELDS + [("class", np.uint8), ("fname", str)]
    if layout == "car_ims":
        rows: list[dict[str, Any]] = []
        (folder / "car_ims").mkdir(parents=True, exist_ok=True)
        mixed = [(record, 0) for record in records["train"]] + [(record, 1) for record in records["test"]]
        for position in np.random.default_rng([seed, 3]).permutation(len(mixed)):
            record, is_test = mixed[int(position)]
            relative = f"car_ims/{len(rows) + 1:06d}.jpg"
            _save_jpeg(record["image"], folder / relative, quality)
            rows.append(dict(record, relative_im_path=relative, test=is_test))
        fields = [("relative_im_path", str)] + _BOX_FIELDS + [("class", np.uint8), ("test", np.uint8)]
        _savemat(folder / "cars_annos.mat", {"annotations": _struct(rows, fields), **meta})
    else:
        devkit = folder / ("devkit" if layout == "torchvision" else "car_devkit/devkit")
        for split in ("train", "test"):
            images = folder / f"cars_{split}" / (f"cars_{split}" if layout == "kaggle" else "")
            images.mkdir(parents=True, exist_ok=True)
            for index, record in enumerate(records[split], start=1):
                record["fname"] = f"{index:05d}.jpg"
                _save_jpeg(record["image"], images / record["fname"], quality)
        _savemat(devkit / "cars_meta.mat", meta)
        _savemat(devkit / "cars_train_annos.mat", {"annotations": _struct(records["train"], annotation_fields)})
        # The devkit's own test file has no labels; the labelled one sits beside the image folders.
        _savemat(devkit / "cars_test_annos.mat", {"annotations": _struct(records["test"], _BOX_FIELDS + [("fname", str)])})
        _savemat(folder / "cars_test_annos_withlabels.mat", {"annotations": _struct(records["test"], annotation_fields)})
    (folder / MARKER_FILE).write_text(
        f"Synthetic Stanford Cars written by CAM_Stanford_Cars.synthetic ({layout} layout, seed {seed}); "
        f"classes with images: {', '.join(chosen)}.\n"
    )


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality)


def write_tiny_stanford_cars(root: PathLike, layout: str = "torchvision", seed: int = 0) -> Path:
    """A deterministic tiny Stanford Cars for tests: 3 classes, 3 train and 2 test images each, ~160x104.

    Includes one grayscale and one CMYK train image, like the real set.
    """
    return write_synthetic_stanford_cars(
        root, class_names=TINY_CLASS_NAMES, n_train_per_class=3, n_test_per_class=2, image_size=(160, 104),
        seed=seed, layout=layout, n_grayscale=1, n_cmyk=1,
    )
