"""Stanford Cars for class activation maps: :class:`StanfordCarsCAM`, the face of ``data/``.

Unfiltered on torchvision's layout it gives torchvision's samples and classes; details: ``docs/data.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.datasets import VisionDataset

from .data.common import (
    SPLITS,
    DatasetNotFoundError,
    FilterValue,
    PathLike,
)
from .data.download import download_stanford_cars
from .data.images import (
    ImageCache,
    checked_boxes,
    load_view,
    open_image,
)
from .data.layouts import (
    find_layout,
    read_class_names,
    read_split,
    root_path,
)
from .data.names import (
    FILTER_NAMES,
    ClassToIdx,
    select_classes,
)

__all__ = ["StanfordCarsCAM", "stratified_split"]

logger = logging.getLogger(__name__)


class StanfordCarsCAM(VisionDataset):
    """Stanford Cars, filtered by brand, body type and year, with boxes, for class activation maps.

    Args:
        root: Folder holding Stanford Cars in any layout :func:`find_layout` accepts.
        split: ``"train"`` or ``"test"``.
        car_type, car_brand, car_production_year: Body type(s), brand(s), year(s) to keep
            (``"Sedan"``, ``["BMW", "Land Rover"]``, ``2012``), or None for all.
        download_datasets: If ``root`` holds no readable copy, fetch one (:func:`download_stanford_cars`).
        generate_img_for_cam: Items hold the view twice, the second (a copy) to draw the CAM on.
        image_size: Side S of the square images returned.
        augment: Random crop and flip (torch's global RNG); None means True for ``"train"`` only.
        return_box: Append the car's box to every item.
        cache_dir: Folder for an :class:`ImageCache` of decoded pixels; items are the same without it.

    Items: ``(image, label)`` or ``(image_predict, image_visualize, label)``, ``+ (box,)`` if ``return_box``:
    image (3, S, S) float32 in [0, 1], label int in 0..K-1, box (4,) float32 ``[x1, y1, x2, y2]`` in [0, S].
    Attributes: ``classes`` (kept, renumbered 0..K-1), ``class_to_idx`` (both ways), ``class_ids`` (indices
    in the full 196), ``samples``, ``targets``, ``boxes`` (N, 4) float64 original pixels, ``layout``.
    """

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Mapping[str, Any],
        root: PathLike | None = None,
        split: str = "test",
        source: PathLike = "the checkpoint",
        flag: str = "--root_datasets_dir DIR",
        **kwargs: Any,
    ) -> StanfordCarsCAM:
        """The un-augmented ``split`` with a checkpoint dict's filters, image size and classes, under ``root`` or
        (``None``) the data folder the checkpoint records. ``source`` and ``flag`` name the file and the option in
        errors.

        Raises:
            ValueError: If the data does not give the checkpoint's classes, or no folder is given or recorded.
            DatasetNotFoundError: If no Stanford Cars is under the folder.
        """
        recorded = root is None
        if recorded and (root := checkpoint.get("data_root") or (checkpoint.get("args") or {}).get("root")) is None:
            raise ValueError(f"{str(source)!r} does not record its data folder; pass it with {flag}")
        filters = {name: checkpoint.get(name) for name in FILTER_NAMES}
        try:
            dataset = cls(
                root, split=split, image_size=int(checkpoint["image_size"]), augment=False, **filters, **kwargs
            )
        except DatasetNotFoundError as err:
            relative = (
                "" if os.path.isabs(root) else "; a relative path there is relative to the folder training ran in"
            )
            where = f"{str(root)!r} is the data folder recorded in {str(source)!r}{relative}. " if recorded else ""
            raise DatasetNotFoundError(
                err.problem, f"{where}Pass the folder holding the data the checkpoint was trained on: {flag}."
            ) from None
        if list(dataset.classes) != list(checkpoint["class_names"]):
            raise ValueError(
                f"the data under {str(root)!r} gives classes {list(dataset.classes)[:4]}... but the checkpoint was "
                f"trained on {list(checkpoint['class_names'])[:4]}...; "
                f"point {flag.split()[0]} at the data it was trained on"
            )
        return dataset

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
        root_path(root)  # a None root would otherwise fail deep inside VisionDataset
        super().__init__(root)
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: expected 'train' or 'test'")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"image_size={image_size!r}: expected a positive whole number such as 224")
        self.split, self.image_size, self.return_box = split, int(image_size), bool(return_box)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.generate_img_for_cam = bool(generate_img_for_cam)
        self.cache = ImageCache(cache_dir) if cache_dir is not None else None
        self.filters = {"car_type": car_type, "car_brand": car_brand, "car_production_year": car_production_year}
        if download_datasets:
            download_stanford_cars(self.root)
        self.layout = find_layout(self.root, splits=(split,))
        all_names, annotations = read_class_names(self.layout), read_split(self.layout, split)
        counts = np.bincount(annotations.labels, minlength=len(all_names))
        self.class_ids = select_classes(
            all_names, car_type, car_brand, car_production_year, image_counts=counts, split=split
        )
        self.classes = [all_names[index] for index in self.class_ids]
        self.class_to_idx = ClassToIdx(self.classes)
        keep = np.flatnonzero(np.isin(annotations.labels, self.class_ids))
        new_labels = np.searchsorted(
            self.class_ids, annotations.labels[keep]
        )  # class_ids ascend: full-set -> kept label
        if keep.size == 0 and any(value is not None for value in self.filters.values()):
            raise ValueError(
                f"the filters {self._filter_text()} keep {len(self.classes)} classes ({', '.join(self.classes[:5])}"
                f"{', ...' if len(self.classes) > 5 else ''}) but the {split} split under {os.fspath(self.root)!r} "
                f"has no image of them"
            )
        self.samples: list[tuple[str, int]] = [(annotations.paths[i], int(label)) for i, label in zip(keep, new_labels)]
        self.targets: list[int] = [label for _, label in self.samples]
        self.boxes: np.ndarray = checked_boxes(
            self.layout.annotation_files[split], [path for path, _ in self.samples], annotations.boxes[keep]
        )
        logger.debug(
            "StanfordCarsCAM %s: %d images of %d classes from %s",
            split,
            len(self.samples),
            len(self.classes),
            self.layout.base,
        )

    def _filter_text(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self.filters.items() if value is not None) or "(none)"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """``(image, label)``, ``(image_predict, image_visualize, label)``, each ``+ (box,)`` if ``return_box``."""
        path, label = self.samples[index]
        image, box = load_view(path, self.boxes[index], self.image_size, self.augment, self.cache)
        # A copy, so that drawing on the visualisation never changes the network's input.
        item: tuple[Any, ...] = (image, image.clone(), label) if self.generate_img_for_cam else (image, label)
        return (*item, box) if self.return_box else item

    def original_box(self, index: int) -> torch.Tensor:
        """The box of sample ``index`` in its file's pixels: (4,) float32, 0-based half-open."""
        return torch.as_tensor(self.boxes[index], dtype=torch.float32)

    def original_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of sample ``index``'s file, from its header."""
        with open_image(self.samples[index][0]) as image:
            return image.size

    def get_box(self, index: int) -> torch.Tensor:
        """The box of sample ``index`` in the un-augmented S x S view: (4,) float32 in [0, S] (augmented:
        ``return_box``)."""
        width, height = self.original_size(index)
        scale = np.array([self.image_size / width, self.image_size / height] * 2)
        return torch.as_tensor(
            self.boxes[index] * scale, dtype=torch.float32
        )  # boxes were clipped to the image on loading

    def extra_repr(self) -> str:
        return (
            f"Split: {self.split}\nLayout: {self.layout.kind} at {self.layout.base}\nClasses: {len(self.classes)}\n"
            f"Filters: {self._filter_text()}\nImage size: {self.image_size}, augment: {self.augment}\n"
            f"Cache: {self.cache.folder if self.cache is not None else None}"
        )


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices per class into sorted ``(train, val)``: each class gives ``round(n_c * val_fraction)``
    images to validation, at least one and never all when it has two or more (each class learned and checked)."""
    generator, targets = torch.Generator().manual_seed(seed), np.asarray(targets, dtype=np.int64)
    train_idx, val_idx = [], []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        members = members[torch.randperm(len(members), generator=generator).numpy()]
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx += members[:n_val].tolist()
        train_idx += members[n_val:].tolist()
    return sorted(train_idx), sorted(val_idx)
