"""From a class activation map to boxes, and the weakly supervised localisation metrics.

Pixel and box convention (the same everywhere in this package): a box is float
``[x1, y1, x2, y2]`` in 0-based, continuous, half-open pixel-edge coordinates, so a box covering
pixel columns ``c0..c1`` and rows ``r0..r1`` (inclusive) is ``[c0, r0, c1 + 1, r1 + 1]`` and its
area is ``(x2 - x1) * (y2 - y1)``, the number of pixels it covers. A missing box is
``[nan, nan, nan, nan]``. The empty set of pixels has the zero-area box ``[0, 0, 0, 0]``, whose
IoU with any box is 0 (as in clovaai/wsolevaluation, where an empty mask gives ``[0, 0, 0, 0]``).

How a CAM becomes boxes (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization"): upsample the map bilinearly to the image, min-max normalise it to [0, 1]
(:func:`normalize_cams`), keep the pixels with ``map >= t`` and take the bounding box of the largest
8-connected component. The CAM paper uses ``t = 0.2``; Choe et al. 2020 ("Evaluating Weakly
Supervised Object Localization Methods Right") sweep ``t`` over :data:`THRESHOLDS`.

Every threshold at once: :func:`reference_boxes` labels each threshold's mask with
``scipy.ndimage.label``; :func:`sweep_boxes` gives the same boxes, from the compiled one-pass
union-find of :mod:`.accel.sweep` where numba is installed (faster), from the labelling otherwise.
:class:`LocalizationMeter` turns the boxes into GT-known Loc, Top-1 Loc, MaxBoxAcc and MaxBoxAccV2.

Example:
    >>> meter = LocalizationMeter()
    >>> cams = torch.zeros(1, 13, 13)
    >>> cams[0, 3:8, 4:9] = 1.0
    >>> meter.update(torch.tensor([[2.0, 1.0]]), torch.tensor([0]), cams,
    ...              torch.tensor([[60.0, 50.0, 150.0, 130.0]]), (224, 224))
    >>> round(meter.compute()["gt_known_loc"], 2)
    1.0
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from .accel.sweep import HAVE_NUMBA, run_sweep as run_compiled_sweep

logger = logging.getLogger(__name__)

__all__ = [
    "EIGHT_CONNECTED", "EMPTY_BOX", "IOU_THRESHOLD", "LOC_THRESHOLD", "METRIC_LABELS", "THRESHOLDS",
    "V2_IOU_THRESHOLDS", "LocalizationMeter", "box_iou", "boxes_from_cams", "format_metrics_table",
    "largest_component_box", "mask_to_box", "normalize_cams", "reference_best_iou", "reference_boxes",
    "sweep_best_iou", "sweep_boxes",
]

THRESHOLDS: np.ndarray = np.arange(100) / 100
"""CAM thresholds ``0, 0.01, ..., 0.99`` (float64), wsolevaluation's ``cam_curve_interval=0.01``."""

LOC_THRESHOLD = 0.2
"""The CAM paper's threshold for GT-known Loc and Top-1 Loc."""

IOU_THRESHOLD = 0.5
"""IoU at or above which a box is a hit (GT-known Loc, Top-1 Loc, MaxBoxAcc)."""

V2_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
"""The IoUs MaxBoxAccV2 averages over (Choe et al. 2020)."""

