"""Where Stanford Cars lies on disk (three layouts) and its annotation files."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BOX_FIELDS,
    DOWNLOAD_EXTRA_HINT,
    KAGGLE_HANDLE,
    SPLITS,
    AnnotationError,
    DatasetError,
    DatasetNotFoundError,
    PathLike,
)

_TEST_ANNOTATIONS = ("cars_test_annos_withlabels.mat", "cars_test_annos_withlabels (1).mat")


@dataclass(frozen=True)
class Layout:
    """One Stanford Cars copy: ``kind`` (one of ``LAYOUTS``), ``base`` folder, ``meta_file`` (``class_names``),
    and per split its annotations ``.mat`` and the folder its file names are relative to."""

    kind: str
    base: Path
    meta_file: Path
    annotation_files: dict[str, Path]
    image_dirs: dict[str, Path]


@dataclass
class _Candidate:
    """A layout being looked for under ``base``: what was found, what is missing."""

    kind: str
    base: Path
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    layout: Layout | None = None

    def note(self, paths: Sequence[Path], expected: str, is_dir: bool = False) -> Path | None:
        """The first of ``paths`` that exists, noted as found; if none does, ``expected`` is noted as missing."""
        path = next((path for path in paths if (path.is_dir() if is_dir else path.is_file())), None)
        if path is None:
            self.missing.append(expected)
        else:
            self.found.append(str(path) + (os.sep if is_dir else ""))
        return path


def _devkit_candidate(base: Path, splits: Sequence[str]) -> _Candidate:
    """torchvision's layout, or Kaggle's (nested image folders, devkit possibly in car_devkit/)."""
    devkits = (base / "devkit", base / "car_devkit" / "devkit", base / "car_devkit")
    devkit = next((folder for folder in devkits if folder.is_dir()), base / "devkit")
    nested = any((base / f"cars_{split}" / f"cars_{split}").is_dir() for split in SPLITS)
    candidate = _Candidate("kaggle" if nested or devkit != base / "devkit" else "torchvision", base)
    meta = candidate.note([devkit / "cars_meta.mat"], str(base / "devkit" / "cars_meta.mat"))
    annotation_files, image_dirs = {}, {}  # None where something is missing, and then never used
    for split in splits:
        if split == "train":
            places, expected = [devkit / "cars_train_annos.mat"], str(base / "devkit" / "cars_train_annos.mat")
        else:
            places = [folder / name for folder in (base, devkit) for name in _TEST_ANNOTATIONS]
            expected = str(base / "cars_test_annos_withlabels.mat")
            if (devkit / "cars_test_annos.mat").is_file():
                expected += (
                    " (devkit/cars_test_annos.mat has no labels; the test labels come in "
                    "cars_test_annos_withlabels.mat)"
                )
        annotation_files[split] = candidate.note(places, expected)
        image_dirs[split] = candidate.note(
            [base / f"cars_{split}" / f"cars_{split}", base / f"cars_{split}"],
            str(base / f"cars_{split}") + os.sep,
            is_dir=True,
        )
    if not candidate.missing:
        candidate.layout = Layout(candidate.kind, base, meta, annotation_files, image_dirs)  # type: ignore[arg-type]
    return candidate


def _car_ims_candidate(base: Path, splits: Sequence[str]) -> _Candidate:
    candidate = _Candidate("car_ims", base)
    annotations = candidate.note([base / "cars_annos.mat"], str(base / "cars_annos.mat"))
    candidate.note([base / "car_ims"], str(base / "car_ims") + os.sep, is_dir=True)
    if not candidate.missing:
        candidate.layout = Layout(
            "car_ims",
            base,
            annotations,
            dict.fromkeys(splits, annotations),  # type: ignore[arg-type]
            dict.fromkeys(splits, base),
        )
    return candidate


def by_hand(root: Path, handle: str = KAGGLE_HANDLE) -> str:
    """How to place a Kaggle mirror under ``root`` by hand (the end of a sentence)."""
    return (
        f"download https://www.kaggle.com/datasets/{handle} yourself, unzip it and put its stanford_cars folder at "
        f"{root / 'stanford_cars'} so that {root / 'stanford_cars' / 'devkit' / 'cars_meta.mat'} exists"
    )


def root_path(root: PathLike) -> Path:
    """``root`` as an expanded ``Path``; anything but a str or path is refused."""
    if not isinstance(root, str | os.PathLike):
        raise TypeError(
            "root must be the folder holding Stanford Cars (a str or path, e.g. 'stanford_cars_dataset'), "
            f"got {root!r}"[:300]
        )
    return Path(os.path.expanduser(os.fspath(root)))


def find_layout(root: PathLike, splits: Sequence[str] = SPLITS) -> Layout:
    """The first complete Stanford Cars layout in ``root/stanford_cars`` or ``root`` with ``splits`` readable.

    Raises:
        DatasetNotFoundError: If no layout is complete; the message says what was looked for
            where (or what a partial copy lacks) and how to get the data.
    """
    root = root_path(root)
    candidates = [
        look(base, splits)
        for base in (root / "stanford_cars", root)
        if base.is_dir()
        for look in (_devkit_candidate, _car_ims_candidate)
    ]
    if complete := next((candidate.layout for candidate in candidates if candidate.layout is not None), None):
        return complete
    how_to = (
        f"To get the data: pass download_datasets=True (CLI: --download_datasets true) to fetch it from the Kaggle "
        f"mirror {KAGGLE_HANDLE} (needs {DOWNLOAD_EXTRA_HINT}), or {by_hand(root)}."
    )
    if partial := [c for c in candidates if c.found]:
        best = max(partial, key=lambda c: len(c.found))
        raise DatasetNotFoundError(
            f"Stanford Cars under {str(root)!r} is incomplete: found a {best.kind} layout at {best.base} "
            f"({', '.join(best.found)}) but not {', '.join(best.missing)}.",
            how_to,
        )
    raise DatasetNotFoundError(
        f"No Stanford Cars found under {str(root)!r}. Looked in {root / 'stanford_cars'} and {root} for: "
        f"torchvision's layout (devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
        f"cars_train/, cars_test/); Kaggle's layout (cars_train/cars_train/, cars_test/cars_test/ with devkit/ or "
        f"car_devkit/devkit/ and cars_test_annos_withlabels.mat beside them); the original all-in-one layout "
        f"(cars_annos.mat, car_ims/).",
        how_to,
    )


@dataclass(frozen=True)
class SplitAnnotations:
    """One split in file order: image ``paths`` (``str(image_dir / fname)``, as torchvision builds them),
    ``labels`` (N,) int64 0-based, ``boxes`` (N, 4) float64 ``[x1, y1, x2, y2]`` in original pixels, half-open."""

    paths: tuple[str, ...]
    labels: np.ndarray
    boxes: np.ndarray


def _load_variable(path: Path, variable: str) -> Any:
    """``variable`` of a ``.mat`` file; :class:`AnnotationError` if the file is unreadable or lacks it."""
    import scipy.io as sio  # here, not at the top: it takes longer to import than the CLI needs to start

    try:
        mat = sio.loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for a bad file
        raise AnnotationError(
            f"{path} is not a readable MATLAB .mat file ({type(err).__name__}: {err}); re-download it"
        ) from err
    if variable not in mat:
        present = sorted(key for key in mat if not key.startswith("__"))
        raise AnnotationError(f"{path} has no variable {variable!r} (it holds {present}); is it the right file?")
    return mat[variable]


# Cached on the path and the file's identity and version (_file_key): each file is parsed once however many datasets
# read it, and a relative path read from another working folder is another file.
@functools.lru_cache(maxsize=8)
def _read_class_names_cached(path: str, version: tuple[object, ...]) -> tuple[str, ...]:
    return tuple(str(name) for name in np.atleast_1d(_load_variable(Path(path), "class_names")).tolist())


def _image_path(annotation_file: str, image_dir: str, field: str, index: int, name: str) -> str:
    """``image_dir/name``, refused (one line naming the file and the entry) where ``name`` leads outside the image
    folder (``..`` or an absolute path): a dataset's annotations may only open its own images."""
    folder = os.path.normpath(image_dir)
    joined = os.path.normpath(os.path.join(folder, name))
    if os.path.isabs(name) or os.path.commonpath([folder, joined]) != folder:
        raise AnnotationError(
            f"{annotation_file}: entry {index + 1} names the image {name!r} ({field}), outside the image folder "
            f"{folder}; refused: annotations may only name images inside their dataset"
        )
    return str(Path(image_dir) / name)


