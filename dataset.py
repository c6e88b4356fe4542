"""Stanford Cars for class activation maps: find the files, parse and filter the classes, load images with boxes.

:class:`StanfordCarsCAM` reads the layouts Stanford Cars is found in today and yields square RGB
tensors in [0, 1] with their labels and, on request, the car's bounding box in the returned
image's pixels:

* torchvision's: ``root/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
  cars_test_annos_withlabels.mat, cars_train/, cars_test/}`` (``root`` may also be the
  ``stanford_cars`` folder itself). On this layout, without filters, the samples (paths, labels,
  order) and class names are exactly those of ``torchvision.datasets.StanfordCars``.
* Kaggle's: ``cars_train/cars_train/*.jpg`` and ``cars_test/cars_test/*.jpg`` with the devkit
  (``devkit/`` or ``car_devkit/devkit/``) and ``cars_test_annos_withlabels.mat`` beside them.
* the original all-in-one release: ``car_ims/*.jpg`` and ``cars_annos.mat`` (whose ``test`` field
  says the split).

Class names read "Make Model Type Year"; :func:`parse_class_name` splits them and the
``car_brand`` / ``car_type`` / ``car_production_year`` filters keep a subset of the classes,
renumbered 0..K-1 in the devkit's order. :func:`summarize` and :func:`format_filter_summary` list
the values present with image counts. :func:`download_stanford_cars` fetches the data from a
Kaggle mirror through ``kagglehub`` when asked to.

Boxes follow the package's convention: float ``[x1, y1, x2, y2]``, 0-based, continuous,
half-open pixel edges in the image the model sees. A Stanford Cars annotation (1-based,
inclusive ``bbox_x1..bbox_x2``) maps to ``x1 = bbox_x1 - 1, x2 = bbox_x2`` in original pixels,
then is scaled (and, on the train split, cropped and flipped) with the image.

Example:
    >>> from CAM_Stanford_Cars.dataset import StanfordCarsCAM
    >>> cars = StanfordCarsCAM("stanford_cars_dataset", split="test", car_brand="BMW",
    ...                        car_type="Sedan", car_production_year=2012, return_box=True)
    >>> image, label, box = cars[0]          # (3, 224, 224) float32 in [0, 1], int, (4,) float32
    >>> cars.class_to_idx[label]              # the class name; cars.class_to_idx[name] -> index
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
import operator
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import VisionDataset

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
FilterValue = Union[str, int, Sequence[Union[str, int]], None]

SPLITS = ("train", "test")
LAYOUTS = ("torchvision", "kaggle", "car_ims")

KAGGLE_HANDLE = "rickyyyyyyy/torchvision-stanford-cars"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"
DOWNLOAD_EXTRA_HINT = "pip install 'CAM_Stanford_Cars[download]'  (or: pip install kagglehub)"

# Makes whose names are two words; every other make is the first word of the class name.
TWO_WORD_MAKES: tuple[str, ...] = ("AM General", "Aston Martin", "Land Rover")
# Body types, matched as a suffix of what follows the make; two-word types come first so that
# "Crew Cab" wins over a bare "Cab" and "Wagon Van" over "Van".
BODY_TYPES: tuple[str, ...] = (
    "Crew Cab", "Extended Cab", "Regular Cab", "Club Cab", "Quad Cab", "Cargo Van", "Passenger Van", "Wagon Van",
    "SuperCab", "Minivan", "Van", "Convertible", "Coupe", "Sedan", "Hatchback", "Wagon", "SUV",
)
FILTER_NAMES = ("car_brand", "car_type", "car_production_year")

# Train-split augmentation (see StanfordCarsCAM): a crop keeps 60-100% of the image area with an
# aspect within 3/4..4/3 of the image's and at least this share of the car's box, else the whole image.
CROP_AREA_RANGE = (0.6, 1.0)
CROP_RELATIVE_ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_MIN_BOX_VISIBLE = 0.75
CROP_ATTEMPTS = 10
FLIP_PROBABILITY = 0.5


# --------------------------------------------------------------------------------------------
# Errors


class DatasetError(Exception):
    """Stanford Cars could not be found, read, downloaded or loaded."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No layout that the reader accepts was found under ``root``.

    Attributes:
        problem: What was looked for and not found, without the advice on getting the data, so
            a caller with other means (the visualize CLI's ``--root``) can give its own.
    """

    def __init__(self, problem: str, how_to: str = "") -> None:
        super().__init__(f"{problem} {how_to}".strip())
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers send errors back pickled
        return type(self), (self.problem, str(self)[len(self.problem):].strip())


class AnnotationError(DatasetError, ValueError):
    """A ``.mat`` annotation file is unreadable or lacks a variable or field."""


class ImageLoadError(DatasetError, OSError):
    """An image file could not be decoded."""


class MissingImageError(ImageLoadError, FileNotFoundError):
    """An image named by the annotations is not on disk."""


class DownloadError(DatasetError, RuntimeError):
    """Fetching Stanford Cars from the mirror failed, or what came back is not complete."""


# --------------------------------------------------------------------------------------------
# Class names


class CarClass(NamedTuple):
    """A Stanford Cars class name split into its parts.

    ``body_type`` is None for the 15 names that carry none (``Acura TL Type-S 2008``,
    ``Chevrolet Corvette ZR1 2012``, ...): their last word before the year is a trim or a model.
    """

    make: str
    model: str
    body_type: str | None
    year: int


def parse_class_name(name: str) -> CarClass:
    """Split a class name "Make Model Type Year" into its parts.

    The make is the first word, or the first two for ``AM General``, ``Aston Martin`` and
    ``Land Rover``. The body type is one of :data:`BODY_TYPES` matched as a whole-word suffix of
    what follows the make (two-word types such as ``Crew Cab`` first), so type words inside a
    model name (``Rolls-Royce Phantom Drophead Coupe Convertible 2012``: type ``Convertible``;
    ``Infiniti G Coupe IPL 2012``: no type) do not count. The year is the last word.

    Args:
        name: A class name such as ``"Land Rover Range Rover SUV 2012"``.

    Returns:
        ``CarClass(make, model, body_type or None, year)``.

    Raises:
        ValueError: If the name does not end in a four-digit year or has no model after the make.

    Example:
        >>> parse_class_name("Chevrolet Silverado 1500 Hybrid Crew Cab 2012")
        CarClass(make='Chevrolet', model='Silverado 1500 Hybrid', body_type='Crew Cab', year=2012)
    """
    words = str(name).split()
    if len(words) < 3 or not re.fullmatch(r"\d{4}", words[-1]):
        raise ValueError(f"class name {name!r} does not read 'Make Model [Type] Year' (expected a four-digit year last)")
    year = int(words[-1])
    words = words[:-1]
    n_make = 1
    lowered = [word.lower() for word in words]
    for make in TWO_WORD_MAKES:
        make_words = make.lower().split()
        if lowered[: len(make_words)] == make_words and len(words) > len(make_words):
            n_make = len(make_words)
            break
    make = " ".join(words[:n_make])
    rest = words[n_make:]
    if not rest:
        raise ValueError(f"class name {name!r} has no model between the make {make!r} and the year")
    body_type: str | None = None
    for candidate in BODY_TYPES:
        type_words = candidate.lower().split()
        # The model must keep at least one word: "Foo Sedan 2012" is model "Sedan", no type.
        if len(rest) > len(type_words) and [w.lower() for w in rest[-len(type_words):]] == type_words:
            body_type = candidate
            rest = rest[: -len(type_words)]
            break
    return CarClass(make=make, model=" ".join(rest), body_type=body_type, year=year)


class ClassToIdx(dict):
    """torchvision's ``class_to_idx`` (name -> index) that also maps an index back to its name.

    Iterating, ``len``, ``items()`` and ``==`` are those of the plain ``{name: index}`` dict, so
    code written for torchvision keeps working; ``class_to_idx[3]`` (any int-like key, such as
    an element of ``logits.argmax(1).tolist()``) gives the name of class 3, as the seed README's
    snippet uses it.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        super().__init__((name, index) for index, name in enumerate(classes))
        self._names = tuple(classes)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        try:
            index = operator.index(key)
        except TypeError:
            raise KeyError(f"{key!r}: expected a class name or an integer class index") from None
        if not 0 <= index < len(self._names):
            raise KeyError(f"class index {index} is out of range 0..{len(self._names) - 1}")
        return self._names[index]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return super().__contains__(key)
        try:
            index = operator.index(key)  # type: ignore[arg-type]
        except TypeError:
            return False
        return 0 <= index < len(self._names)

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._names,))


