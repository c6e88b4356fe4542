"""Maps as files, in the layout of clovaai/wsolevaluation: ours written for any tool to read (``--save_maps``), and
anyone's read back and scored on Stanford Cars' boxes (``--score_maps``) through the one scoring pass.

    DIR/<method>/<image_id>.npy        float32 (S, S) in [0, 1], S the evaluation size (224)
    DIR/metadata/<split>/image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt
    DIR/predictions.csv                image_id,class: the checkpoint's top-1 class of each image

``<image_id>`` is the image's path inside the dataset folder, as its annotations name it (``cars_test/00001.jpg``).
A saved map is the one the protocol scores: under ``cam``, :func:`~.localization.normalize_cams` (bilinear);
under ``wsolevaluation``, their bicubic ``scoremap``, rounded to float32 so that its 8-bit image (what their
thresholds cut) is unchanged. Scoring a saved folder with the protocol that wrote it repeats ``--evaluate`` exactly.
See docs/metrics.md.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .atomic_files import atomic_file, atomic_write_text, check_writable
from .dataset import StanfordCarsCAM
from .distributed import DistInfo
from .localization import HitCounts, LocalizationMeter, normalize_cams
from .runtime import default_num_workers
from .scoring import BoxScores, ScoredBatch, score
from .wsolevaluation import WsolevaluationMeter, scoremap

logger = logging.getLogger(__name__)

__all__ = [
    "MapFileError",
    "MapFiles",
    "MapFolder",
    "SavedMaps",
    "check_map_folder",
    "file_maps",
    "image_ids",
    "open_map_folder",
    "read_map",
    "read_predictions",
    "score_map_folder",
    "score_maps",
    "write_metadata",
]


class MapFileError(ValueError):
    """A map file that cannot be scored; its message names the file."""


def image_ids(dataset: StanfordCarsCAM) -> list[str]:
    """Each image's path inside the dataset folder, as its annotations name it (``cars_test/00001.jpg``)."""
    base = Path(dataset.layout.base)
    ids = []
    for path, _ in dataset.samples:
        image_id = Path(os.path.relpath(path, base)).as_posix()
        if image_id.startswith("../") or os.path.isabs(image_id):
            raise ValueError(f"image {path} lies outside the dataset folder {str(base)!r}; it has no image id")
        ids.append(image_id)
    return ids


def _float32_keeping_bytes(scoremap: np.ndarray) -> np.ndarray:
    """``scoremap`` (float64 in [0, 1]) as float32 whose ``uint8(255 * x)`` (wsolevaluation's image) is unchanged:
    the nearest float32, moved one step toward the right side where rounding crossed a level."""
    levels = np.trunc(scoremap * 255)
    out = scoremap.astype(np.float32)
    for _ in range(4):
        got = np.trunc(out.astype(np.float64) * 255)
        if (bad := got != levels).any():
            out[bad] = np.nextafter(out[bad], np.where(got[bad] > levels[bad], -np.inf, np.inf).astype(np.float32))
        else:
            return out
    raise AssertionError("float32 rounding kept crossing an 8-bit level")


class SavedMaps:
    """A sink of the scoring pass: each source's maps of the batch as ``folder/<source>/<image_id>.npy``, normalised
    at the pass's image size as ``protocol`` scores them (the module docstring), each file written atomically; and
    each image's top-1 class, for :meth:`write_index`."""

    def __init__(self, folder: Path, dataset: StanfordCarsCAM, protocol: str = "cam") -> None:
        self.folder, self.dataset, self.protocol = Path(folder), dataset, protocol
        check_writable(self.folder, "--save_maps")  # before the pass
        self.ids = image_ids(dataset)
        self.predicted: list[int] = []

    def normalized(self, maps: Tensor, size: tuple[int, int]) -> np.ndarray:
        maps = maps.detach()
        if self.protocol == "cam":
            return normalize_cams(maps, size).numpy()
        raw = maps.double().numpy()
        return np.stack([_float32_keeping_bytes(scoremap(cam, (size[1], size[0]))) for cam in raw])

    def update(self, batch: ScoredBatch) -> None:
        self.predicted += batch.logits_cpu.argmax(dim=1).tolist()
        for source, maps in batch.maps.items():
            for k, array in enumerate(self.normalized(maps, batch.image_size)):
                path = self.folder / source / f"{self.ids[batch.first + k]}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path, "wb") as handle:
                    np.save(handle, array.astype(np.float32), allow_pickle=False)

    def write_index(self) -> None:
        """wsolevaluation's metadata of the split (:func:`write_metadata`) and ``predictions.csv``."""
        write_metadata(self.folder, self.dataset, self.ids)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["image_id", "class"])
        writer.writerows(zip(self.ids, (self.dataset.classes[k] for k in self.predicted)))
        atomic_write_text(self.folder / "predictions.csv", out.getvalue())