EMPTY_BOX = np.zeros(4)
"""The box of an empty set of pixels: zero area, IoU 0 with any box."""

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""``scipy.ndimage.label`` structure for 8-connectivity."""


# --------------------------------------------------------------------------------------------
# Maps and boxes


def normalize_cams(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Upsample CAMs bilinearly to ``size`` and min-max normalise each to [0, 1].

    The one place a CAM becomes a map in the image's pixels: ``(up - min(up)) / (max(up) - min(up))``
    per map, ``up`` upsampled with ``align_corners=False``; the minimum becomes exactly 0, the
    maximum exactly 1, and a constant map all zeros (never NaN).

    Args:
        cams: raw maps, (B, h, w) or (B, 1, h, w), any real dtype and device.
        size: ``(H, W)`` of the image the boxes are wanted in.

    Returns:
        (B, H, W) on the input's device; float64 for float64 input, float32 otherwise; finite.

    Raises:
        ValueError: on a wrong shape, a bad ``size``, a non-finite value or a range the dtype
            cannot hold.
    """
    if cams.dim() == 4 and cams.shape[1] == 1:
        cams = cams[:, 0]
    if cams.dim() != 3:
        raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
    height, width = _check_size(size)
    if cams.dtype != torch.float64:
        cams = cams.float()
    up = F.interpolate(cams[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low
    # One check (one sync) for both: the sweep trusts these maps to be finite, and a span that
    # overflows would make them NaN.
    if not bool(torch.isfinite(cams).all() & torch.isfinite(span).all()):
        raise ValueError("cams contain NaN or infinite values, or a range too wide for their dtype; check the model's output before scoring it")
    # A flat map has no "where": zeros, and the division never sees a zero denominator.
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), 0.0)