# --------------------------------------------------------------------------------------------
# Filters


def _filter_values(filter_name: str, value: FilterValue) -> list[str] | list[int] | None:
    """A filter argument as a list of values, or None for "keep all"."""
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if not values:
        raise ValueError(f"{filter_name}=[] keeps nothing; pass None to keep every class")
    if filter_name == "car_production_year":
        years: list[int] = []
        for item in values:
            if isinstance(item, bool):
                raise ValueError(f"{filter_name}={value!r}: expected a year such as 2012, or a list of years")
            try:
                years.append(int(str(item).strip()))
            except ValueError:
                raise ValueError(f"{filter_name}={value!r}: {item!r} is not a year such as 2012") from None
        return years
    texts = [str(item).strip() for item in values]
    if any(not text for text in texts):
        raise ValueError(f"{filter_name}={value!r} holds an empty value; pass None to keep every class")
    return texts


def _word_pattern(text: str) -> re.Pattern[str]:
    """Case-insensitive whole-word match: ``BMW`` never matches ``BMWX``, ``Van`` never ``Minivan``."""
    words = [re.escape(word) for word in text.split()]
    return re.compile(r"(?<![0-9A-Za-z])" + r"\s+".join(words) + r"(?![0-9A-Za-z])", re.IGNORECASE)


def _class_field(car: CarClass, filter_name: str) -> str | int | None:
    if filter_name == "car_brand":
        return car.make
    if filter_name == "car_type":
        return car.body_type
    return car.year


def _matches(car: CarClass, filter_name: str, values: Sequence[str] | Sequence[int]) -> bool:
    field_value = _class_field(car, filter_name)
    if field_value is None:
        return False
    if filter_name == "car_production_year":
        return field_value in values
    return any(_word_pattern(str(value)).search(str(field_value)) for value in values)


@dataclass(frozen=True)
class FilterValueCount:
    """One brand, body type or year: how many classes carry it and how many images they have."""

    value: str | int | None
    n_classes: int
    n_train: int
    n_test: int


def _value_counts(
    cars: Sequence[CarClass], indices: Iterable[int], filter_name: str,
    train_counts: Sequence[int], test_counts: Sequence[int],
) -> list[FilterValueCount]:
    totals: dict[str | int | None, list[int]] = {}
    for index in indices:
        key = _class_field(cars[index], filter_name)
        entry = totals.setdefault(key, [0, 0, 0])
        entry[0] += 1
        entry[1] += int(train_counts[index])
        entry[2] += int(test_counts[index])

    def order(key: str | int | None) -> tuple[int, Any]:
        if key is None:
            return (1, "")
        return (0, key if isinstance(key, int) else str(key).lower())

    return [FilterValueCount(key, *totals[key]) for key in sorted(totals, key=order)]


def _describe_counts(counts: Sequence[FilterValueCount], split: str | None) -> str:
    """``Sedan (3 classes, 120 train images), ...``; without a split, class counts only."""
    parts = []
    for entry in counts:
        label = "(no type)" if entry.value is None else str(entry.value)
        if split is None:
            parts.append(f"{label} ({entry.n_classes} classes)")
        else:
            images = entry.n_train if split == "train" else entry.n_test
            parts.append(f"{label} ({entry.n_classes} classes, {images} {split} images)")
    return ", ".join(parts)


def select_classes(
    class_names: Sequence[str],
    car_type: FilterValue = None,
    car_brand: FilterValue = None,
    car_production_year: FilterValue = None,
    image_counts: Sequence[int] | None = None,
    split: str | None = None,
) -> list[int]:
    """The indices (in ``class_names`` order) of the classes that pass every filter.

    Each filter is None (keep all), one value or a list of values (a class passes when it
    matches any of them). Brands and types match case-insensitively and as whole words
    (``"land rover"`` keeps both Land Rovers, ``"Cab"`` keeps the five ``... Cab`` types but
    not ``SuperCab``, ``"Van"`` keeps the vans but not ``Minivan``); years match exactly.
    Classes without a body type never pass a ``car_type`` filter.

    Args:
        class_names: All class names, in the devkit's order.
        car_type: Body type(s) to keep, e.g. ``"Sedan"`` or ``["Sedan", "Coupe"]``.
        car_brand: Brand(s) to keep, e.g. ``"BMW"``.
        car_production_year: Year(s) to keep, e.g. ``2012``.
        image_counts: Images per class, only used to list what exists when nothing matches.
        split: Name of the split ``image_counts`` counts, for the message.

    Returns:
        The kept indices, ascending.

    Raises:
        ValueError: If a filter value is malformed, or a filter matches no class among those the
            filters before it kept; the message lists the values that do exist, with counts.
    """
    requested = {
        "car_brand": _filter_values("car_brand", car_brand),
        "car_type": _filter_values("car_type", car_type),
        "car_production_year": _filter_values("car_production_year", car_production_year),
    }
    kept = list(range(len(class_names)))
    if all(values is None for values in requested.values()):
        return kept
    cars = [parse_class_name(name) for name in class_names]
    counts = list(image_counts) if image_counts is not None else [0] * len(class_names)
    applied: list[str] = []
    for filter_name in FILTER_NAMES:
        values = requested[filter_name]
        if values is None:
            continue
        survivors = [index for index in kept if _matches(cars[index], filter_name, values)]
        shown = values[0] if len(values) == 1 else values
        if not survivors:
            available = _value_counts(cars, kept, filter_name, counts, counts)
            among = f" among the classes kept by {', '.join(applied)}" if applied else ""
            shown_split = (split or "train") if image_counts is not None else None
            raise ValueError(
                f"{filter_name}={shown!r} matches no class{among}. "
                f"Values of {filter_name} there: {_describe_counts(available, shown_split)}"
            )
        kept = survivors
        applied.append(f"{filter_name}={shown!r}")
    return kept