def write_metadata(folder: Path, dataset: StanfordCarsCAM, ids: Sequence[str]) -> Path:
    """wsolevaluation's metadata of ``dataset``'s split under ``folder/metadata/<split>/``; labels are indices into
    the 196 classes. Boxes: ``x0,y0,x1,y1`` in the photo's pixels, 0-based and half-open (``x1 = x0 + width``), the
    convention of their CUB metadata (``x + w``), which their box code reads as it reads CUB's."""
    out = folder / "metadata" / dataset.split
    out.mkdir(parents=True, exist_ok=True)
    labels = [int(dataset.class_ids[label]) for label in dataset.targets]
    sizes = [dataset.original_size(i) for i in range(len(dataset))]
    files = {
        "image_ids.txt": list(ids),
        "class_labels.txt": [f"{image_id},{label}" for image_id, label in zip(ids, labels)],
        "image_sizes.txt": [f"{image_id},{w},{h}" for image_id, (w, h) in zip(ids, sizes)],
        "localization.txt": [
            f"{image_id},{','.join(f'{v:.17g}' for v in box)}"
            for image_id, box in zip(ids, dataset.boxes)
            if not np.isnan(box).any()
        ],
    }
    for name, lines in files.items():
        atomic_write_text(out / name, "".join(f"{line}\n" for line in lines))
    return out


