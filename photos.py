"""Explaining your own photos: which class, where the network looks, and the box around it.

    --images items -> photos (:func:`find_photos`) -> :class:`PhotoDataset` (decoded in DataLoader workers,
        or a batch ahead in a thread) -> :func:`~.scoring.score` (one pass, the maps of one source)
        -> :class:`PhotoExplainer` -> records -> the writer, in a thread while the next batch runs: overlays
        (:func:`blend_map`, in 8 bits), ``.npy`` maps, the rows of ``predictions.csv``

A photo is decoded as a person sees it (EXIF orientation applied, any mode to RGB), the whole of it resized to
S x S for the network, and drawn at its own size, the longer side capped at ``max_side``. A photo that cannot be
decoded becomes a :class:`PhotoError`, so the others go on. :func:`explain_photos` is the notebook's face.
"""

from __future__ import annotations

import csv
import functools
import glob
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import Colormap
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from .accel import overlay_kernel
from .atomic_files import atomic_file
from .cams import METHODS
from .checkpoint import PAPER_THRESHOLD, cam_threshold_of, require_entries
from .data.common import ImageLoadError, MissingImageError
from .data.images import DRAFT_MIN_SHARE, open_image, resize_pixels
from .localization import normalize_cams
from .model import load_checkpoint
from .overlay import LUT_SIZE, colormap_lut
from .scoring import ScoredBatch, chosen_maps, score

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_SUFFIXES",
    "TOP_K",
    "Photo",
    "PhotoDataset",
    "PhotoError",
    "PhotoExplainer",
    "PhotoExplanation",
    "PhotoInputError",
    "blend_map",
    "collate_photos",
    "csv_row",
    "decode_photo",
    "display_size",
    "explain_photos",
    "find_photos",
    "photo_loader",
    "write_explanations",
    "write_map",
    "write_overlay",
    "write_predictions",
]

