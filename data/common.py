"""Names every part of ``data/`` shares: path and filter types, splits, layouts, the mirror, errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

PathLike = str | os.PathLike
FilterValue = str | int | Sequence[str | int] | None

SPLITS = ("train", "test")
LAYOUTS = ("torchvision", "kaggle", "car_ims")
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")  # 1-based, inclusive in the .mat files

KAGGLE_HANDLE = "rickyyyyyyy/torchvision-stanford-cars"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"
DOWNLOAD_EXTRA_HINT = "pip install 'CAM_Stanford_Cars[download]'  (or: pip install kagglehub)"


class DatasetError(Exception):
    """Stanford Cars could not be found, read, downloaded or loaded."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No readable layout under ``root``; ``problem`` is the message without the advice on getting the data."""

    def __init__(self, problem: str, how_to: str = "") -> None:
        super().__init__(f"{problem} {how_to}".strip())
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers send errors back pickled
        return type(self), (self.problem, str(self)[len(self.problem) :].strip())


class AnnotationError(DatasetError, ValueError):
    """A ``.mat`` annotation file is unreadable or lacks a variable or field."""


class ImageLoadError(DatasetError, OSError):
    """An image file could not be decoded."""


class MissingImageError(ImageLoadError, FileNotFoundError):
    """An image named by the annotations is not on disk."""


class DownloadError(DatasetError, RuntimeError):
    """Fetching Stanford Cars from the mirror failed, or what came back is not complete."""