# --------------------------------------------------------------------------------------------
# Finding the files


@dataclass(frozen=True)
class Layout:
    """Where the files of one Stanford Cars copy are.

    Attributes:
        kind: ``"torchvision"``, ``"kaggle"`` or ``"car_ims"``.
        base: The folder that holds it (``root/stanford_cars`` or ``root``).
        meta_file: The ``.mat`` file with ``class_names``.
        annotation_files: Per split, the ``.mat`` file with its ``annotations``.
        image_dirs: Per split, the folder the annotations' file names are relative to.
    """

    kind: str
    base: Path
    meta_file: Path
    annotation_files: dict[str, Path]
    image_dirs: dict[str, Path]


@dataclass
class _Candidate:
    kind: str
    base: Path
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    layout: Layout | None = None


def _first_existing(paths: Sequence[Path], is_dir: bool = False) -> Path | None:
    for path in paths:
        if (path.is_dir() if is_dir else path.is_file()):
            return path
    return None


def _devkit_candidate(base: Path, splits: Sequence[str]) -> _Candidate:
    """torchvision's layout, or Kaggle's (nested image folders, devkit possibly in car_devkit/)."""
    devkit = _first_existing([base / "devkit", base / "car_devkit" / "devkit", base / "car_devkit"], is_dir=True)
    meta = devkit / "cars_meta.mat" if devkit is not None else None
    nested = any((base / f"cars_{split}" / f"cars_{split}").is_dir() for split in SPLITS)
    kind = "kaggle" if nested or (devkit is not None and devkit != base / "devkit") else "torchvision"
    candidate = _Candidate(kind, base)
    if meta is not None and meta.is_file():
        candidate.found.append(str(meta))
    else:
        candidate.missing.append(str(base / "devkit" / "cars_meta.mat"))
    annotation_files: dict[str, Path] = {}
    image_dirs: dict[str, Path] = {}
    for split in splits:
        if split == "train":
            annos = devkit / "cars_train_annos.mat" if devkit is not None else None
            annos = annos if annos is not None and annos.is_file() else None
            expected = base / "devkit" / "cars_train_annos.mat"
        else:
            roots = [base] + ([devkit] if devkit is not None else [])
            annos = _first_existing([
                folder / name for folder in roots
                for name in ("cars_test_annos_withlabels.mat", "cars_test_annos_withlabels (1).mat")
            ])
            expected = base / "cars_test_annos_withlabels.mat"
        if annos is not None:
            candidate.found.append(str(annos))
            annotation_files[split] = annos
        else:
            note = ""
            if split == "test" and devkit is not None and (devkit / "cars_test_annos.mat").is_file():
                note = " (devkit/cars_test_annos.mat has no labels; the test labels come in cars_test_annos_withlabels.mat)"
            candidate.missing.append(str(expected) + note)
        images = _first_existing([base / f"cars_{split}" / f"cars_{split}", base / f"cars_{split}"], is_dir=True)
        if images is not None:
            candidate.found.append(str(images) + os.sep)
            image_dirs[split] = images
        else:
            candidate.missing.append(str(base / f"cars_{split}") + os.sep)
    if not candidate.missing and meta is not None:
        candidate.layout = Layout(candidate.kind, base, meta, annotation_files, image_dirs)
    return candidate


def _car_ims_candidate(base: Path, splits: Sequence[str]) -> _Candidate:
    candidate = _Candidate("car_ims", base)
    annos = base / "cars_annos.mat"
    images = base / "car_ims"
    for path, ok in ((annos, annos.is_file()), (images, images.is_dir())):
        (candidate.found if ok else candidate.missing).append(str(path) + (os.sep if path is images else ""))
    if not candidate.missing:
        candidate.layout = Layout("car_ims", base, annos, {split: annos for split in splits}, {split: base for split in splits})
    return candidate


def _how_to_get_the_data(root: Path) -> str:
    return (
        f"To get the data: pass download_datasets=True (CLI: --download_datasets true) to fetch it from the Kaggle "
        f"mirror {KAGGLE_HANDLE} (needs {DOWNLOAD_EXTRA_HINT}), or download {KAGGLE_URL} yourself, unzip it and "
        f"put its stanford_cars folder at {root / 'stanford_cars'} so that "
        f"{root / 'stanford_cars' / 'devkit' / 'cars_meta.mat'} exists."
    )


def _root_path(root: PathLike, name: str = "root") -> Path:
    """``root`` as an expanded ``Path``; anything but a str or path is refused by ``name``."""
    if not isinstance(root, str | os.PathLike):
        raise TypeError(
            f"{name} must be the folder holding Stanford Cars (a str or path, e.g. 'stanford_cars_dataset'), "
            f"got {root!r}"[:300]
        )
    return Path(os.path.expanduser(os.fspath(root)))


def find_layout(root: PathLike, splits: Sequence[str] = SPLITS) -> Layout:
    """Detect which Stanford Cars layout ``root`` holds, for the given splits.

    Looks in ``root/stanford_cars`` first, then in ``root`` itself, for torchvision's layout,
    Kaggle's and the original ``car_ims/`` + ``cars_annos.mat``.

    Args:
        root: The dataset root (or the ``stanford_cars`` folder itself).
        splits: The splits that must be readable.

    Returns:
        The first complete :class:`Layout`.

    Raises:
        DatasetNotFoundError: If no layout is complete; the message lists what was looked for
            and where (or, for a partial copy, what is missing) and how to get the data.
    """
    root = _root_path(root)
    bases = [root / "stanford_cars", root]
    candidates: list[_Candidate] = []
    for base in bases:
        if not base.is_dir():
            continue
        for make in (_devkit_candidate, _car_ims_candidate):
            candidate = make(base, splits)
            if candidate.layout is not None:
                return candidate.layout
            candidates.append(candidate)
    partial = [c for c in candidates if c.found]
    if partial:
        best = max(partial, key=lambda c: len(c.found))
        raise DatasetNotFoundError(
            f"Stanford Cars under {str(root)!r} is incomplete: found a {best.kind} layout at {best.base} "
            f"({', '.join(best.found)}) but not {', '.join(best.missing)}.", _how_to_get_the_data(root)
        )
    where = f"{root / 'stanford_cars'} and {root}"
    raise DatasetNotFoundError(
        f"No Stanford Cars found under {str(root)!r}. Looked in {where} for: "
        f"torchvision's layout (devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
        f"cars_train/, cars_test/); Kaggle's layout (cars_train/cars_train/, cars_test/cars_test/ with devkit/ or "
        f"car_devkit/devkit/ and cars_test_annos_withlabels.mat beside them); the original all-in-one layout "
        f"(cars_annos.mat, car_ims/).", _how_to_get_the_data(root)
    )