def box_iou(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Intersection over union of boxes, pair by pair.

    ``iou = inter / (area_a + area_b - inter)`` with ``area = (x2 - x1) * (y2 - y1)``, so boxes that
    only touch have IoU 0, and so has a zero-area union. A missing (all-NaN) box gives NaN, which
    fails every ``iou >= threshold`` test.

    Args:
        a: boxes (..., 4), ``[x1, y1, x2, y2]``.
        b: boxes (..., 4), broadcastable against ``a``.

    Returns:
        (...,) IoUs in [0, 1] or NaN: float64 numpy for numpy input; for tensor input a tensor on
        the first tensor's device, float32 unless an input is float64.

    Raises:
        ValueError: if a box has ``x2 < x1`` or ``y2 < y1``, is partly NaN or infinite, or the
            last dimension is not 4.
    """
    a64 = _check_boxes(_to_numpy64(a), "a")
    b64 = _check_boxes(_to_numpy64(b), "b")
    iou = np.where(np.isnan(a64[..., 0]) | np.isnan(b64[..., 0]), np.nan, _iou(a64, b64))
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        ref = a if isinstance(a, Tensor) else b
        dtype = torch.float64 if torch.float64 in (getattr(a, "dtype", None), getattr(b, "dtype", None)) else torch.float32
        return torch.from_numpy(np.asarray(iou)).to(device=ref.device, dtype=dtype)
    return iou


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`box_iou` of valid float64 boxes, NaN rows not singled out."""
    # The same operations, in the same order, as the compiled sweep's: results agree bit for bit.
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = inter_w * inter_h
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """The (4,) float64 bounding box of the True pixels of an (H, W) mask; ``[0, 0, 0, 0]`` if none.

    Pixels in columns ``c0..c1`` and rows ``r0..r1`` give ``[c0, r0, c1 + 1, r1 + 1]``.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return EMPTY_BOX.copy()
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (K, 4) and pixel counts (K,) of the 8-connected components, in ``ndimage.label`` order."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    boxes = [[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in ndimage.find_objects(labels)]
    return np.array(boxes, dtype=np.float64).reshape(count, 4), np.bincount(labels.ravel(), minlength=count + 1)[1:]


def largest_component_box(mask: np.ndarray) -> np.ndarray:
    """The (4,) float64 box of the largest 8-connected component of an (H, W) mask.

    Ties in size go to the component whose first pixel in raster order (row by row) comes first,
    which is the one ``scipy.ndimage.label`` numbers lowest. An empty mask gives ``[0, 0, 0, 0]``.
    """
    boxes, sizes = _components(np.asarray(mask, dtype=bool))
    return boxes[int(np.argmax(sizes))] if sizes.size else EMPTY_BOX.copy()  # argmax: the first of equal sizes


def reference_boxes(cam: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Largest-component box of ``cam >= t`` for each threshold, one labelling per threshold.

    The plain version :func:`sweep_boxes` must equal exactly. ``cam >= t`` is decided in float64.

    Args:
        cam: (H, W) map.
        thresholds: (T,) strictly increasing thresholds.

    Returns:
        (T, 4) float64 boxes.
    """
    return _label_sweep(np.asarray(cam, dtype=np.float64), _check_thresholds(thresholds), None)[0]


def reference_best_iou(cam: np.ndarray, gt_box: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Best IoU with ``gt_box`` over the boxes of all 8-connected components of ``cam >= t``.

    The plain version :func:`sweep_best_iou` must equal exactly (MaxBoxAccV2's matching rule).

    Args:
        cam: (H, W) map.
        gt_box: (4,) ground-truth box.
        thresholds: (T,) strictly increasing thresholds.

    Returns:
        (T,) float64 IoUs; 0 where the mask is empty.
    """
    gt = _check_boxes(np.asarray(gt_box, dtype=np.float64), "gt_box")
    return _label_sweep(np.asarray(cam, dtype=np.float64), _check_thresholds(thresholds), gt)[1]


def _label_sweep(cam: np.ndarray, thresholds: np.ndarray, gt: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, the largest component's box (T, 4) and, given ``gt``, the best IoU (T,)."""
    boxes = np.zeros((thresholds.shape[0], 4))
    best = np.zeros(thresholds.shape[0])
    for i, t in enumerate(thresholds):
        found, sizes = _components(cam >= t)
        if sizes.size:
            boxes[i] = found[int(np.argmax(sizes))]
            if gt is not None:
                best[i] = _iou(found, gt).max()
    return boxes, best


# --------------------------------------------------------------------------------------------
# All thresholds at once


def _as_maps(maps: np.ndarray | Tensor) -> np.ndarray:
    """``maps`` as a CPU numpy array; a tensor keeps float64, other dtypes widen to float32.

    float32 holds bf16 and fp16 exactly, so a tensor gives what the float32 numpy path gives.
    """
    if isinstance(maps, Tensor):
        dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
        return maps.detach().to("cpu", dtype).numpy()
    return np.asarray(maps)


def _check_maps(maps: np.ndarray) -> np.ndarray:
    """(B, H, W) maps as the contiguous float32 or float64 array the sweep trusts."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {maps.shape}")
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float64)  # exact for every integer and float16 value
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values; a map must be finite to be thresholded")
    return np.ascontiguousarray(maps)


@functools.cache
def _warn_no_numba() -> None:
    logger.warning("numba is not installed: the localisation sweep labels each threshold with scipy (slower); pip install numba")


def _sweep(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray | None, num_threads: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxes (B, T, 4) and, given ``gt_boxes`` (B, 4), best IoUs (B, T) of checked maps and thresholds."""
    if HAVE_NUMBA:
        return run_compiled_sweep(maps, thresholds, gt_boxes, num_threads)
    _warn_no_numba()
    boxes = np.zeros((maps.shape[0], thresholds.shape[0], 4))
    best = np.zeros((maps.shape[0], thresholds.shape[0]))
    for i, cam in enumerate(maps):
        boxes[i], best[i] = _label_sweep(cam.astype(np.float64), thresholds, None if gt_boxes is None else gt_boxes[i])
    return boxes, (None if gt_boxes is None else best)


def sweep_boxes(maps: np.ndarray | Tensor, thresholds: np.ndarray = THRESHOLDS, num_threads: int | None = None) -> np.ndarray:
    """Box of the largest 8-connected component of ``map >= t`` for every threshold.

    Equal to :func:`reference_boxes` exactly, ties included; ``map >= t`` is decided in float64.
    With numba one compiled pass over the pixels serves every threshold (:mod:`.accel.sweep`);
    without it each threshold is labelled as in :func:`reference_boxes`.

    Args:
        maps: (B, H, W) or (H, W) finite maps (normally :func:`normalize_cams` output), an array
            or a tensor of any float dtype on any device (bf16 and fp16 compared as float32).
        thresholds: (T,) strictly increasing thresholds; default :data:`THRESHOLDS`.
        num_threads: threads sharing the batch; ``None`` uses every CPU this process may run on.

    Returns:
        (B, T, 4) or (T, 4) float64 boxes; ``[0, 0, 0, 0]`` where the mask is empty.

    Raises:
        ValueError: on a wrong shape, non-finite values or unsorted thresholds.
    """
    arr = _as_maps(maps)
    single = arr.ndim == 2
    arr = _check_maps(arr[None] if single else arr)
    boxes, _ = _sweep(arr, _check_thresholds(thresholds), None, num_threads)
    return boxes[0] if single else boxes


def sweep_best_iou(
    maps: np.ndarray | Tensor, gt_boxes: np.ndarray, thresholds: np.ndarray = THRESHOLDS, num_threads: int | None = None
) -> np.ndarray:
    """Best IoU with the ground truth over every 8-connected component of ``map >= t``, per threshold.

    MaxBoxAccV2's matching rule, equal to :func:`reference_best_iou`. wsolevaluation boxes the
    contours of the mask (``cv2.findContours``); an 8-connected component's outer contour has the
    component's box. (Its ``RETR_TREE`` also lists hole outlines, which are not matched here.)

    Args:
        maps: (B, H, W) finite maps, an array or a tensor of any float dtype on any device.
        gt_boxes: (B, 4) ground-truth boxes; a missing (all-NaN) box gives a row of NaN.
        thresholds: (T,) strictly increasing thresholds.
        num_threads: threads sharing the batch; ``None`` uses every CPU this process may run on.

    Returns:
        (B, T) float64 IoUs; 0 where the mask is empty.
    """
    arr = _as_maps(maps)
    gt = _check_boxes(_to_numpy64(gt_boxes), "gt_boxes")
    if arr.ndim != 3 or gt.shape != (arr.shape[0], 4):
        raise ValueError(f"maps must be (B, H, W) and gt_boxes (B, 4), got shapes {arr.shape} and {gt.shape}")
    thresholds = _check_thresholds(thresholds)
    out = np.full((arr.shape[0], thresholds.shape[0]), np.nan)
    known = ~np.isnan(gt[:, 0])
    if known.any():  # maps without a box are neither checked nor swept
        out[known] = _sweep(_check_maps(arr[known]), thresholds, gt[known], num_threads)[1]
    return out


def boxes_from_cams(cams: Tensor, size: tuple[int, int], threshold: float = LOC_THRESHOLD) -> Tensor:
    """The CAM paper's box: largest 8-connected component of the normalised map ``>= threshold``.

    Args:
        cams: raw maps (B, h, w) or (B, 1, h, w).
        size: ``(H, W)`` of the image the boxes are for.
        threshold: in [0, 1]; the paper uses 0.2.

    Returns:
        (B, 4) float32 boxes on the input's device, in the image's pixels.
    """
    maps = normalize_cams(cams.detach(), size).cpu().numpy()  # finite, contiguous: the sweep trusts it
    boxes = _sweep(maps, _check_thresholds(np.array([float(threshold)])), None, None)[0][:, 0]
    return torch.from_numpy(boxes).to(device=cams.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# The metrics


class LocalizationMeter:
    """Classification and weakly supervised localisation metrics, accumulated batch by batch.

    Only counts are kept (per threshold hit counts), so memory is O(thresholds) whatever the
    number of images. Images whose ground-truth box is missing (NaN) count towards
    classification and ``n_without_box`` but are not scored for localisation. Meters on
    different ranks combine by summing :meth:`state_tensor` (e.g. ``all_reduce``) and loading the
    sum with :meth:`load_state_tensor`, or in-process with :meth:`merge`.

    Definitions (a hit: IoU >= 0.5 between the largest component's box and the ground truth):

    - ``top1``, ``top5``: classification accuracy over all images (top-5 is top-min(5, C));
    - ``gt_known_loc``: hits at ``t = loc_threshold`` (0.2) over images with a box;
    - ``top1_loc``: top-1 right and a hit at ``t = loc_threshold``, over images with a box;
    - ``maxboxacc``: ``max_t`` of the hit rate, ``maxboxacc_threshold`` the first ``t`` reaching it;
    - ``maxboxacc_v2_iou30/50/70``: ``max_t`` of the rate of images where some component's box
      reaches IoU 0.3/0.5/0.7; ``maxboxacc_v2`` their mean (Choe et al. 2020).

    As clovaai/wsolevaluation's ``BoxEvaluator``: the same thresholds, ``IoU >= threshold`` hits
    and empty-mask box. Where it differs this meter follows the CAM paper: the mask is ``map >= t``
    on the float map (not ``uint8(255 * map) > int(255 * t)``), "largest" is the most pixels (not
    the largest ``cv2.contourArea``), and boxes are half-open pixel edges (not inclusive corners).

    Args:
        thresholds: (T,) strictly increasing CAM thresholds; default :data:`THRESHOLDS`.
        loc_threshold: the threshold for GT-known and Top-1 Loc; must be one of ``thresholds``.
        num_threads: threads for the sweep; ``None`` uses every CPU this process may run on.
    """

    _HEAD = 5  # n_images, n_with_box, top1, top5, top1_loc

    def __init__(
        self, thresholds: np.ndarray = THRESHOLDS, loc_threshold: float = LOC_THRESHOLD, num_threads: int | None = None
    ) -> None:
        self.thresholds = _check_thresholds(thresholds)
        self.num_threads = num_threads
        matches = np.flatnonzero(np.isclose(self.thresholds, loc_threshold, rtol=0.0, atol=1e-9))
        if matches.size == 0:
            raise ValueError(f"loc_threshold={loc_threshold} is not one of the thresholds; pick one of them or add it")
        self.loc_threshold = float(loc_threshold)
        self._loc_index = int(matches[0])
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        n = self.thresholds.shape[0]
        self._counts = np.zeros(self._HEAD, dtype=np.int64)
        self._hits = np.zeros(n, dtype=np.int64)  # (T,) largest component, IoU >= 0.5
        self._hits_v2 = np.zeros((len(V2_IOU_THRESHOLDS), n), dtype=np.int64)  # (3, T) any component

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, cams: Tensor, gt_boxes: Tensor | None, image_size: tuple[int, int]) -> None:
        """Add a batch.

        Args:
            logits: (B, C) class scores.
            labels: (B,) true classes.
            cams: raw CAMs of the TRUE class, (B, h, w) or (B, 1, h, w); upsampled to
                ``image_size`` and normalised here.
            gt_boxes: (B, 4) boxes in the image's pixels (module convention), a row of NaN where
                an image has none; ``None`` when no image has one.
            image_size: ``(H, W)`` of the images the boxes refer to.

        Raises:
            ValueError: on inconsistent shapes, labels out of range or invalid boxes.
        """
        labels, boxes = _check_batch(logits, labels, cams, gt_boxes)
        n_images, n_classes = logits.shape
        logits = logits.detach().cpu().float()
        topk = logits.topk(min(5, n_classes), dim=1).indices  # (B, k)
        top1_right = (topk[:, 0] == labels).numpy()
        top5_right = (topk == labels[:, None]).any(dim=1).numpy()
        has_box = ~np.isnan(boxes[:, 0])
        self._counts[:4] += np.array([n_images, has_box.sum(), top1_right.sum(), top5_right.sum()], dtype=np.int64)
        if not has_box.any():
            return
        keep = torch.from_numpy(np.flatnonzero(has_box))
        maps = normalize_cams(cams.detach().cpu()[keep], image_size).numpy()  # (N, H, W)
        gt = boxes[has_box]
        largest, best_iou = _sweep(maps, self.thresholds, gt, self.num_threads)  # (N, T, 4), (N, T)
        hit = _iou(largest, gt[:, None, :]) >= IOU_THRESHOLD  # (N, T)
        self._hits += hit.sum(axis=0)
        for i, iou_threshold in enumerate(V2_IOU_THRESHOLDS):
            self._hits_v2[i] += (best_iou >= iou_threshold).sum(axis=0)
        self._counts[4] += int((hit[:, self._loc_index] & top1_right[has_box]).sum())

    def compute(self) -> dict[str, float | int]:
        """The metrics so far as plain Python numbers (fractions in [0, 1]).

        Fractions with nothing to count (no images, or no image with a box) are NaN.
        """
        n_images, n_box, top1, top5, top1_loc = (int(v) for v in self._counts)

        def rate(count: float, total: int) -> float:
            return float(count) / total if total else math.nan

        best_t = int(np.argmax(self._hits))
        v2 = {f"maxboxacc_v2_iou{round(100 * iou)}": rate(self._hits_v2[i].max(), n_box) for i, iou in enumerate(V2_IOU_THRESHOLDS)}
        return {
            "top1": rate(top1, n_images),
            "top5": rate(top5, n_images),
            "gt_known_loc": rate(self._hits[self._loc_index], n_box),
            "top1_loc": rate(top1_loc, n_box),
            "maxboxacc": rate(self._hits[best_t], n_box),
            "maxboxacc_threshold": float(self.thresholds[best_t]) if n_box else math.nan,
            "maxboxacc_v2": float(np.mean(list(v2.values()))) if n_box else math.nan,
            **v2,
            "n_images": n_images,
            "n_with_box": n_box,
            "n_without_box": n_images - n_box,
        }

    def state_tensor(self) -> Tensor:
        """All counts as one int64 tensor (5 + 4T,), to be summed across ranks."""
        return torch.from_numpy(np.concatenate([self._counts, self._hits, self._hits_v2.ravel()]))

    def load_state_tensor(self, state: Tensor) -> None:
        """Replace the counts by ``state`` (e.g. the all-reduced :meth:`state_tensor`)."""
        values = state.detach().cpu().reshape(-1)
        n = self.thresholds.shape[0]
        expected = self._HEAD + n * (1 + len(V2_IOU_THRESHOLDS))
        if values.numel() != expected:
            raise ValueError(f"state has {values.numel()} counts, a meter with {n} thresholds has {expected}; were the meters built alike?")
        if values.is_floating_point():
            values = values.round()
        arr = values.long().numpy().copy()
        self._counts = arr[: self._HEAD]
        self._hits = arr[self._HEAD : self._HEAD + n]
        self._hits_v2 = arr[self._HEAD + n :].reshape(len(V2_IOU_THRESHOLDS), n)

    def merge(self, other: LocalizationMeter) -> LocalizationMeter:
        """Add ``other``'s counts to this meter's; returns ``self``."""
        if not np.array_equal(self.thresholds, other.thresholds) or self._loc_index != other._loc_index:
            raise ValueError("cannot merge meters built with different thresholds or loc_threshold")
        self.load_state_tensor(self.state_tensor() + other.state_tensor())
        return self


METRIC_LABELS: dict[str, str] = {
    "loss": "loss", "top1": "top-1", "top5": "top-5", "gt_known_loc": "GT-known Loc", "top1_loc": "Top-1 Loc",
    "maxboxacc": "MaxBoxAcc", "maxboxacc_v2": "MaxBoxAccV2",
}
"""Short names of the metrics, for logs and figure legends."""

_TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("top1", "Top-1 accuracy", "classification"),
    ("top5", "Top-5 accuracy", "classification"),
    ("gt_known_loc", "GT-known Loc", "true-class CAM, t=0.2, IoU>=0.5 (Zhou et al. 2016)"),
    ("top1_loc", "Top-1 Loc", "right top-1 class and GT-known hit (Zhou et al. 2016)"),
    ("maxboxacc", "MaxBoxAcc", "best t, largest component, IoU>=0.5 (Choe et al. 2020)"),
    ("maxboxacc_v2", "MaxBoxAccV2", "mean over IoU 0.3/0.5/0.7, any component (Choe et al. 2020)"),
    ("maxboxacc_v2_iou30", "  at IoU 0.3", "best t"),
    ("maxboxacc_v2_iou50", "  at IoU 0.5", "best t"),
    ("maxboxacc_v2_iou70", "  at IoU 0.7", "best t"),
)


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """:meth:`LocalizationMeter.compute`'s metrics as a plain-text table in percent, no trailing newline.

    Absent metrics are skipped; keys it does not know (``loss``, ``split``, ...) follow the table.
    """
    lines = [f"{'metric':<16}{'value':>9}  definition", "-" * 78]
    for key, label, note in _TABLE_ROWS:
        if key not in metrics:
            continue
        value = metrics[key]
        text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"
        if key == "maxboxacc" and isinstance(metrics.get("maxboxacc_threshold"), float) and not math.isnan(metrics["maxboxacc_threshold"]):
            note = f"{note}; at t={metrics['maxboxacc_threshold']:.2f}"
        lines.append(f"{label:<16}{text:>9}  {note}")
    if "n_images" in metrics:
        lines.append("-" * 78)
        lines.append(
            f"images: {metrics['n_images']} ({metrics.get('n_with_box', '?')} with a box, "
            f"{metrics.get('n_without_box', '?')} without: classified but not scored for localisation)"
        )
    known = {key for key, _, _ in _TABLE_ROWS} | {"maxboxacc_threshold", "n_images", "n_with_box", "n_without_box"}
    extra = [f"{key}: {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}" for key in sorted(metrics) if key not in known]
    return "\n".join(lines + extra)


# --------------------------------------------------------------------------------------------
# Input checks


def _check_batch(logits: Tensor, labels: Tensor, cams: Tensor, gt_boxes: Tensor | None) -> tuple[Tensor, np.ndarray]:
    """:meth:`LocalizationMeter.update`'s checks; the labels (B,) int64 on the CPU and the boxes (B, 4) float64."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    n_images, n_classes = logits.shape
    labels = labels.detach().cpu().long().reshape(-1)
    if labels.shape[0] != n_images:
        raise ValueError(f"labels must be ({n_images},) to match logits, got shape {tuple(labels.shape)}")
    if n_images and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) for {n_classes} logits, got range [{int(labels.min())}, {int(labels.max())}]")
    if cams.shape[0] != n_images:
        raise ValueError(f"cams must hold {n_images} maps to match logits, got shape {tuple(cams.shape)}")
    if gt_boxes is None:
        return labels, np.full((n_images, 4), np.nan)
    boxes = _to_numpy64(gt_boxes)
    if boxes.shape != (n_images, 4):
        raise ValueError(f"gt_boxes must be ({n_images}, 4), got shape {boxes.shape}")
    return labels, _check_boxes(boxes, "gt_boxes")


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), two positive ints, got {size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be (H, W), two positive ints, got {size!r}")
    return height, width


def _check_thresholds(thresholds: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(thresholds, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all() or (np.diff(values) <= 0).any():
        raise ValueError(f"thresholds must be a non-empty, finite, strictly increasing 1-D sequence, got {np.asarray(thresholds)!r}")
    return values


def _check_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4) [x1, y1, x2, y2], got {boxes.shape}")
    nan = np.isnan(boxes)
    if (nan.any(axis=-1) & ~nan.all(axis=-1)).any():
        raise ValueError(f"{name} has a box that is only partly NaN; a missing box is all NaN")
    known = boxes[~nan[..., 0]]
    if not np.isfinite(known).all():
        raise ValueError(f"{name} has a box with an infinite coordinate; boxes are finite [x1, y1, x2, y2] or all NaN")
    if ((known[:, 2] < known[:, 0]) | (known[:, 3] < known[:, 1])).any():
        bad = known[(known[:, 2] < known[:, 0]) | (known[:, 3] < known[:, 1])][0].tolist()
        raise ValueError(f"{name} has a box with x2 < x1 or y2 < y1 ({bad}); boxes are [x1, y1, x2, y2]")
    return boxes


def _to_numpy64(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