def read_map(path: Path, size: int, protocol: str = "cam") -> tuple[Tensor, bool]:
    """The map in ``path`` as the pass scores it: (S, S), min-max normalised; float32 under ``cam``, float64 under
    ``wsolevaluation`` (as their ``t2n``). A map of another size is resized as their inference does (bicubic:
    OpenCV's under ``wsolevaluation``, torch's under ``cam``). Returns the map and whether it was constant (scored
    as all zeros, as wsolevaluation's ``normalize_scoremap`` does).

    Raises:
        MapFileError: a file that cannot be read, holds pickled objects (refused unread: ``allow_pickle=False``),
            is not a 2-D array of numbers, or holds NaN or infinite values.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise MapFileError(f"map {path} holds pickled objects; refused unread (save maps as float arrays)") from err
        raise MapFileError(f"map {path} is not a .npy array ({err})") from err
    except (OSError, EOFError) as err:
        raise MapFileError(f"cannot read map {path} ({type(err).__name__}: {err})") from err
    if not isinstance(array, np.ndarray) or array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        shape = getattr(array, "shape", None)
        raise MapFileError(f"map {path} is not a 2-D array of numbers (shape {shape}, dtype {array.dtype})")
    if np.iscomplexobj(array) or not np.isfinite(array).all():
        raise MapFileError(f"map {path} holds NaN, infinite or complex values; fix the tool that wrote it")
    dtype = np.float32 if protocol == "cam" else np.float64
    if array.shape == (size, size) and array.min() == 0 and array.max() == 1:  # already a scoremap: as it is
        return torch.from_numpy(array.astype(dtype)), False
    cam = array.astype(np.float64)
    if cam.shape != (size, size):
        if protocol == "cam":
            cam = F.interpolate(torch.from_numpy(cam)[None, None], size=(size, size), mode="bicubic")[0, 0].numpy()
        else:
            cam = scoremap(cam, (size, size))  # their resize and normalize_scoremap
    low, high = cam.min(), cam.max()
    if high == low:
        return torch.zeros((size, size), dtype=torch.float32 if protocol == "cam" else torch.float64), True
    return torch.from_numpy(((cam - low) / (high - low)).astype(dtype)), False


def file_maps(model: Any, batch: ScoredBatch) -> Tensor:
    """The scoring pass's source for maps read from files: the loader's."""
    return batch.given["maps"]


class MapFiles(Dataset):
    """Items for the scoring pass from a folder of maps: ``(image, label, box, index, {"maps", "logits",
    "constant"})``. The image is the dataset's view with ``images`` (for the report), else empty; the box is in the
    S x S view's pixels; ``logits`` log-probabilities, the predicted class certain (the extra last column: none
    known, or a class outside the selection)."""

    def __init__(
        self, folder: Path, dataset: StanfordCarsCAM, ids: Sequence[str], predicted: Tensor, protocol: str, images: bool
    ) -> None:
        self.folder, self.dataset, self.ids, self.predicted = folder, dataset, list(ids), predicted
        self.protocol, self.images = protocol, images

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        path = self.folder / f"{self.ids[index]}.npy"
        scoremap, constant = read_map(path, self.dataset.image_size, self.protocol)
        if self.images:
            image, label, box = self.dataset[index]
        else:
            image, label, box = torch.empty(0), self.dataset.targets[index], self.dataset.get_box(index)
        # Log-probabilities: the predicted class certain; the last column for none known or one outside the selection.
        logits = torch.full((len(self.dataset.classes) + 1,), -1e4)
        logits[int(self.predicted[index])] = 0.0
        return image, label, box, index, {"maps": scoremap, "logits": logits, "constant": constant}


def read_predictions(path: Path, ids: Sequence[str], classes: Sequence[str], class_ids: Sequence[int]) -> Tensor:
    """(N,) the predicted class of each image (an index into ``classes``; -1 for a class outside them) from a CSV of
    ``image_id,class`` rows, the class by name or by index into the 196; a header row is optional."""
    full_index = {int(full): k for k, full in enumerate(class_ids)}
    by_name = {name: k for k, name in enumerate(classes)}
    wanted = {image_id: k for k, image_id in enumerate(ids)}
    predicted = torch.full((len(ids),), -2, dtype=torch.long)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read --predictions {str(path)!r} ({err})") from err
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (number == 1 and [cell.strip() for cell in row[:2]] == ["image_id", "class"]):
            continue
        if len(row) != 2:
            raise ValueError(f"--predictions {path}:{number}: expected 'image_id,class', got {','.join(row)!r}")
        image_id, guess = row[0].strip(), row[1].strip()
        if ".." in PurePosixPath(image_id).parts:
            raise ValueError(f"--predictions {path}:{number}: image id {image_id!r} has '..' in it; refused")
        if image_id not in wanted:
            continue
        if guess in by_name:
            predicted[wanted[image_id]] = by_name[guess]
        elif guess.isdigit():
            predicted[wanted[image_id]] = full_index.get(int(guess), -1)
        else:
            predicted[wanted[image_id]] = -1  # a class the selection leaves out: a wrong top-1
    if (missing := int((predicted == -2).sum())) > 0:
        first = [ids[i] for i in torch.nonzero(predicted == -2).flatten()[:3].tolist()]
        raise ValueError(
            f"--predictions {path} has no row for {missing} of {len(ids)} images (e.g. {', '.join(first)})"
        )
    return predicted


def check_map_folder(folder: Path, ids: Sequence[str]) -> int:
    """Refuse a folder that lacks maps for some of ``ids`` (one line: how many, the first few); returns how many
    ``.npy`` files in it are for other images (ignored)."""
    if not folder.is_dir():
        raise ValueError(f"--score_maps {str(folder)!r} is not a folder of maps")
    for image_id in ids:
        if ".." in PurePosixPath(image_id).parts or PurePosixPath(image_id).is_absolute():
            raise ValueError(f"image id {image_id!r} has '..' in it or is absolute; refused")
    missing = [image_id for image_id in ids if not (folder / f"{image_id}.npy").is_file()]
    if missing:
        hint = ""
        if subfolders := sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "metadata"):
            hint = f"; maps saved by --save_maps are one folder per method: try {str(folder / subfolders[0])!r}"
        raise ValueError(
            f"--score_maps {str(folder)!r} has no map for {len(missing)} of {len(ids)} images "
            f"(e.g. {', '.join(f'{m}.npy' for m in missing[:3])}){hint}"
        )
    expected = {f"{image_id}.npy" for image_id in ids}
    return sum(1 for p in folder.rglob("*.npy") if p.relative_to(folder).as_posix() not in expected)


class _CountConstant:
    """A sink: the images whose map was constant."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids, self.constant = ids, []

    def update(self, batch: ScoredBatch) -> None:
        for k in torch.nonzero(batch.given["constant"]).flatten().tolist():
            self.constant.append(self.ids[batch.first + k])


@dataclass
class MapFolder:
    """A folder of maps matched to the images of a split: what :func:`score_map_folder` scores."""

    folder: Path
    dataset: StanfordCarsCAM
    ids: list[str]
    predicted: Tensor  # (N,) index into dataset.classes; -1: none known or a class outside them
    has_predictions: bool
    n_ignored: int  # .npy files in the folder for other images

    def loader(self, protocol: str, batch_size: int, num_workers: int | None, images: bool = False) -> DataLoader:
        workers = default_num_workers(DistInfo(), torch.device("cpu")) if num_workers is None else num_workers
        items = MapFiles(self.folder, self.dataset, self.ids, self.predicted, protocol, images)
        return DataLoader(items, batch_size=batch_size, num_workers=workers)