# --------------------------------------------------------------------------------------------
# Reading the annotations (once per file: cached on path, size and modification time)


@dataclass(frozen=True)
class SplitAnnotations:
    """The annotations of one split, in file order.

    Attributes:
        paths: Image paths, built as torchvision builds them (``str(image_dir / fname)``).
        labels: (N,) int64, 0-based class indices.
        boxes: (N, 4) float64, ``[x1, y1, x2, y2]`` in original pixels, 0-based half-open.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    boxes: np.ndarray


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io as sio

    try:
        return sio.loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for a bad file
        raise AnnotationError(
            f"{path} is not a readable MATLAB .mat file ({type(err).__name__}: {err}); re-download it"
        ) from err


def _struct_columns(mat: Mapping[str, Any], path: Path, variable: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
    if variable not in mat:
        present = sorted(key for key in mat if not key.startswith("__"))
        raise AnnotationError(f"{path} has no variable {variable!r} (it holds {present}); is it the right file?")
    records = np.atleast_1d(mat[variable])
    names = records.dtype.names or ()
    for name in fields:
        if name not in names:
            raise AnnotationError(
                f"{path}: the {variable!r} struct has no field {name!r} (its fields: {list(names)}); is it the right file?"
            )
    return {name: np.atleast_1d(records[name]) for name in fields}


def _int_column(values: np.ndarray, path: Path, name: str) -> np.ndarray:
    try:
        return np.array([int(np.asarray(value).item()) for value in values], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{path}: field {name!r} holds a value that is not one whole number ({err})") from err


def _boxes(columns: Mapping[str, np.ndarray], path: Path) -> np.ndarray:
    x1, y1, x2, y2 = (_int_column(columns[name], path, name) for name in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
    # 1-based inclusive pixel indices -> 0-based half-open edges.
    return np.stack([x1 - 1, y1 - 1, x2, y2], axis=1).astype(np.float64)


def _check_labels(labels: np.ndarray, n_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise AnnotationError(
            f"{path}: field 'class' holds values {labels.min() + 1}..{labels.max() + 1} but there are "
            f"{n_classes} class names (1..{n_classes})"
        )


@functools.lru_cache(maxsize=8)
def _read_class_names_cached(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    mat = _loadmat(Path(path))
    if "class_names" not in mat:
        present = sorted(key for key in mat if not key.startswith("__"))
        raise AnnotationError(f"{path} has no variable 'class_names' (it holds {present}); is it the right file?")
    return tuple(str(name) for name in np.atleast_1d(mat["class_names"]).tolist())


@functools.lru_cache(maxsize=8)
def _read_devkit_split_cached(path: str, mtime_ns: int, size: int, image_dir: str) -> SplitAnnotations:
    mat_path = Path(path)
    columns = _struct_columns(_loadmat(mat_path), mat_path, "annotations",
                              ("fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
    folder = Path(image_dir)
    paths = tuple(str(folder / str(fname)) for fname in columns["fname"])
    labels = _int_column(columns["class"], mat_path, "class") - 1
    return SplitAnnotations(paths, labels, _boxes(columns, mat_path))


@functools.lru_cache(maxsize=8)
def _read_car_ims_cached(path: str, mtime_ns: int, size: int, base: str) -> dict[str, SplitAnnotations]:
    mat_path = Path(path)
    columns = _struct_columns(_loadmat(mat_path), mat_path, "annotations",
                              ("relative_im_path", "class", "test", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
    folder = Path(base)
    paths = np.array([str(folder / str(rel)) for rel in columns["relative_im_path"]], dtype=object)
    labels = _int_column(columns["class"], mat_path, "class") - 1
    is_test = _int_column(columns["test"], mat_path, "test").astype(bool)
    boxes = _boxes(columns, mat_path)
    return {
        split: SplitAnnotations(tuple(paths[mask].tolist()), labels[mask], boxes[mask])
        for split, mask in (("train", ~is_test), ("test", is_test))
    }


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def read_class_names(layout: Layout) -> list[str]:
    """The class names of a layout, in the devkit's order (label 0 first)."""
    return list(_read_class_names_cached(*_file_key(layout.meta_file)))


def read_split(layout: Layout, split: str) -> SplitAnnotations:
    """The annotations of one split of a layout, parsed once per file and cached.

    Raises:
        AnnotationError: If the ``.mat`` file is unreadable, lacks a variable or field, or names
            classes that ``class_names`` does not have.
    """
    if layout.kind == "car_ims":
        annotations = _read_car_ims_cached(*_file_key(layout.annotation_files[split]), str(layout.image_dirs[split]))[split]
    else:
        annotations = _read_devkit_split_cached(*_file_key(layout.annotation_files[split]), str(layout.image_dirs[split]))
    _check_labels(annotations.labels, len(read_class_names(layout)), layout.annotation_files[split])
    return annotations


# --------------------------------------------------------------------------------------------
# Listing what is there


@dataclass(frozen=True)
class FilterSummary:
    """The brands, body types and years of a Stanford Cars copy, with class and image counts."""

    root: str
    layout: str
    n_classes: int
    n_train: int
    n_test: int
    car_brand: tuple[FilterValueCount, ...]
    car_type: tuple[FilterValueCount, ...]
    car_production_year: tuple[FilterValueCount, ...]


def _per_class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels, minlength=n_classes).astype(int).tolist()


def summarize(root: PathLike) -> FilterSummary:
    """List the values ``car_brand``, ``car_type`` and ``car_production_year`` can take, with counts.

    Args:
        root: The dataset root (any layout :func:`find_layout` accepts).

    Returns:
        A :class:`FilterSummary`; :func:`format_filter_summary` prints it as a table.
    """
    layout = find_layout(root)
    names = read_class_names(layout)
    cars = [parse_class_name(name) for name in names]
    train = _per_class_counts(read_split(layout, "train").labels, len(names))
    test = _per_class_counts(read_split(layout, "test").labels, len(names))
    every = range(len(names))
    return FilterSummary(
        root=os.fspath(root), layout=layout.kind, n_classes=len(names), n_train=sum(train), n_test=sum(test),
        car_brand=tuple(_value_counts(cars, every, "car_brand", train, test)),
        car_type=tuple(_value_counts(cars, every, "car_type", train, test)),
        car_production_year=tuple(_value_counts(cars, every, "car_production_year", train, test)),
    )