# The file suffixes a folder or a glob pattern contributes; a file named on its own is tried whatever its suffix.
IMAGE_SUFFIXES = frozenset(
    (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
)
TOP_K = 5
CSV_COLUMNS = (
    "file",
    "width",
    "height",
    *(f"{name}_{k}" for k in range(1, TOP_K + 1) for name in ("class", "prob")),
    "x1",
    "y1",
    "x2",
    "y2",
    "threshold",
    "method",
)
BOX_COLOR, TEXT_BACKGROUND = (255, 0, 255), (0, 0, 0)


class PhotoInputError(ValueError):
    """``--images`` items that name no photo, or two photos that would write the same output; one line each."""


@dataclass(frozen=True)
class Photo:
    """A photo to explain: a file (``path``) or an image in memory (``image``), and its output path (relative to the
    output folder, without suffix)."""

    name: str  # what messages and predictions.csv call it: the path as given, or "<image N>"
    output: PurePath
    path: str | None = None
    image: Image.Image | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PhotoError:
    """A photo that could not be decoded: its name and one line saying why."""

    name: str
    reason: str


def _magic_free_base(pattern: str) -> str:
    """The leading folders of a glob pattern that hold no wildcard: the matches' outputs are relative to it."""
    parts = Path(pattern).parts
    base = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return os.path.join(*base) if base else "."


def _matches(item: str) -> list[tuple[str, str]]:
    """``(file, folder its output is relative to)`` of one ``--images`` item; [] when it names nothing."""
    if glob.has_magic(item):
        files = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        base = _magic_free_base(item)
        return [(p, base) for p in files if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    if os.path.isdir(item):
        found = []
        for folder, subfolders, names in os.walk(item):
            subfolders.sort()
            found += [
                os.path.normpath(os.path.join(folder, n)) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES
            ]
        return [(p, item) for p in sorted(found)]
    return [(item, os.path.dirname(item) or ".")] if os.path.exists(item) else []


def find_photos(items: Sequence[str], exclude: str | os.PathLike | None = None) -> list[Photo]:
    """The photos ``items`` name: files, folders (walked recursively, image files only, sorted) and glob patterns.

    A photo's output mirrors where it lies under its item: ``photos/a/b.jpg`` of the folder ``photos`` -> ``a/b``,
    a file on its own -> its name. A file named twice is explained once. Folders and patterns pass over what lies
    under ``exclude`` (the output folder: a rerun does not explain its own overlays).

    Raises:
        PhotoInputError: One line per item that names nothing, per pair of photos that would write the same output,
            or "no images found".
    """
    problems, photos, owners = [], [], {}
    skipped = Path(exclude).resolve() if exclude is not None else None
    for item in items:
        matches = _matches(item)
        if skipped is not None and matches and (glob.has_magic(item) or os.path.isdir(item)):
            matches = [(path, base) for path, base in matches if not Path(path).resolve().is_relative_to(skipped)]
        if not matches:
            what = "pattern" if glob.has_magic(item) else "folder" if os.path.isdir(item) else "path"
            reason = "holds no image files" if what == "folder" else "matches no image files"
            problems.append(f"{what} {item!r} {reason}" if what != "path" else f"{item!r} does not exist")
            continue
        for path, base in matches:
            output = PurePath(Path(os.path.relpath(path, base)).with_suffix("").as_posix())
            owner = owners.get(output)
            if owner is None:
                owners[output] = path
                photos.append(Photo(path, output, path=path))
            elif not os.path.samefile(owner, path):  # the same file named twice is explained once
                problems.append(f"{owner!r} and {path!r} would both write {output.as_posix()!r}; explain them apart")
    if not photos and not problems:
        problems.append("no images found")
    if problems:
        raise PhotoInputError("\n".join(problems))
    return photos


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(w, h)`` of a photo drawn with its longer side at most ``max_side``, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a person sees the photo: transparency over white, 16-bit and 32-bit grey scaled (not clipped) to 8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(pixels * 255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_photo(photo: Photo, image_size: int, max_side: int) -> tuple[Tensor, np.ndarray, tuple[int, int]]:
    """The network's view of ``photo`` and the pixels to draw on.

    A JPEG is decoded at the coarsest DCT scale that keeps both S (``image_size``) and the drawn size; Pillow's
    decompression-bomb limit holds.

    Returns:
        ``(input (3, S, S) float32 RGB in [0, 1], pixels (h, w, 3) uint8 at :func:`display_size`, (width, height)
        of the photo after its EXIF orientation)``.

    Raises:
        ImageLoadError: If the photo cannot be read or decoded.
    """
    image = photo.image if photo.image is not None else open_image(photo.path)
    try:
        swapped = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation: a quarter turn
        width, height = image.size[::-1] if swapped else image.size
        shown = display_size(width, height, max_side)
        side = math.ceil(DRAFT_MIN_SHARE * image_size)
        need = (max(side, shown[0]), max(side, shown[1]))
        if photo.image is None and image.format == "JPEG":
            image.draft("RGB", need[::-1] if swapped else need)
        image.load()
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    except Exception as err:  # truncated data, bad markers, decompression bombs...
        raise ImageLoadError(f"cannot decode ({type(err).__name__}: {err})") from err
    finally:
        if photo.image is None:
            image.close()
    pixels = np.asarray(rgb)
    drawn = pixels if rgb.size == shown else np.asarray(rgb.resize(shown, Image.Resampling.BILINEAR))
    chw = np.ascontiguousarray(resize_pixels(pixels, image_size).transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw / np.float32(255.0)), drawn, (width, height)


class PhotoDataset(Dataset):
    """``photos`` as the network sees them: ``(input (3, S, S), pixels (h, w, 3) uint8, (width, height), photo)``,
    or a :class:`PhotoError` for a photo that cannot be decoded (never an exception, so the others go on)."""

    def __init__(self, photos: Sequence[Photo], image_size: int, max_side: int = 1024) -> None:
        self.photos, self.image_size, self.max_side = list(photos), image_size, max_side

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> tuple[Tensor, np.ndarray, tuple[int, int], Photo] | PhotoError:
        photo = self.photos[index]
        if photo.path is not None and os.path.isfile(photo.path) and os.path.getsize(photo.path) == 0:
            return PhotoError(photo.name, "the file is empty")
        try:
            return (*decode_photo(photo, self.image_size, self.max_side), photo)
        except MissingImageError:
            return PhotoError(photo.name, "the file no longer exists")
        except ImageLoadError as err:
            return PhotoError(photo.name, str(err).replace(f"image file {photo.path} ", ""))


def collate_photos(items: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor, list[Any], list[PhotoError]]:
    """A batch for :func:`~.scoring.score`: ``(images (B, 3, S, S), labels -1 (B,), boxes NaN (B, 4), ids, errors)``;
    ``ids`` holds each photo's ``(pixels, (width, height), photo)``, and the photos that failed are kept aside."""
    good = [item for item in items if not isinstance(item, PhotoError)]
    errors = [item for item in items if isinstance(item, PhotoError)]
    images = default_collate([item[0] for item in good]) if good else torch.empty(0, 3, 1, 1)
    labels, boxes = torch.full((len(good),), -1), torch.full((len(good), 4), math.nan)
    return images, labels, boxes, [item[1:] for item in good], errors


def photo_loader(
    photos: Sequence[Photo], image_size: int, max_side: int, batch_size: int, num_workers: int
) -> DataLoader:
    """Batches of :func:`collate_photos`, decoded by ``num_workers`` DataLoader workers, in order."""
    dataset = PhotoDataset(photos, image_size, max_side)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_photos)


@dataclass
class PhotoExplanation:
    """What the network makes of one photo. Boxes are float ``[x1, y1, x2, y2]`` pixel edges of the photo (after
    its EXIF orientation)."""

    file: str
    output: PurePath  # the output path relative to the output folder, without suffix
    width: int
    height: int
    classes: list[str]  # the top-5 classes, most probable first (fewer for a model of fewer classes)
    probabilities: list[float]
    explained: str  # the class whose map this is: the predicted one, or the one asked for
    probability: float  # the explained class's probability
    map: np.ndarray  # (S, S) float32 in [0, 1]: the map, upsampled to the network's input and min-max normalised
    box: tuple[float, float, float, float]
    threshold: float
    method: str
    pixels: np.ndarray = field(repr=False)  # (h, w, 3) uint8: the photo at its drawn size

    def overlay(self, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The map blended on the photo at its drawn size, the box drawn, the class and probability written."""
        image = Image.fromarray(blend_map(self.pixels, self.map, alpha, colormap))
        draw, (w, h) = ImageDraw.Draw(image), image.size
        scale = np.array([w / self.width, h / self.height] * 2)
        if all(math.isfinite(v) for v in self.box):
            x1, y1, x2, y2 = (np.array(self.box) * scale).tolist()
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=BOX_COLOR, width=max(1, w // 200))
        font = _font(max(10, min(w, h) // 20))
        text = f"{self.explained} {100 * self.probability:.0f}%"
        *_, right, bottom = draw.textbbox((2, 2), text, font=font)
        draw.rectangle((0, 0, right + 2, bottom + 2), fill=TEXT_BACKGROUND)
        draw.text((2, 2), text, fill=(255, 255, 255), font=font)
        return image


def blend_map(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str | Colormap = "jet") -> np.ndarray:
    """:func:`~.overlay.apply_cam` of one photo in 8 bits: ``pixels`` (h, w, 3) uint8 blended with ``cam`` (h', w')
    float32, upsampled to the photo, -> (h, w, 3) uint8, within one level of ``apply_cam``'s rounded to 8 bits.

    The map's colour index is ``apply_cam``'s own (the same upsample and normalisation in float32); the blend is
    integer arithmetic on the photo's bytes, so the photo is never widened to float.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (the heat map's weight), got {alpha!r}")
    size = pixels.shape[:2]
    cam = np.ascontiguousarray(cam, dtype=np.float32)
    if overlay_kernel.matches_torch(cam.shape, size):  # one thread, the GIL released: a writer thread's upsample
        up = overlay_kernel.upsample(cam[None], size)[0]
    else:
        up = F.interpolate(torch.from_numpy(cam)[None, None], size=size, mode="bilinear", align_corners=False)
        up = up[0, 0].numpy()
    low = up.min()
    with np.errstate(divide="ignore", over="ignore"):
        scale = np.float32(LUT_SIZE) / (up.max() - low)
    # A flat map (scale inf) gets the colour of its minimum; up - low >= 0, so truncation is the floor.
    up -= low
    up *= scale if np.isfinite(scale) else np.float32(0)
    index = up.astype(np.intp)  # (h, w) in [0, 256]
    weight = round(256 * float(alpha))  # the heat map's share of 256
    lut = colormap_lut(colormap).numpy()
    # Entry 256 repeats 255 (a map's maximum lands on it); + 128 rounds the final shift by 8 bits to nearest.
    table = (np.rint(np.vstack([lut, lut[-1:]]) * (255 * weight)) + 128).astype(np.uint16)  # (257, 3)
    mixed = np.take(table, index, axis=0)  # (h, w, 3)
    # At most 255 * 256 + 128: no overflow.
    np.add(mixed, np.multiply(pixels, np.uint16(256 - weight), dtype=np.uint16), out=mixed)
    out = np.empty(pixels.shape, np.uint8)
    np.right_shift(mixed, 8, out=out, casting="unsafe")
    return out


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


class PhotoExplainer:
    """The scoring pass's sink for photos: each scored batch's records, handed to ``consumer`` one by one."""

    def __init__(
        self,
        class_names: Sequence[str],
        source: str,
        method: str,
        threshold: float,
        class_idx: int | None,
        consumer: Callable[[PhotoExplanation], None],
    ) -> None:
        self.class_names, self.source, self.method, self.threshold = list(class_names), source, method, threshold
        self.class_idx, self.consumer = class_idx, consumer

    def update(self, batch: ScoredBatch) -> None:
        probs = batch.logits_cpu.softmax(dim=1)  # (B, C)
        top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
        explained = top.indices[:, 0] if self.class_idx is None else torch.full_like(top.indices[:, 0], self.class_idx)
        maps = normalize_cams(batch.maps[self.source], batch.image_size).float().numpy()  # (B, S, S)
        size = batch.image_size
        for i, (pixels, (width, height), photo) in enumerate(batch.ids):
            scale = torch.tensor([width / size[1], height / size[0]] * 2)
            box = tuple(float(v) for v in batch.boxes(self.source)[i] * scale)
            index = int(explained[i])
            self.consumer(
                PhotoExplanation(
                    file=photo.name,
                    output=photo.output,
                    width=width,
                    height=height,
                    classes=[self.class_names[k] for k in top.indices[i].tolist()],
                    probabilities=top.values[i].tolist(),
                    explained=self.class_names[index],
                    probability=float(probs[i, index]),
                    map=maps[i],
                    box=box,
                    threshold=self.threshold,
                    method=self.method,
                    pixels=pixels,
                )
            )


def _raise(error: PhotoError) -> None:
    raise ImageLoadError(f"{error.name}: {error.reason}")


def _without_errors(loader: Iterable[Any], on_error: Callable[[PhotoError], None]) -> Iterator[tuple[Any, ...]]:
    """The loader's batches for :func:`~.scoring.score`, each failed photo handed to ``on_error``."""
    for images, labels, boxes, ids, errors in loader:
        for error in errors:
            on_error(error)
        if ids:
            yield images, labels, boxes, ids


def explain_photos(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    photos: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image,
    *,
    method: str = "cam",
    class_idx: int | None = None,
    threshold: float | None = None,
    max_side: int = 1024,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    image_size: int = 224,
    class_names: Sequence[str] | None = None,
    on_error: Callable[[PhotoError], None] | None = None,
) -> Iterator[PhotoExplanation]:
    """Explain photos one by one: the top-5 classes, the map of the predicted class (or of ``class_idx``) and its box.

    Args:
        model_or_checkpoint: A checkpoint file (its image size, class names and CAM threshold are used) or a
            :class:`~.model.GAPNet` (then ``image_size``, ``class_names`` and ``threshold`` say them).
        photos: Files, folders and glob patterns (as ``--images``), or PIL images, or one of these.
        method: One of :data:`~.cams.METHODS`.
        threshold: The box's CAM threshold; None: the checkpoint's (0.2 for a model).
        max_side: The longer side of each record's ``pixels``.
        on_error: Called with each photo that cannot be decoded; None raises :class:`~.data.common.ImageLoadError`.

    Yields:
        One :class:`PhotoExplanation` per photo, in order.

    Example::

        for record in explain_photos("runs/best.pt", "my_photos/"):
            print(record.file, record.classes[0], record.probabilities[0], record.box)
            record.overlay().save(f"{record.output.name}.jpg")
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    if isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
        names = list(class_names) if class_names is not None else [f"class {k}" for k in range(model.num_classes)]
        threshold = PAPER_THRESHOLD if threshold is None else threshold
    else:
        model, checkpoint = load_checkpoint(model_or_checkpoint, map_location=device)
        require_entries(checkpoint, ("image_size", "class_names"), model_or_checkpoint)
        image_size, names = int(checkpoint["image_size"]), list(checkpoint["class_names"])
        threshold = cam_threshold_of(checkpoint)[0] if threshold is None else threshold
    items = [photos] if isinstance(photos, str | os.PathLike | Image.Image) else list(photos)
    paths = [os.fspath(item) for item in items if not isinstance(item, Image.Image)]
    images = [item for item in items if isinstance(item, Image.Image)]
    chosen = (find_photos(paths) if paths else []) + [
        Photo(f"<image {i}>", PurePath(f"image_{i:04d}"), image=image) for i, image in enumerate(images)
    ]
    loader = photo_loader(chosen, image_size, max_side, batch_size, num_workers)
    records: list[PhotoExplanation] = []
    explainer = PhotoExplainer(names, "map", method, threshold, class_idx, records.append)
    # The pass runs a batch at a time, so a notebook may stop when it likes.
    for batch in _without_errors(loader, on_error or _raise):
        score(
            model,
            [batch],
            {"map": chosen_maps(method, class_idx)},
            [explainer],
            torch.device(device),
            threshold=threshold,
        )
        yield from records
        records.clear()


def write_overlay(record: PhotoExplanation, out_dir: Path, fmt: str = "jpg", quality: int = 90) -> Path:
    """``out_dir / record.output`` + ``.jpg`` (JPEG quality ``quality``) or ``.png``: :meth:`PhotoExplanation.overlay`,
    written atomically."""
    path = out_dir / f"{record.output.as_posix()}.{fmt}"
    with atomic_file(path, "wb") as handle:
        record.overlay().save(
            handle, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": quality} if fmt == "jpg" else {})
        )
    return path


def write_map(record: PhotoExplanation, out_dir: Path) -> Path:
    """``out_dir / record.output`` + ``.npy``: the (S, S) float32 map in [0, 1] the overlay shows, written
    atomically."""
    path = out_dir / f"{record.output.as_posix()}.npy"
    with atomic_file(path, "wb") as handle:
        np.save(handle, np.asarray(record.map, dtype=np.float32), allow_pickle=False)
    return path


def csv_row(record: PhotoExplanation) -> list[Any]:
    """``record``'s row of ``predictions.csv`` (:data:`CSV_COLUMNS`); classes a model lacks are empty."""
    ranked = [
        value
        for k in range(TOP_K)
        for value in ((record.classes[k], f"{record.probabilities[k]:.6f}") if k < len(record.classes) else ("", ""))
    ]
    box = [f"{v:.3f}" for v in record.box]
    return [record.file, record.width, record.height, *ranked, *box, f"{record.threshold:g}", record.method]


def write_predictions(rows: Iterable[Sequence[Any]], path: Path) -> None:
    """``predictions.csv``: the header :data:`CSV_COLUMNS`, then ``rows`` (:func:`csv_row`), written atomically."""
    with atomic_file(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)


class _WriteBehind:
    """``write`` of each record in one background thread, in order, while the caller goes on: at most ``limit``
    records wait, and the writer's first error is raised in the caller's thread (the records after it are not
    written)."""

    def __init__(self, write: Callable[[PhotoExplanation], None], limit: int) -> None:
        self.write, self.limit, self.failed = write, limit, False
        self.pending: deque[Future[None]] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="photo-writer")

    def _write(self, record: PhotoExplanation) -> None:
        if self.failed:
            return
        try:
            self.write(record)
        except BaseException:
            self.failed = True
            raise

    def __call__(self, record: PhotoExplanation) -> None:
        self.pending.append(self.pool.submit(self._write, record))
        while self.pending and (len(self.pending) > self.limit or self.pending[0].done()):
            self.pending.popleft().result()

    def drain(self) -> None:
        """Wait for every record to be written; raise the writer's error, if any."""
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Drop the records still waiting and let the one being written finish (its files land whole)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _read_ahead(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches``, the next one decoded in a background thread while the caller works on this one (a loader
    without workers would otherwise decode between forward passes)."""
    iterator = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="photo-reader") as reader:
        ahead = reader.submit(next, iterator, None)
        while (batch := ahead.result()) is not None:
            ahead = reader.submit(next, iterator, None)
            yield batch


def write_explanations(
    model: nn.Module,
    class_names: Sequence[str],
    image_size: int,
    photos: Sequence[Photo],
    out_dir: Path,
    *,
    method: str = "cam",
    class_idx: int | None = None,
    threshold: float = 0.2,
    fmt: str = "jpg",
    save_maps: bool = False,
    max_side: int = 1024,
    batch_size: int = 16,
    num_workers: int = 0,
    device: torch.device | None = None,
    on_error: Callable[[PhotoError], None] = _raise,
    progress: bool = False,
    consumers: Sequence[Callable[[PhotoExplanation], None]] = (),
) -> int:
    """Explain ``photos`` in one scoring pass, writing into ``out_dir`` an overlay per photo (mirroring
    :attr:`Photo.output`), its ``.npy`` map with ``save_maps``, and ``predictions.csv``; every file atomically, and
    nothing else there is touched. Each record is then handed to ``consumers`` (e.g. the report's cards), in order.
    Returns how many photos were explained.

    The files are drawn and written in one background thread while the next batch runs (``consumers`` are called
    there too); without loader workers, the next batch is decoded in another. An error of the writer is raised
    here; an interrupt leaves only whole files."""
    device = device or torch.device("cpu")
    rows: list[list[Any]] = []  # only these stay: memory is flat over many photos
    bar = tqdm(total=len(photos), unit="photo", disable=not progress, leave=False)

    def write(record: PhotoExplanation) -> None:
        write_overlay(record, out_dir, fmt)
        if save_maps:
            write_map(record, out_dir)
        rows.append(csv_row(record))
        for consumer in consumers:
            consumer(record)
        bar.update()

    def skip(error: PhotoError) -> None:
        on_error(error)
        bar.update()

    # Two batches in flight at most: the files are written while the next batch runs, and memory stays flat.
    writer = _WriteBehind(write, 2 * batch_size)
    explainer = PhotoExplainer(class_names, "map", method, threshold, class_idx, writer)
    loader = photo_loader(photos, image_size, max_side, batch_size, num_workers)
    try:
        score(
            model,
            _without_errors(loader if num_workers else _read_ahead(loader), skip),
            {"map": chosen_maps(method, class_idx)},
            [explainer],
            device,
            threshold=threshold,
        )
        writer.drain()
    finally:
        writer.close()
        bar.close()
    write_predictions(rows, out_dir / "predictions.csv")
    return len(rows)
