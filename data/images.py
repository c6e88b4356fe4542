"""Decoding, resizing, augmenting and caching the images, boxes alongside."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic_files import unwritable_reason
from .common import AnnotationError, ImageLoadError, MissingImageError, PathLike

logger = logging.getLogger(__name__)

# Augmentation: a crop of 60-100% of the image area, aspect within 3/4..4/3 of the image's, keeping
# at least CROP_MIN_BOX_VISIBLE of the car's box (CROP_ATTEMPTS tries, else the whole image).
CROP_AREA_RANGE, CROP_RELATIVE_ASPECT_RANGE, CROP_MIN_BOX_VISIBLE, CROP_ATTEMPTS = (0.6, 1.0), (3 / 4, 4 / 3), 0.75, 10
FLIP_PROBABILITY = 0.5
# The smallest crop keeps this share of each side; the decoder's reduced scale must leave it S pixels across.
MIN_CROP_SIDE = math.sqrt(CROP_AREA_RANGE[0] * CROP_RELATIVE_ASPECT_RANGE[0])
# The JPEG decoder may return as little as this share of the pixels a view asks for: the final resize
# then stretches a little, for a picture hard to tell apart and a much cheaper decode.
DRAFT_MIN_SHARE = 0.9


def open_image(path: str) -> Image.Image:
    """``PIL.Image.open``, its failures as :class:`MissingImageError` / :class:`ImageLoadError` naming the file."""
    try:
        return Image.open(path)
    except FileNotFoundError as err:
        raise MissingImageError(
            f"image file {path} does not exist (it is named in the annotations); re-download the data"
        ) from err
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... for a bad file
        raise ImageLoadError(
            f"cannot read image file {path} ({type(err).__name__}: {err}); it may be truncated or not an image"
        ) from err


def checked_boxes(annotation_file: PathLike, paths: Sequence[str], boxes: np.ndarray) -> np.ndarray:
    """``boxes`` (N, 4) of the images ``paths``, checked against each image's size (read from its header).

    An inverted box, or one wholly outside its image, is an :class:`AnnotationError` naming ``annotation_file``, the
    image and the box; boxes partly outside are clipped to their image, with one warning that counts them. Rows of
    NaN (no box) pass unchanged.
    """
    has_box = ~np.isnan(boxes).any(axis=1)

    def refuse(mask: np.ndarray, problem: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            x1, y1, x2, y2 = boxes[i]
            raise AnnotationError(
                f"{annotation_file}: the box of {paths[i]} (bbox_x1..y2 = {x1 + 1:.0f}, {y1 + 1:.0f}, {x2:.0f}, "
                f"{y2:.0f}) {problem}; correct or remove that annotation"
            )

    refuse(has_box & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])), "is inverted (x2 < x1 or y2 < y1)")
    sizes = np.zeros((len(paths), 2))
    for i in np.flatnonzero(has_box):
        with open_image(paths[i]) as image:
            sizes[i] = image.size
    outside = (boxes[:, 0] >= sizes[:, 0]) | (boxes[:, 1] >= sizes[:, 1]) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    refuse(has_box & outside, "lies wholly outside the image")
    clipped = np.where(has_box[:, None], np.clip(boxes, 0.0, np.tile(sizes, 2)), boxes)  # limits: w, h, w, h
    if partly := int((has_box & (clipped != boxes).any(axis=1)).sum()):
        logger.warning("%s: %d box(es) reach outside their image and were clipped to it", annotation_file, partly)
    return clipped


def _sample_crop(width: int, height: int, box: np.ndarray) -> tuple[float, float, float, float]:
    """A random crop ``(x0, y0, x1, y1)`` in original pixels that keeps most of ``box``; uses torch's RNG."""
    box_area = max((box[2] - box[0]) * (box[3] - box[1]), 0.0)
    log_aspects = tuple(map(math.log, CROP_RELATIVE_ASPECT_RANGE))
    for _ in range(CROP_ATTEMPTS):
        area = torch.empty(()).uniform_(*CROP_AREA_RANGE).item()
        aspect = math.exp(torch.empty(()).uniform_(*log_aspects).item())
        crop_w, crop_h = width * math.sqrt(area * aspect), height * math.sqrt(area / aspect)
        if crop_w > width or crop_h > height:
            continue
        x0, y0 = (torch.empty(()).uniform_(0.0, room).item() for room in (width - crop_w, height - crop_h))
        x1, y1 = x0 + crop_w, y0 + crop_h
        visible = max(min(box[2], x1) - max(box[0], x0), 0.0) * max(min(box[3], y1) - max(box[1], y0), 0.0)
        if box_area > 0 and visible >= CROP_MIN_BOX_VISIBLE * box_area:
            return x0, y0, x1, y1
    return 0.0, 0.0, float(width), float(height)