def open_map_folder(
    folder: str | os.PathLike,
    root: str | os.PathLike,
    split: str = "test",
    filters: dict[str, Any] | None = None,
    predictions: str | os.PathLike | None = None,
    image_size: int = 224,
) -> MapFolder:
    """The images the split and ``filters`` (``car_type``, ``car_brand``, ``car_production_year``) select, their map
    files in ``folder`` (all there: :func:`check_map_folder`) and the classes ``predictions`` names, checked before
    any map is read."""
    dataset = StanfordCarsCAM(root, split=split, image_size=image_size, return_box=True, **(filters or {}))
    folder, ids = Path(folder), image_ids(dataset)
    ignored = check_map_folder(folder, ids)
    predicted = (
        read_predictions(Path(predictions), ids, dataset.classes, dataset.class_ids)
        if predictions is not None
        else torch.full((len(ids),), -1, dtype=torch.long)
    )
    return MapFolder(folder, dataset, ids, predicted, predictions is not None, ignored)


def score_map_folder(
    maps: MapFolder,
    protocol: str = "cam",
    cam_curve_interval: float = 0.01,
    threshold: float | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: bool = True,
    sinks: Sequence[Any] = (),
    box_threshold: float | None = None,
    meter: HitCounts | None = None,
) -> dict[str, Any]:
    """Score ``maps`` with ``protocol`` through the pass, the files as its source (``"cam"``, and ``"predicted"``
    for sinks that draw the predicted class's map), more ``sinks`` beside the meter (with images in the batches);
    boxes of :meth:`~.scoring.ScoredBatch.boxes` at ``box_threshold``; ``meter``: the protocol's, made here when
    None. Returns the metrics, also written to ``maps.folder/metrics.json``."""
    if meter is None:
        meter = LocalizationMeter() if protocol == "cam" else WsolevaluationMeter(cam_curve_interval)
    constant = _CountConstant(maps.ids)
    score(
        None,
        maps.loader(protocol, batch_size, num_workers, images=bool(sinks)),
        {"cam": file_maps, **({"predicted": file_maps} if sinks else {})},
        [BoxScores(meter), constant, *sinks],
        torch.device("cpu"),
        threshold=box_threshold,
        progress=progress,
        desc="score maps",
    )
    if constant.constant:
        logger.warning(
            "%d of %d maps are constant: scored as all zeros, as wsolevaluation scores them (e.g. %s)",
            len(constant.constant),
            len(maps.ids),
            ", ".join(constant.constant[:3]),
        )
    metrics: dict[str, Any] = meter.compute(threshold)
    if not maps.has_predictions:
        for key in ("top1", "top1_loc", "top1_loc_at_cam_threshold"):
            if key in metrics:
                metrics[key] = None
    metrics["top5"] = None  # a CSV names one class per image
    metrics.update(
        protocol=protocol,
        split=maps.dataset.split,
        maps=maps.folder.name,
        n_maps_ignored=maps.n_ignored,
        cam_threshold_source="--threshold" if threshold is not None else None,
    )
    if protocol == "wsolevaluation":
        metrics["cam_curve_interval"] = cam_curve_interval
    atomic_write_text(maps.folder / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def score_maps(
    folder: str | os.PathLike,
    root: str | os.PathLike,
    split: str = "test",
    *,
    car_type: Any = None,
    car_brand: Any = None,
    car_production_year: Any = None,
    protocol: str = "cam",
    cam_curve_interval: float = 0.01,
    threshold: float | None = None,
    predictions: str | os.PathLike | None = None,
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the maps in ``folder`` (``<image_id>.npy`` per image, any tool's) on the boxes of the images the split and
    filters select, with ``protocol`` (``"cam"`` or ``"wsolevaluation"``), through the scoring pass with the maps as
    its source. Top-1 and Top-1 Loc need ``predictions`` (a CSV of ``image_id,class``); GT-known Loc at
    ``threshold`` when given. Returns the metrics (``--evaluate``'s keys; those it cannot know are None), also
    written to ``folder/metrics.json``."""
    filters = {"car_type": car_type, "car_brand": car_brand, "car_production_year": car_production_year}
    maps = open_map_folder(folder, root, split, filters, predictions, image_size)
    return score_map_folder(maps, protocol, cam_curve_interval, threshold, batch_size, num_workers, progress)