def format_filter_summary(summary: FilterSummary | PathLike) -> str:
    """A plain-text table of the brands, body types and years present (what ``--list_filters`` prints).

    Args:
        summary: A :class:`FilterSummary`, or a dataset root to summarise.
    """
    if not isinstance(summary, FilterSummary):
        summary = summarize(summary)
    lines = [
        f"Stanford Cars at {summary.root} ({summary.layout} layout): {summary.n_classes} classes, "
        f"{summary.n_train} train and {summary.n_test} test images",
    ]
    for title, entries in (("car_brand", summary.car_brand), ("car_type", summary.car_type),
                           ("car_production_year", summary.car_production_year)):
        width = max([len(title)] + [len("(no type)" if e.value is None else str(e.value)) for e in entries])
        lines += ["", f"{title:<{width}}  {'classes':>7}  {'train':>6}  {'test':>6}"]
        for entry in entries:
            label = "(no type)" if entry.value is None else str(entry.value)
            lines.append(f"{label:<{width}}  {entry.n_classes:>7}  {entry.n_train:>6}  {entry.n_test:>6}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Download


@dataclass(frozen=True)
class Mirror:
    """A Kaggle dataset that serves Stanford Cars, and what a complete copy holds."""

    handle: str = KAGGLE_HANDLE
    num_classes: int = 196
    num_train: int = 8144
    num_test: int = 8041


DEFAULT_MIRROR = Mirror()


def verify_stanford_cars(
    root: PathLike, num_classes: int = 196, num_train: int = 8144, num_test: int = 8041,
) -> Layout:
    """Check that ``root`` holds a complete Stanford Cars: classes, annotations with boxes, every image.

    Args:
        root: The dataset root, or the folder holding the layout.
        num_classes: Class names expected in the meta file.
        num_train: Annotated train images expected.
        num_test: Annotated (labelled) test images expected.

    Returns:
        The verified :class:`Layout`.

    Raises:
        DatasetNotFoundError: If no layout is found.
        DatasetError: Listing every count that differs and the first missing image files.
    """
    layout = find_layout(root)
    problems: list[str] = []
    names = read_class_names(layout)
    if len(names) != num_classes:
        problems.append(f"{layout.meta_file} has {len(names)} class names, expected {num_classes}")
    for split, expected in (("train", num_train), ("test", num_test)):
        annotations = read_split(layout, split)
        if len(annotations.paths) != expected:
            problems.append(f"{layout.annotation_files[split]} annotates {len(annotations.paths)} {split} images, expected {expected}")
        present: dict[str, set[str]] = {}
        missing = []
        for path in annotations.paths:
            folder, name = os.path.split(path)
            if folder not in present:
                present[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if name not in present[folder]:
                missing.append(path)
        if missing:
            problems.append(f"{len(missing)} {split} images are missing, e.g. {missing[:3]}")
        boxes = annotations.boxes
        bad = int(np.sum((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])))
        if bad:
            problems.append(f"{bad} {split} boxes in {layout.annotation_files[split]} are empty")
    if problems:
        raise DatasetError(f"Stanford Cars at {layout.base} is not complete: " + "; ".join(problems))
    return layout


def _is_network_error(err: BaseException) -> bool:
    """True for connection failures, whether raised by the socket layer, urllib3 or requests."""
    names = {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "MaxRetryError",
             "NewConnectionError", "NameResolutionError", "ProtocolError"}
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)):
            return True
        if any(cls.__name__ in names for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


def _place_by_hand(root: Path, mirror: Mirror) -> str:
    return (
        f"To place the files by hand: on a machine with network, download https://www.kaggle.com/datasets/{mirror.handle} "
        f"(the Download button, or `kaggle datasets download {mirror.handle}`), unzip it and put its stanford_cars folder "
        f"at {root / 'stanford_cars'} so that {root / 'stanford_cars' / 'devkit' / 'cars_meta.mat'} exists "
        f"(Kaggle's cars_train/cars_train layout and the original car_ims/ + cars_annos.mat are read too)."
    )


def _find_fetched_layout(fetched: Path) -> Layout:
    """The layout inside what the client returned: at its top, in ``stanford_cars``, or one folder down."""
    places = [fetched]
    if fetched.is_dir():
        places += sorted(path for path in fetched.iterdir() if path.is_dir())
    errors = []
    for place in places:
        try:
            return find_layout(place)
        except DatasetNotFoundError as err:
            errors.append(str(err))
    raise DownloadError(f"the download at {fetched} holds no Stanford Cars layout this reader accepts: {errors[0]}")


def _accepts_keyword(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as a symlink (a copy where links are not allowed), atomically."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.symlink(source.resolve(), temporary, target_is_directory=True)
    except OSError:
        logger.info("Cannot symlink here; copying %s to %s", source, target)
        shutil.copytree(source, temporary)
    os.replace(temporary, target)


def download_stanford_cars(root: PathLike, mirror: Mirror | None = None) -> Path:
    """Make sure ``root`` holds Stanford Cars, fetching it from a Kaggle mirror if it does not.

    A readable copy already under ``root`` (any layout :func:`find_layout` accepts) is used as
    is and nothing is fetched. Otherwise ``kagglehub.dataset_download(mirror.handle)`` fetches
    the mirror (by default ``rickyyyyyyy/torchvision-stanford-cars``, torchvision's layout with
    the devkit's boxes and the labelled test annotations), :func:`verify_stanford_cars` checks it
    (196 classes, 8,144 train and 8,041 test images, annotations with boxes, every image file),
    and it is moved to ``root/stanford_cars`` (or, where the client cannot write there, linked
    from its cache).

    Args:
        root: Where the data should be.
        mirror: The Kaggle dataset and its expected counts; :data:`DEFAULT_MIRROR` if None.

    Returns:
        The folder holding the layout.

    Raises:
        DownloadError: If ``kagglehub`` is not installed, the fetch fails (the message says
            whether the network is unreachable and how to place the files by hand), or what came
            back is incomplete.
    """
    mirror = mirror if mirror is not None else DEFAULT_MIRROR
    root = _root_path(root)
    try:
        layout = find_layout(root)
    except DatasetNotFoundError as err:
        reason = str(err)
    else:
        logger.info("Stanford Cars already at %s (%s layout); nothing to download", layout.base, layout.kind)
        return layout.base
    target = root / "stanford_cars"
    if target.exists() or target.is_symlink():
        raise DownloadError(
            f"{target} exists but is not a readable Stanford Cars ({reason}). Complete it, or move it aside so "
            f"download_datasets=True can put a fresh copy there."
        )
    try:
        import kagglehub
    except ImportError as err:
        raise DownloadError(
            f"download_datasets=True fetches Stanford Cars from Kaggle ({mirror.handle}) through the kagglehub "
            f"package, which is not installed: {DOWNLOAD_EXTRA_HINT}. {_place_by_hand(root, mirror)}"
        ) from err
    root.mkdir(parents=True, exist_ok=True)
    staging = root / ".stanford_cars_download"
    kwargs: dict[str, Any] = {}
    if _accepts_keyword(kagglehub.dataset_download, "output_dir"):
        kwargs["output_dir"] = str(staging)
    logger.info("Downloading Stanford Cars (about 1.9 GB) from Kaggle: %s", mirror.handle)
    try:
        fetched = Path(kagglehub.dataset_download(mirror.handle, **kwargs))
    except Exception as err:  # the client raises requests/urllib3/kagglehub errors alike
        if _is_network_error(err):
            cause = f"Kaggle could not be reached; this machine seems to have no network access ({type(err).__name__}: {err})."
        else:
            cause = (f"kagglehub failed ({type(err).__name__}: {err}); if Kaggle asks for credentials, run "
                     f"kagglehub.login() or set KAGGLE_USERNAME and KAGGLE_KEY.")
        raise DownloadError(f"Could not download Stanford Cars from {mirror.handle}: {cause} {_place_by_hand(root, mirror)}") from err
    layout = _find_fetched_layout(fetched)
    try:
        verify_stanford_cars(layout.base, mirror.num_classes, mirror.num_train, mirror.num_test)
    except DatasetError as err:
        raise DownloadError(
            f"the download from {mirror.handle} at {fetched} is not complete ({err}); retry, or place the files by hand. "
            f"{_place_by_hand(root, mirror)}"
        ) from err
    if _is_within(layout.base, staging):
        os.replace(layout.base, target)
        shutil.rmtree(staging, ignore_errors=True)
    else:
        _link_or_copy(layout.base, target)
    placed = find_layout(root)
    logger.info("Stanford Cars placed at %s (%s layout)", placed.base, placed.kind)
    return placed.base


# --------------------------------------------------------------------------------------------
# Images


def _open_image(path: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError as err:
        raise MissingImageError(f"image file {path} does not exist (it is named in the annotations); re-download the data") from err
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... for a bad file
        raise ImageLoadError(f"cannot read image file {path} ({type(err).__name__}: {err}); it may be truncated or not an image") from err


def _sample_crop(width: int, height: int, box: np.ndarray) -> tuple[float, float, float, float]:
    """A random crop ``(x0, y0, x1, y1)`` in original pixels that keeps most of ``box``; uses torch's RNG."""
    box_area = max((box[2] - box[0]) * (box[3] - box[1]), 0.0)
    for _ in range(CROP_ATTEMPTS):
        area = torch.empty(()).uniform_(*CROP_AREA_RANGE).item()
        log_aspect = torch.empty(()).uniform_(math.log(CROP_RELATIVE_ASPECT_RANGE[0]), math.log(CROP_RELATIVE_ASPECT_RANGE[1])).item()
        aspect = math.exp(log_aspect)
        crop_w = width * math.sqrt(area * aspect)
        crop_h = height * math.sqrt(area / aspect)
        if crop_w > width or crop_h > height:
            continue
        x0 = torch.empty(()).uniform_(0.0, width - crop_w).item()
        y0 = torch.empty(()).uniform_(0.0, height - crop_h).item()
        x1, y1 = x0 + crop_w, y0 + crop_h
        inter_w = min(box[2], x1) - max(box[0], x0)
        inter_h = min(box[3], y1) - max(box[1], y0)
        visible = max(inter_w, 0.0) * max(inter_h, 0.0)
        if box_area > 0 and visible >= CROP_MIN_BOX_VISIBLE * box_area:
            return x0, y0, x1, y1
    return 0.0, 0.0, float(width), float(height)


# An augmented view is a crop keeping at least this share of each side of the image (60% of the
# area at 3/4 of the image's aspect, or at 4/3 for the height); the decoder's reduced scale must
# still leave such a crop S pixels across.
MIN_CROP_SIDE = math.sqrt(CROP_AREA_RANGE[0] * CROP_RELATIVE_ASPECT_RANGE[0])
# The JPEG decoder may return as little as this share of the pixels a view asks for (a 90% side is
# stretched by at most 1.11 in the final resize); most ~700x450 photos then decode at half scale,
# which costs a fifth less than a full decode for a picture that is hard to tell apart.
DRAFT_MIN_SHARE = 0.9


def decode_image(path: str, min_size: tuple[int, int]) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Decode an image to RGB at the coarsest JPEG DCT scale (1, 1/2, 1/4, 1/8) that keeps ``min_size``.

    Args:
        path: Image file.
        min_size: ``(width, height)`` the decoded pixels must at least have; other formats than
            JPEG are decoded whole.

    Returns:
        ``(pixels, scale, (width, height))``: pixels (H', W', 3) uint8 with H' = ceil(height / scale),
        the integer reduction ``scale``, and the file's own size.

    Raises:
        MissingImageError: If the file does not exist.
        ImageLoadError: If it cannot be decoded.
    """
    image = _open_image(path)
    try:
        width, height = image.size
        scale = 1
        if min_size[0] < width and min_size[1] < height:
            drafted = image.draft("RGB", min_size)
            if drafted is not None:
                scale = round(width / drafted[1][2])
        image.load()
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except Exception as err:  # truncated data, bad markers, decompression bombs...
        raise ImageLoadError(f"cannot decode image file {path} ({type(err).__name__}: {err}); it may be truncated or corrupt") from err
    finally:
        image.close()
    return pixels, scale, (width, height)


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of (h, w, 3) uint8 pixels to (size, size, 3) uint8.

    torch's uint8 channels-last kernel: within one grey level of PIL's ``BILINEAR`` resize and about
    four times faster. It runs on a contiguous copy, as a strided view takes a slow path.
    """
    # Always a private copy: the pixels may be a read-only memory map, which torch refuses to wrap.
    chw = torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1)[None]  # (1, 3, h, w)
    out = torch.nn.functional.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()  # (S, S, 3), contiguous: the output keeps the input's channels-last layout


class ImageCache:
    """Decoded, resized uint8 pixels on disk, memory-mapped back on later reads.

    One ``.npy`` file per image and view, named after a hash of the image's absolute path, size in
    bytes, modification time and the view (so a changed file is decoded afresh). Each holds a flat
    uint8 array: a 20-byte header of five little-endian uint32 (the file's width and height, the
    pixels' rows and columns, the decoder's reduction or 0 for a resized view), then the
    (rows, cols, 3) pixels. Files are written atomically, so
    DataLoader workers may fill the cache side by side. A write that would leave less than
    ``min_free_bytes`` on the disk is skipped (the item is then decoded every time).

    Args:
        folder: Where the files go; created if absent.
        min_free_bytes: Free space to leave on the cache's disk.
    """

    HEADER_BYTES = 20

    def __init__(self, folder: PathLike, min_free_bytes: int = 1 << 30) -> None:
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"cache_dir must be a folder (a str or path) or None, got {folder!r}"[:300])
        self.folder = Path(os.path.expanduser(os.fspath(folder)))
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"cache_dir {os.fspath(folder)!r} is a file, not a folder; choose another folder or leave it out")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"cache_dir {os.fspath(folder)!r} cannot be created ({err.strerror or err}); "
                "choose another folder or leave it out"
            ) from None
        # Once, here: otherwise an unwritable cache only shows as a warning per image.
        try:
            fd, probe = tempfile.mkstemp(prefix=".write_probe.", suffix=".tmp", dir=self.folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ValueError(
                f"cache_dir {os.fspath(folder)!r} is not writable ({err.strerror or err}); "
                "choose another folder or leave it out"
            ) from None
        self.min_free_bytes = int(min_free_bytes)
        self._warned_full = False
        self._warned_write = False

    def path_for(self, path: str, view: str) -> Path:
        """The cache file of ``view`` (``"view224"``, ``"base224"``) of image ``path``."""
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{view}"
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def get(self, path: str, view: str) -> tuple[np.ndarray, int, tuple[int, int]] | None:
        """``(pixels (rows, cols, 3) uint8 read-only memory map, scale, (width, height))``, or None if not cached."""
        try:
            flat = np.load(self.path_for(path, view), mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError):
            return None
        if flat.ndim != 1 or flat.shape[0] < self.HEADER_BYTES:
            return None  # not one of ours: decode afresh, and the next put replaces it
        width, height, rows, cols, scale = (int(v) for v in np.frombuffer(flat[: self.HEADER_BYTES].tobytes(), dtype="<u4"))
        if flat.shape[0] != self.HEADER_BYTES + rows * cols * 3:
            return None
        return flat[self.HEADER_BYTES:].reshape(rows, cols, 3), scale, (width, height)

    def put(self, path: str, view: str, pixels: np.ndarray, scale: int, size: tuple[int, int]) -> None:
        """Store ``pixels`` (rows, cols, 3) uint8 of image ``path``: decoded at 1/``scale`` (0: resized), ``size`` its (width, height)."""
        target = self.path_for(path, view)
        header = np.array([size[0], size[1], pixels.shape[0], pixels.shape[1], scale], dtype="<u4").view(np.uint8)
        flat = np.concatenate([header, np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1)])
        if shutil.disk_usage(self.folder).free < flat.nbytes + self.min_free_bytes:
            if not self._warned_full:
                logger.warning("Image cache %s: the disk is nearly full, so new images are not cached", self.folder)
                self._warned_full = True
            return
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, flat, allow_pickle=False)
            os.replace(tmp, target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if not self._warned_write:
                logger.warning("Image cache %s: could not write %s (%s); images that fail to cache are decoded every time",
                               self.folder, target.name, err)
                self._warned_write = True


def _decoded(path: str, min_size: tuple[int, int], view: str, cache: ImageCache | None) -> tuple[np.ndarray, int, tuple[int, int]]:
    """decode_image, through the cache when there is one; the scale follows from the pixels' size."""
    if cache is not None:
        hit = cache.get(path, view)
        if hit is not None:
            return hit
    pixels, scale, size = decode_image(path, min_size)
    if cache is not None:
        cache.put(path, view, pixels, scale, size)
    return pixels, scale, size


def load_view(
    path: str, box: np.ndarray, image_size: int, augment: bool, cache: ImageCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an image and its box into the view the network sees.

    Without augmentation the whole image is resized to ``image_size`` squared. With it, a random
    crop (see :class:`StanfordCarsCAM`) is resized instead and flipped left-right half the time.
    JPEGs are decoded at a reduced DCT scale (PIL draft mode) when the view needs fewer pixels
    (:data:`DRAFT_MIN_SHARE` of them at least): for augmented views, the scale that leaves the
    smallest allowed crop ``image_size`` pixels across, so every crop of an image comes from the
    same decoded pixels. The view is resized with :func:`resize_pixels`; crops are whole decoded pixels.

    With a ``cache``, the un-augmented view (S, S, 3) and the decoded pixels augmented views are
    cropped from are kept as uint8 and reused: the result is the same, bit for bit, as without.

    Args:
        path: Image file.
        box: (4,) ``[x1, y1, x2, y2]`` in original pixels, 0-based half-open.
        image_size: Side S of the square output.
        augment: Random crop and flip (torch's global RNG, so DataLoader workers and
            ``torch.manual_seed`` govern it).
        cache: Where decoded pixels are kept between epochs, or None.

    Returns:
        ``(image, box)``: image (3, S, S) float32 RGB in [0, 1]; box (4,) float32 in its pixels,
        clipped to [0, S].

    Raises:
        MissingImageError: If the file does not exist.
        ImageLoadError: If it cannot be decoded.
    """
    if augment:
        side = math.ceil(DRAFT_MIN_SHARE * image_size / MIN_CROP_SIDE)
        base, scale, (width, height) = _decoded(path, (side, side), f"base{image_size}", cache)
        box = np.clip(np.asarray(box, dtype=np.float64), 0.0, [width, height, width, height])
        x0, y0, x1, y1 = _sample_crop(width, height, box)
        flip = torch.rand(()).item() < FLIP_PROBABILITY
        # The crop in whole decoded pixels (at least one), and back in original pixels for the box.
        rows, cols = base.shape[:2]
        c0, r0 = min(round(x0 / scale), cols - 1), min(round(y0 / scale), rows - 1)
        c1, r1 = max(min(round(x1 / scale), cols), c0 + 1), max(min(round(y1 / scale), rows), r0 + 1)
        pixels = resize_pixels(base[r0:r1, c0:c1], image_size)
        crop = (c0 * scale, r0 * scale, min(c1 * scale, width), min(r1 * scale, height))
    else:
        view = f"view{image_size}"
        hit = cache.get(path, view) if cache is not None else None
        if hit is not None:
            pixels, _, (width, height) = hit
        else:
            side = math.ceil(DRAFT_MIN_SHARE * image_size)
            decoded, _, (width, height) = decode_image(path, (side, side))
            pixels = resize_pixels(decoded, image_size)
            if cache is not None:
                cache.put(path, view, pixels, 0, (width, height))
        box = np.clip(np.asarray(box, dtype=np.float64), 0.0, [width, height, width, height])
        crop, flip = (0.0, 0.0, float(width), float(height)), False
    crop_w, crop_h = crop[2] - crop[0], crop[3] - crop[1]
    # NumPy, not torch, for the per-image arithmetic: torch's intra-op threads cost more than
    # they save on tensors this small, and starve each other on a busy machine.
    scale_xy = np.array([image_size / crop_w, image_size / crop_h] * 2)
    out_box = np.clip((box - np.array([crop[0], crop[1]] * 2)) * scale_xy, 0.0, image_size)
    if flip:
        pixels = pixels[:, ::-1]
        out_box = np.array([image_size - out_box[2], out_box[1], image_size - out_box[0], out_box[3]])
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # (3, S, S)
    np.divide(chw, 255.0, out=chw)
    return torch.from_numpy(chw), torch.as_tensor(out_box, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# The dataset


class StanfordCarsCAM(VisionDataset):
    """Stanford Cars, filtered by brand, body type and year, with boxes, for class activation maps.

    Args:
        root: Folder holding Stanford Cars in torchvision's layout (``root/stanford_cars/...``),
            Kaggle's, or the original ``car_ims/`` + ``cars_annos.mat``; or the ``stanford_cars``
            folder itself.
        split: ``"train"`` or ``"test"``.
        car_type: Body type(s) to keep (``"Sedan"``, ``["Sedan", "Coupe"]``) or None for all.
        car_brand: Brand(s) to keep (``"BMW"``, ``"Land Rover"``) or None for all.
        car_production_year: Year(s) to keep (``2012``, ``[2011, 2012]``) or None for all.
        download_datasets: If ``root`` holds no readable copy, fetch one (see
            :func:`download_stanford_cars`); an existing copy is used and nothing is fetched.
        generate_img_for_cam: Items are ``(image_predict, image_visualize, label)``: the same view
            twice, the second for drawing the CAM on.
        image_size: Side S of the square images returned.
        augment: Random crop and flip; None means True for ``"train"`` and False for ``"test"``.
        return_box: Append the car's box to every item.
        cache_dir: Folder for an :class:`ImageCache` of decoded uint8 pixels, reused across epochs
            and runs (the un-augmented view, or the decoded image augmented views are cropped
            from); items are the same with or without it. None decodes every time.

    Items: ``(image, label)``, or ``(image_predict, image_visualize, label)``, with ``box`` appended
    when ``return_box``. ``image``: (3, S, S) float32 RGB in [0, 1] (grayscale and CMYK files are
    converted). ``label``: int in 0..K-1. ``box``: (4,) float32 ``[x1, y1, x2, y2]`` in the returned
    image's pixels, 0-based half-open, clipped to [0, S].

    Views: without augmentation the whole image is resized to S x S (deterministic). With
    augmentation a crop covering 60-100% of the image's area, with an aspect within 3/4..4/3 of the
    image's, is drawn until one keeps at least 75% of the car's box (10 tries, else the whole image),
    resized to S x S, and flipped left-right with probability 0.5; the box is cropped, scaled,
    clipped and flipped with it, so it stays the visible car's extent. No colour change is applied.
    Randomness comes from torch's global generator.

    Attributes:
        root: As given. ``layout``: the :class:`Layout` found. ``classes``: kept class names,
        renumbered 0..K-1 in the devkit's order. ``class_to_idx``: name -> index, and index -> name.
        ``class_ids``: the kept classes' 0-based indices in the full 196. ``samples``: list of
        ``(path, label)``. ``targets``: the labels. ``boxes``: (N, 4) float64 original-pixel boxes.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        car_type: FilterValue = None,
        car_brand: FilterValue = None,
        car_production_year: FilterValue = None,
        download_datasets: bool = False,
        generate_img_for_cam: bool = False,
        image_size: int = 224,
        augment: bool | None = None,
        return_box: bool = False,
        cache_dir: PathLike | None = None,
    ) -> None:
        _root_path(root)  # a None root would otherwise fail deep inside VisionDataset
        super().__init__(root)
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected 'train' or 'test'")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"image_size={image_size!r}: expected a positive whole number such as 224")
        self.split = split
        self.image_size = int(image_size)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.generate_img_for_cam = bool(generate_img_for_cam)
        self.return_box = bool(return_box)
        self.cache = ImageCache(cache_dir) if cache_dir is not None else None
        self.filters = {"car_type": car_type, "car_brand": car_brand, "car_production_year": car_production_year}

        if download_datasets:
            download_stanford_cars(self.root)
        self.layout = find_layout(self.root, splits=(split,))
        all_names = read_class_names(self.layout)
        annotations = read_split(self.layout, split)
        counts = _per_class_counts(annotations.labels, len(all_names))
        self.class_ids = select_classes(all_names, car_type, car_brand, car_production_year, image_counts=counts, split=split)
        self.classes = [all_names[index] for index in self.class_ids]
        self.class_to_idx = ClassToIdx(self.classes)

        remap = np.full(len(all_names), -1, dtype=np.int64)
        remap[self.class_ids] = np.arange(len(self.class_ids))
        new_labels = remap[annotations.labels]
        keep = np.flatnonzero(new_labels >= 0)
        if keep.size == 0 and any(value is not None for value in self.filters.values()):
            raise ValueError(
                f"the filters {self._filter_text()} keep {len(self.classes)} classes ({', '.join(self.classes[:5])}"
                f"{', ...' if len(self.classes) > 5 else ''}) but the {split} split under {os.fspath(self.root)!r} has no image of them"
            )
        self.samples: list[tuple[str, int]] = [(annotations.paths[i], int(new_labels[i])) for i in keep]
        self.targets: list[int] = [label for _, label in self.samples]
        self.boxes: np.ndarray = annotations.boxes[keep]
        logger.debug("StanfordCarsCAM %s: %d images of %d classes from %s", split, len(self.samples), len(self.classes), self.layout.base)

    def _filter_text(self) -> str:
        given = [f"{name}={value!r}" for name, value in self.filters.items() if value is not None]
        return ", ".join(given) if given else "(none)"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """``(image, label)``, ``(image_predict, image_visualize, label)``, each ``+ (box,)`` if ``return_box``."""
        path, label = self.samples[index]
        image, box = load_view(path, self.boxes[index], self.image_size, self.augment, self.cache)
        if self.generate_img_for_cam:
            # A copy, so that drawing on the visualisation never changes the network's input.
            item: tuple[Any, ...] = (image, torch.from_numpy(image.numpy().copy()), label)
        else:
            item = (image, label)
        if self.return_box:
            item += (box,)
        return item

    def original_box(self, index: int) -> torch.Tensor:
        """The box of sample ``index`` in its file's pixels: (4,) float32, 0-based half-open."""
        return torch.as_tensor(self.boxes[index], dtype=torch.float32)

    def get_box(self, index: int) -> torch.Tensor:
        """The box of sample ``index`` in the un-augmented S x S view: (4,) float32, clipped to [0, S].

        Reads the image's header (not its pixels) for its size. For the box of an augmented view,
        use ``return_box=True``: the crop and flip are drawn per item.
        """
        path = self.samples[index][0]
        image = _open_image(path)
        try:
            width, height = image.size
        finally:
            image.close()
        box = np.clip(self.boxes[index], 0.0, [width, height, width, height])
        scale = np.array([self.image_size / width, self.image_size / height] * 2)
        return torch.as_tensor(box * scale, dtype=torch.float32)

    def extra_repr(self) -> str:
        return "\n".join([
            f"Split: {self.split}",
            f"Layout: {self.layout.kind} at {self.layout.base}",
            f"Classes: {len(self.classes)}",
            f"Filters: {self._filter_text()}",
            f"Image size: {self.image_size}, augment: {self.augment}",
            f"Cache: {self.cache.folder if self.cache is not None else None}",
        ])