def decode_image(path: str, min_size: tuple[int, int]) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Decode an image to RGB at the coarsest JPEG DCT scale (1, 1/2, 1/4, 1/8) that keeps ``min_size`` (w, h).

    Returns:
        ``(pixels (ceil(h / scale), ceil(w / scale), 3) uint8, scale (1 for non-JPEG), (w, h) of the file)``.

    Raises:
        MissingImageError, ImageLoadError: If the file is missing or cannot be decoded.
    """
    with open_image(path) as image:
        try:
            (width, height), scale = image.size, 1
            drafted = image.draft("RGB", min_size) if min_size[0] < width and min_size[1] < height else None
            if drafted is not None:  # PIL's draft mode: (mode, box of the full image in decoded pixels)
                scale = round(width / drafted[1][2])
            image.load()
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except Exception as err:  # truncated data, bad markers, decompression bombs...
            raise ImageLoadError(
                f"cannot decode image file {path} ({type(err).__name__}: {err}); it may be truncated or corrupt"
            ) from err
    return pixels, scale, (width, height)


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of (h, w, 3) uint8 pixels to (size, size, 3) uint8, within one grey level of
    PIL's."""
    # A private contiguous copy: torch cannot wrap a read-only memory map, and a strided view takes a slow path.
    chw = torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1)[
        None
    ]  # (1, 3, h, w)
    out = torch.nn.functional.interpolate(chw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()  # (S, S, 3), contiguous: the output keeps the input's channels-last layout


class ImageCache:
    """Decoded pixels in ``folder``, one ``.npy`` per image and view, memory-mapped back on later reads.

    Keyed by the image's path, size and mtime; written atomically, so DataLoader workers may share it;
    a write that would leave under ``min_free_bytes`` free on the disk is skipped.
    """

    # Each file: flat uint8; five little-endian uint32 (file width, height, rows, cols, the decoder's
    # reduction or 0 for a resized view), then the (rows, cols, 3) pixels.
    HEADER_BYTES = 20

    def __init__(self, folder: PathLike, min_free_bytes: int = 1 << 30) -> None:
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"cache_dir must be a folder (a str or path) or None, got {folder!r}"[:300])
        self.folder = Path(os.path.expanduser(os.fspath(folder)))
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                f"cache_dir {os.fspath(folder)!r} is a file, not a folder; choose another folder or leave it out"
            )
        # Checked once, here: otherwise an unwritable cache only shows as a warning per image.
        if (reason := unwritable_reason(self.folder)) is not None:
            raise ValueError(
                f"cache_dir {os.fspath(folder)!r} is not writable ({reason}); choose another folder or leave it out"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = int(min_free_bytes)
        self._warned: set[str] = set()

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    def path_for(self, path: str, view: str) -> Path:
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{view}"
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def get(self, path: str, view: str) -> tuple[np.ndarray, int, tuple[int, int]] | None:
        """``(pixels (rows, cols, 3) uint8 read-only memory map, scale, (width, height))``, or None."""
        try:
            flat = np.load(self.path_for(path, view), mmap_mode="r")
        except (ValueError, OSError):  # missing, or not an .npy
            return None
        if flat.ndim != 1 or flat.shape[0] < self.HEADER_BYTES:
            return None  # not one of ours: decode afresh, and the next put replaces it
        width, height, rows, cols, scale = (
            int(v) for v in np.frombuffer(flat[: self.HEADER_BYTES].tobytes(), dtype="<u4")
        )
        if flat.shape[0] != self.HEADER_BYTES + rows * cols * 3:
            return None
        return flat[self.HEADER_BYTES :].reshape(rows, cols, 3), scale, (width, height)

    def put(self, path: str, view: str, pixels: np.ndarray, scale: int, size: tuple[int, int]) -> None:
        """Store ``pixels`` (rows, cols, 3) uint8 decoded at 1/``scale`` (0: resized) of image ``path`` of ``size``
        (w, h)."""
        target = self.path_for(path, view)
        header = np.array([size[0], size[1], pixels.shape[0], pixels.shape[1], scale], dtype="<u4").view(np.uint8)
        flat = np.concatenate([header, np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1)])
        if shutil.disk_usage(self.folder).free < flat.nbytes + self.min_free_bytes:
            self._warn_once(
                "full", "Image cache %s: the disk is nearly full, so new images are not cached", self.folder
            )
            return
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, flat, allow_pickle=False)
            os.replace(tmp, target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            self._warn_once(
                "write",
                "Image cache %s: could not write %s (%s); images that fail to cache are decoded every time",
                self.folder,
                target.name,
                err,
            )


def _cached_pixels(
    path: str, min_side: int, view: str, cache: ImageCache | None, resize_to: int | None = None
) -> tuple[np.ndarray, int, tuple[int, int]]:
    """:func:`decode_image` (then resized to ``resize_to`` squared, scale 0) through ``cache``."""
    hit = cache.get(path, view) if cache is not None else None
    if hit is not None:
        return hit
    pixels, scale, size = decode_image(path, (min_side, min_side))
    if resize_to is not None:
        pixels, scale = resize_pixels(pixels, resize_to), 0
    if cache is not None:
        cache.put(path, view, pixels, scale, size)
    return pixels, scale, size


def load_view(
    path: str, box: np.ndarray, image_size: int, augment: bool, cache: ImageCache | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The view the network sees of image ``path``, whose ``box`` (4,) ``[x1, y1, x2, y2]`` is in its pixels (0-based,
    half-open): the whole image resized to S x S (``image_size``), or with ``augment`` a random crop and flip (torch's
    global RNG; see ``docs/data.md``), cut from pixels decoded at the scale that leaves the smallest crop S across,
    so a ``cache`` gives the same result bit for bit.

    Returns:
        ``(image, box)``: image (3, S, S) float32 RGB in [0, 1]; box (4,) float32 in its pixels, clipped to [0, S].

    Raises:
        MissingImageError, ImageLoadError: If the file is missing or cannot be decoded.
    """
    if augment:
        side = math.ceil(DRAFT_MIN_SHARE * image_size / MIN_CROP_SIDE)
        base, scale, (width, height) = _cached_pixels(path, side, f"base{image_size}", cache)
    else:
        side = math.ceil(DRAFT_MIN_SHARE * image_size)
        pixels, _, (width, height) = _cached_pixels(path, side, f"view{image_size}", cache, resize_to=image_size)
    box = np.clip(np.asarray(box, dtype=np.float64), 0.0, [width, height, width, height])
    crop, flip = (0.0, 0.0, float(width), float(height)), False
    if augment:
        x0, y0, x1, y1 = _sample_crop(width, height, box)
        # The crop in whole decoded pixels (at least one), then back in original pixels for the box.
        rows, cols = base.shape[:2]
        c0, r0 = min(round(x0 / scale), cols - 1), min(round(y0 / scale), rows - 1)
        c1, r1 = max(min(round(x1 / scale), cols), c0 + 1), max(min(round(y1 / scale), rows), r0 + 1)
        crop = (c0 * scale, r0 * scale, min(c1 * scale, width), min(r1 * scale, height))
        pixels = resize_pixels(base[r0:r1, c0:c1], image_size)
        flip = torch.rand(()).item() < FLIP_PROBABILITY
    # NumPy, not torch, for the per-image arithmetic: torch's intra-op threads cost more than
    # they save on arrays this small, and starve each other in DataLoader workers.
    scale_xy = np.array([image_size / (crop[2] - crop[0]), image_size / (crop[3] - crop[1])] * 2)
    out_box = np.clip((box - np.array([crop[0], crop[1]] * 2)) * scale_xy, 0.0, image_size)
    if flip:
        pixels = pixels[:, ::-1]
        out_box = np.array([image_size - out_box[2], out_box[1], image_size - out_box[0], out_box[3]])
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # (3, S, S)
    np.divide(chw, 255.0, out=chw)
    return torch.from_numpy(chw), torch.as_tensor(out_box, dtype=torch.float32)