@functools.lru_cache(maxsize=8)
def _read_annotations_cached(
    path: str, version: tuple[object, ...], image_dir: str, car_ims: bool
) -> dict[str, SplitAnnotations]:
    """The ``annotations`` of a file: per split for ``cars_annos.mat`` (its ``test`` field), else under ``"all"``."""
    name_field = "relative_im_path" if car_ims else "fname"
    number_fields = ("class",) + (("test",) if car_ims else ()) + BOX_FIELDS
    records = np.atleast_1d(_load_variable(Path(path), "annotations"))
    present = records.dtype.names or ()
    if missing := [name for name in (name_field, *number_fields) if name not in present]:
        raise AnnotationError(
            f"{path}: the 'annotations' struct has no field {missing[0]!r} (its fields: {list(present)}); "
            f"is it the right file?"
        )
    numbers = {}
    for name in number_fields:
        try:
            numbers[name] = np.array([int(np.asarray(value).item()) for value in records[name]], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise AnnotationError(f"{path}: field {name!r} holds a value that is not one whole number ({err})") from err
    paths = np.array(
        [_image_path(path, image_dir, name_field, i, str(name)) for i, name in enumerate(records[name_field])],
        dtype=object,
    )
    labels = numbers["class"] - 1
    boxes = (np.stack([numbers[name] for name in BOX_FIELDS], axis=1) - [1, 1, 0, 0]).astype(
        np.float64
    )  # 0-based, half-open
    for array in (labels, boxes):
        array.setflags(write=False)  # shared by every dataset that reads this file
    if not car_ims:
        return {"all": SplitAnnotations(tuple(paths.tolist()), labels, boxes)}
    is_test = numbers["test"].astype(bool)
    return {
        split: SplitAnnotations(tuple(paths[mask].tolist()), labels[mask], boxes[mask])
        for split, mask in (("train", ~is_test), ("test", is_test))
    }


def _file_key(path: Path) -> tuple[str, tuple[object, ...]]:
    """``path`` as given (for messages and image paths) and its file's identity and version: a copy keeps the
    modification time, never the change time."""
    stat = path.stat()
    return str(path), (
        os.path.realpath(path),
        stat.st_dev,
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )


def read_class_names(layout: Layout) -> list[str]:
    """The class names of a layout, in the devkit's order (label 0 first)."""
    return list(_read_class_names_cached(*_file_key(layout.meta_file)))


def read_split(layout: Layout, split: str) -> SplitAnnotations:
    """The annotations of one split, parsed once per file; :class:`AnnotationError` for a bad or mismatched file."""
    path, car_ims = layout.annotation_files[split], layout.kind == "car_ims"
    annotations = _read_annotations_cached(*_file_key(path), str(layout.image_dirs[split]), car_ims)[
        split if car_ims else "all"
    ]
    labels, n_classes = annotations.labels, len(read_class_names(layout))
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise AnnotationError(
            f"{path}: field 'class' holds values {labels.min() + 1}..{labels.max() + 1} but there are "
            f"{n_classes} class names (1..{n_classes})"
        )
    return annotations


def verify_stanford_cars(root: PathLike, num_classes: int = 196, num_train: int = 8144, num_test: int = 8041) -> Layout:
    """The layout of ``root`` once it is checked complete: class and image counts, non-empty boxes, every image file.

    Raises:
        DatasetNotFoundError: If no layout is found.
        DatasetError: Listing every count that differs and the first missing image files.
    """
    layout = find_layout(root)
    names = read_class_names(layout)
    problems = (
        [f"{layout.meta_file} has {len(names)} class names, expected {num_classes}"]
        if len(names) != num_classes
        else []
    )
    for split, expected in (("train", num_train), ("test", num_test)):
        annotations, annotation_file = read_split(layout, split), layout.annotation_files[split]
        missing = [path for path in annotations.paths if not os.path.isfile(path)]
        x1, y1, x2, y2 = annotations.boxes.T
        empty = int(np.sum((x2 <= x1) | (y2 <= y1)))
        n_images = len(annotations.paths)
        checks = (
            (n_images != expected, f"{annotation_file} annotates {n_images} {split} images, expected {expected}"),
            (missing, f"{len(missing)} {split} images are missing, e.g. {missing[:3]}"),
            (empty, f"{empty} {split} boxes in {annotation_file} are empty"),
        )
        problems += [message for failed, message in checks if failed]
    if problems:
        raise DatasetError(f"Stanford Cars at {layout.base} is not complete: " + "; ".join(problems))
    return layout
