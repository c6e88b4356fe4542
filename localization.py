"""From class activation maps to boxes, and the weakly supervised localisation metrics (docs/metrics.md).

Boxes are float ``[x1, y1, x2, y2]`` in half-open pixel edges (columns ``c0..c1``, rows ``r0..r1`` give
``[c0, r0, c1 + 1, r1 + 1]``); a missing box is all NaN, an empty mask's ``[0, 0, 0, 0]`` (as wsolevaluation).
A CAM's box at threshold ``t`` (Zhou et al. 2016) bounds the largest 8-connected component of
``normalize_cams(cam) >= t``: :func:`reference_boxes` labels each threshold with scipy, :func:`sweep_boxes` finds
the same boxes in one pass (:mod:`.accel.sweep`) where numba is installed. :class:`LocalizationMeter` scores them.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from .accel.jit import HAVE_NUMBA
from .accel.sweep import run_sweep

logger = logging.getLogger(__name__)

__all__ = [
    "EIGHT_CONNECTED",
    "EMPTY_BOX",
    "IOU_THRESHOLD",
    "LOC_THRESHOLD",
    "METRIC_LABELS",
    "THRESHOLDS",
    "V2_IOU_THRESHOLDS",
    "HitCounts",
    "LocalizationMeter",
    "box_iou",
    "boxes_from_cams",
    "check_batch",
    "choose_cam_threshold",
    "format_metrics_table",
    "largest_component_box",
    "mask_to_box",
    "metrics_table_rows",
    "normalize_cams",
    "reference_best_iou",
    "reference_boxes",
    "sweep_best_iou",
    "sweep_boxes",
]

THRESHOLDS: np.ndarray = np.arange(100) / 100  # 0, 0.01, ..., 0.99: wsolevaluation's cam_curve_interval=0.01
LOC_THRESHOLD = 0.2  # the CAM paper's threshold for GT-known Loc and Top-1 Loc
IOU_THRESHOLD = 0.5  # IoU at or above which a box is a hit (GT-known Loc, Top-1 Loc, MaxBoxAcc)
V2_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)  # the IoUs MaxBoxAccV2 averages over (Choe et al. 2020)
EMPTY_BOX = np.zeros(4)  # the box of an empty set of pixels: zero area, IoU 0 with any box
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # scipy.ndimage.label's structure for 8-connectivity


def normalize_cams(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Upsample raw CAMs (B, h, w) or (B, 1, h, w), any real dtype and device, bilinearly to ``size`` ``(H, W)`` (the
    image's) and min-max normalise each to [0, 1]; a constant map becomes zeros.

    Returns:
        (B, H, W) finite maps on the input's device; float64 for float64 input, float32 otherwise.

    Raises:
        ValueError: on a wrong shape, a bad ``size``, a non-finite value or a range the dtype cannot hold.
    """
    if cams.dim() == 4 and cams.shape[1] == 1:
        cams = cams[:, 0]
    if cams.dim() != 3:
        raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
    try:
        height, width = (int(v) for v in size)
        if height <= 0 or width <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), two positive ints, got {size!r}") from None
    cams = cams if cams.dtype == torch.float64 else cams.float()
    up = F.interpolate(cams[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low
    # One check (one sync) for both: the sweep trusts these maps to be finite, and a span that overflows makes them NaN.
    if not bool(torch.isfinite(cams).all() & torch.isfinite(span).all()):
        raise ValueError(
            "cams contain NaN or infinite values, or a range too wide for their dtype; "
            "check the model's output before scoring it"
        )
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), 0.0)


def box_iou(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Intersection over union of boxes, pair by pair: 0 for boxes that only touch, NaN for a missing (all-NaN) box.

    Args:
        a, b: boxes (..., 4) ``[x1, y1, x2, y2]``, broadcastable against each other.

    Returns:
        (...,) IoUs: float64 numpy, or for tensor input a tensor on its device (float32 unless one is float64).

    Raises:
        ValueError: if a box has ``x2 < x1`` or ``y2 < y1``, is partly NaN or infinite, or the last dimension is not 4.
    """
    a64, b64 = _check_boxes(a, "a"), _check_boxes(b, "b")
    iou = np.where(np.isnan(a64[..., 0]) | np.isnan(b64[..., 0]), np.nan, _iou(a64, b64))
    tensors = [x for x in (a, b) if isinstance(x, Tensor)]
    if not tensors:
        return iou
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32
    return torch.from_numpy(np.asarray(iou)).to(device=tensors[0].device, dtype=dtype)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`box_iou` of valid float64 boxes, NaN rows not singled out."""
    # The same operations, in the same order, as the compiled sweep's: results agree bit for bit.
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = inter_w * inter_h
    union = (
        (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """The (4,) float64 bounding box of the True pixels of an (H, W) mask; ``[0, 0, 0, 0]`` if none."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64) if rows.size else EMPTY_BOX.copy()


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (K, 4) and pixel counts (K,) of the 8-connected components, in ``ndimage.label`` order."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    boxes = [[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in ndimage.find_objects(labels)]
    return np.array(boxes, dtype=np.float64).reshape(count, 4), np.bincount(labels.ravel(), minlength=count + 1)[1:]


def largest_component_box(mask: np.ndarray) -> np.ndarray:
    """The (4,) float64 box of the largest 8-connected component of an (H, W) mask; ``[0, 0, 0, 0]`` if empty.
    Of equal sizes, the first in raster order wins (the lowest ``scipy.ndimage.label`` label, as ``np.argmax``)."""
    boxes, sizes = _components(np.asarray(mask, dtype=bool))
    return boxes[int(np.argmax(sizes))] if sizes.size else EMPTY_BOX.copy()


def reference_boxes(cam: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """(T, 4) float64 :func:`largest_component_box` of ``cam >= t`` (in float64) for each of the (T,) thresholds,
    labelling ``cam`` (H, W) once per threshold: the plain version :func:`sweep_boxes` must equal."""
    return _label_sweep(np.asarray(cam, dtype=np.float64), _check_thresholds(thresholds), None)[0]


def reference_best_iou(cam: np.ndarray, gt_box: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """(T,) float64 best IoU with ``gt_box`` (4,) over all 8-connected components of ``cam >= t`` (0 if none),
    labelling ``cam`` (H, W) once per threshold: the plain version :func:`sweep_best_iou` must equal."""
    gt = _check_boxes(gt_box, "gt_box")
    return _label_sweep(np.asarray(cam, dtype=np.float64), _check_thresholds(thresholds), gt)[1]


def _label_sweep(cam: np.ndarray, thresholds: np.ndarray, gt: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, the largest component's box (T, 4) and, given ``gt``, the best IoU (T,)."""
    boxes, best = np.zeros((thresholds.shape[0], 4)), np.zeros(thresholds.shape[0])
    for i, t in enumerate(thresholds):
        found, sizes = _components(cam >= t)
        if sizes.size:
            boxes[i] = found[int(np.argmax(sizes))]
            if gt is not None:
                best[i] = _iou(found, gt).max()
    return boxes, best


def _as_maps(maps: np.ndarray | Tensor) -> np.ndarray:
    """``maps`` on the CPU as numpy; a tensor keeps float64, others widen to float32 (exact for bf16 and fp16)."""
    if isinstance(maps, Tensor):
        return maps.detach().to("cpu", torch.float64 if maps.dtype == torch.float64 else torch.float32).numpy()
    return np.asarray(maps)


def _check_maps(maps: np.ndarray) -> np.ndarray:
    """(B, H, W) maps as the finite, contiguous float32 or float64 array the sweep trusts."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {maps.shape}")
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float64)  # exact for every integer and float16 value
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values; a map must be finite to be thresholded")
    return np.ascontiguousarray(maps)


@functools.cache
def _warn_no_numba() -> None:
    logger.warning(
        "numba is not installed: the localisation sweep labels each threshold with scipy (slower); pip install numba"
    )


def _sweep(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray | None, num_threads: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxes (B, T, 4) and, given ``gt_boxes`` (B, 4), best IoUs (B, T) of checked maps and thresholds."""
    if HAVE_NUMBA:
        return run_sweep(maps, thresholds, gt_boxes, num_threads)
    _warn_no_numba()
    boxes, best = np.zeros((maps.shape[0], thresholds.shape[0], 4)), np.zeros((maps.shape[0], thresholds.shape[0]))
    for i, cam in enumerate(maps):
        boxes[i], best[i] = _label_sweep(cam.astype(np.float64), thresholds, None if gt_boxes is None else gt_boxes[i])
    return boxes, (None if gt_boxes is None else best)


def sweep_boxes(
    maps: np.ndarray | Tensor, thresholds: np.ndarray = THRESHOLDS, num_threads: int | None = None
) -> np.ndarray:
    """Box of the largest 8-connected component of ``map >= t`` (in float64) per threshold; equals
    :func:`reference_boxes`.

    Args:
        maps: (B, H, W) or (H, W) finite maps (normally :func:`normalize_cams` output), an array or a tensor
            of any float dtype on any device (bf16 and fp16 compared as float32).
        thresholds: (T,) strictly increasing thresholds.
        num_threads: threads sharing the batch; ``None`` uses every CPU this process may run on.

    Returns:
        (B, T, 4) or (T, 4) float64 boxes; ``[0, 0, 0, 0]`` where the mask is empty.

    Raises:
        ValueError: on a wrong shape, non-finite values or unsorted thresholds.
    """
    arr = _as_maps(maps)
    single = arr.ndim == 2
    boxes, _ = _sweep(_check_maps(arr[None] if single else arr), _check_thresholds(thresholds), None, num_threads)
    return boxes[0] if single else boxes


def sweep_best_iou(
    maps: np.ndarray | Tensor, gt_boxes: np.ndarray, thresholds: np.ndarray = THRESHOLDS, num_threads: int | None = None
) -> np.ndarray:
    """Best IoU with the ground truth over the 8-connected components of ``map >= t`` per threshold (MaxBoxAccV2).

    Equals :func:`reference_best_iou`. wsolevaluation boxes the mask's contours: an outer contour has its component's
    box (hole outlines are not matched here).

    Args:
        maps, thresholds, num_threads: as :func:`sweep_boxes`, with maps (B, H, W).
        gt_boxes: (B, 4) ground-truth boxes; a missing (all-NaN) box gives a row of NaN.

    Returns:
        (B, T) float64 IoUs; 0 where the mask is empty.
    """
    arr, gt = _as_maps(maps), _check_boxes(gt_boxes, "gt_boxes")
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
        cams, size: raw maps (B, h, w) or (B, 1, h, w) and the image's ``(H, W)``, as :func:`normalize_cams`.
        threshold: in [0, 1]; the paper uses 0.2.

    Returns:
        (B, 4) float32 boxes on the input's device, in the image's pixels.
    """
    maps = normalize_cams(cams.detach(), size).cpu().numpy()  # finite, contiguous: the sweep trusts it
    boxes = _sweep(maps, _check_thresholds(np.array([float(threshold)])), None, None)[0][:, 0]
    return torch.from_numpy(boxes).to(device=cams.device, dtype=torch.float32)


class HitCounts:
    """The counts both meters keep and how they become metrics; a meter fills them in its ``update``: ``counts``
    (images, those with a box, top-1 and top-5 hits), and per threshold (T,) ``hits``, ``hits_top1`` and ``hits_v2``
    (3, T). A subclass names what its thresholds are built from (``BUILT_FROM``) and whether ``compute`` reports the
    nearest threshold (``REPORT_NEAREST``)."""

    _HEAD = 4  # n_images, n_with_box, top1, top5
    BUILT_FROM = "thresholds"  # what two meters that cannot merge differ in, for the error
    REPORT_NEAREST = False  # compute(cam_threshold) reports the nearest of the thresholds, not cam_threshold itself

    def __init__(self, thresholds: np.ndarray, loc_threshold: float, choices: str) -> None:
        matches = np.flatnonzero(np.isclose(thresholds, loc_threshold, rtol=0.0, atol=1e-9))
        if matches.size == 0:
            raise ValueError(f"loc_threshold={loc_threshold} is not one of {choices}")
        self.thresholds, self.loc_threshold, self._loc_index = thresholds, float(loc_threshold), int(matches[0])
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        n = self.thresholds.shape[0]
        self.counts = np.zeros(self._HEAD, dtype=np.int64)
        self.hits = np.zeros(n, dtype=np.int64)  # (T,) largest region, IoU >= 0.5
        self.hits_top1 = np.zeros(n, dtype=np.int64)  # (T,) those whose top-1 class is right too
        self.hits_v2 = np.zeros((len(V2_IOU_THRESHOLDS), n), dtype=np.int64)  # (3, T) any region

    def count_classes(self, logits: Tensor, labels: Tensor, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Count a checked batch's images, boxes and top-1/top-5 hits; which images are right at top-1 and have a
        box (B,)."""
        topk = logits.detach().cpu().float().topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        top1_right, has_box = (topk[:, 0] == labels).numpy(), ~np.isnan(boxes[:, 0])
        top5_right = (topk == labels[:, None]).any(dim=1).numpy()
        self.counts += np.array([logits.shape[0], has_box.sum(), top1_right.sum(), top5_right.sum()], dtype=np.int64)
        return top1_right, has_box

    def compute(self, cam_threshold: float | None = None) -> dict[str, float | int]:
        """The metrics so far as plain Python numbers (fractions in [0, 1]; NaN with nothing to count).

        Args:
            cam_threshold: also report GT-known and Top-1 Loc at the one of :attr:`thresholds` nearest to it.
        """
        n_images, n_box, top1, top5 = (int(v) for v in self.counts)

        def rate(count: float, total: int) -> float:
            return float(count) / total if total else math.nan

        best_t = int(np.argmax(self.hits))
        v2 = {
            f"maxboxacc_v2_iou{round(100 * iou)}": rate(hits.max(), n_box)
            for iou, hits in zip(V2_IOU_THRESHOLDS, self.hits_v2)
        }
        out: dict[str, float | int] = {
            "top1": rate(top1, n_images),
            "top5": rate(top5, n_images),
            "gt_known_loc": rate(self.hits[self._loc_index], n_box),
            "top1_loc": rate(self.hits_top1[self._loc_index], n_box),
            "maxboxacc": rate(self.hits[best_t], n_box),
            "maxboxacc_threshold": float(self.thresholds[best_t]) if n_box else math.nan,
            "maxboxacc_v2": float(np.mean(list(v2.values()))) if n_box else math.nan,
            **v2,
            "n_images": n_images,
            "n_with_box": n_box,
            "n_without_box": n_images - n_box,
        }
        if cam_threshold is not None:
            j = int(np.argmin(np.abs(self.thresholds - float(cam_threshold))))
            out.update(
                cam_threshold=float(self.thresholds[j] if self.REPORT_NEAREST else cam_threshold),
                gt_known_loc_at_cam_threshold=rate(self.hits[j], n_box),
                top1_loc_at_cam_threshold=rate(self.hits_top1[j], n_box),
            )
        return out

    def state_tensor(self) -> Tensor:
        """All counts as one int64 tensor (4 + 5T,), to be summed across ranks."""
        return torch.from_numpy(np.concatenate([self.counts, self.hits, self.hits_top1, self.hits_v2.ravel()]))

    def load_state_tensor(self, state: Tensor) -> None:
        """Replace the counts by ``state`` (e.g. the all-reduced :meth:`state_tensor`)."""
        values, n = state.detach().cpu().reshape(-1), self.thresholds.shape[0]
        expected = self._HEAD + n * (2 + len(V2_IOU_THRESHOLDS))
        if values.numel() != expected:
            raise ValueError(
                f"state has {values.numel()} counts, a meter with {n} thresholds has {expected}; "
                "were the meters built alike?"
            )
        arr = (values.round() if values.is_floating_point() else values).long().numpy().copy()
        self.counts, rows = arr[: self._HEAD], arr[self._HEAD :].reshape(2 + len(V2_IOU_THRESHOLDS), n)
        self.hits, self.hits_top1, self.hits_v2 = rows[0], rows[1], rows[2:]

    def merge(self, other: HitCounts) -> HitCounts:
        """Add ``other``'s counts to this meter's; returns ``self``."""
        if not np.array_equal(self.thresholds, other.thresholds) or self._loc_index != other._loc_index:
            raise ValueError(f"cannot merge meters built with different {self.BUILT_FROM} or loc_threshold")
        self.load_state_tensor(self.state_tensor() + other.state_tensor())
        return self


class LocalizationMeter(HitCounts):
    """Classification and weakly supervised localisation metrics, accumulated batch by batch as hit counts.

    ``top1``/``top5`` (top-min(5, C)) are over all images, the rest over images with a box (the others count in
    ``n_without_box``). A hit: IoU >= 0.5 of the largest component's box. ``gt_known_loc``: hits at ``loc_threshold``;
    ``top1_loc``: those also right at top-1; ``maxboxacc``: the best hit rate over ``t`` (first reached at
    ``maxboxacc_threshold``); ``maxboxacc_v2_iou30/50/70``: the best rate over ``t`` of any component reaching that
    IoU, ``maxboxacc_v2`` their mean (Choe et al. 2020). As wsolevaluation's ``BoxEvaluator``, except that (as the
    CAM paper) masks are ``map >= t`` on the float map and "largest" means most pixels. Ranks combine by summing
    :meth:`state_tensor` into :meth:`load_state_tensor`, or by :meth:`merge`.

    Args:
        thresholds: (T,) strictly increasing CAM thresholds.
        loc_threshold: the threshold for GT-known and Top-1 Loc; must be one of ``thresholds``.
        num_threads: threads for the sweep; ``None`` uses every CPU this process may run on.
    """

    def __init__(
        self, thresholds: np.ndarray = THRESHOLDS, loc_threshold: float = LOC_THRESHOLD, num_threads: int | None = None
    ) -> None:
        super().__init__(_check_thresholds(thresholds), loc_threshold, "the thresholds; pick one of them or add it")
        self.num_threads = num_threads

    @torch.no_grad()
    def update(
        self, logits: Tensor, labels: Tensor, cams: Tensor, gt_boxes: Tensor | None, image_size: tuple[int, int]
    ) -> None:
        """Add a batch.

        Args:
            logits, labels: (B, C) class scores and (B,) true classes.
            cams: raw CAMs of the TRUE class, (B, h, w) or (B, 1, h, w); upsampled and normalised here.
            gt_boxes: (B, 4) boxes in the image's pixels, a row of NaN where an image has none; ``None`` if none has.
            image_size: ``(H, W)`` of the images the boxes refer to.

        Raises:
            ValueError: on inconsistent shapes, labels out of range or invalid boxes.
        """
        labels, boxes = check_batch(logits, labels, cams, gt_boxes)
        top1_right, has_box = self.count_classes(logits, labels, boxes)
        if not has_box.any():
            return
        maps = normalize_cams(
            cams.detach().cpu()[torch.from_numpy(np.flatnonzero(has_box))], image_size
        ).numpy()  # (N, H, W)
        gt = boxes[has_box]
        largest, best_iou = _sweep(maps, self.thresholds, gt, self.num_threads)  # (N, T, 4), (N, T)
        hit = _iou(largest, gt[:, None, :]) >= IOU_THRESHOLD  # (N, T)
        self.hits += hit.sum(axis=0)
        self.hits_v2 += (best_iou >= np.array(V2_IOU_THRESHOLDS)[:, None, None]).sum(axis=1)  # (3, N, T) -> (3, T)
        self.hits_top1 += (hit & top1_right[has_box, None]).sum(axis=0)

    def box_accuracy_curve(self) -> np.ndarray:
        """(T,) float64 share of the images with a box hit at each threshold (MaxBoxAcc is its maximum)."""
        return self.hits / max(int(self.counts[1]), 1)


def choose_cam_threshold(curve: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> float:
    """The threshold at the centre of the widest run of thresholds where the box accuracy ``curve`` (T,) is at its
    maximum (the first such run of equal width): of equally good thresholds, neither the loosest nor the tightest
    box."""
    best = np.flatnonzero(curve == np.max(curve))
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)  # consecutive indices at the maximum
    widest = max(runs, key=len)
    return float(thresholds[widest[(len(widest) - 1) // 2]])


METRIC_LABELS: dict[str, str] = {  # short names of the metrics, for logs and figure legends
    "loss": "loss",
    "top1": "top-1",
    "top5": "top-5",
    "gt_known_loc": "GT-known Loc",
    "top1_loc": "Top-1 Loc",
    "maxboxacc": "MaxBoxAcc",
    "maxboxacc_v2": "MaxBoxAccV2",
    "gt_known_loc_at_cam_threshold": "GT-known Loc*",
    "top1_loc_at_cam_threshold": "Top-1 Loc*",
}

_TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("top1", "Top-1 accuracy", "classification"),
    ("top5", "Top-5 accuracy", "classification"),
    ("gt_known_loc", "GT-known Loc", "true-class CAM, t=0.2, IoU>=0.5 (Zhou et al. 2016)"),
    ("top1_loc", "Top-1 Loc", "right top-1 class and GT-known hit (Zhou et al. 2016)"),
    ("gt_known_loc_at_cam_threshold", "GT-known Loc*", "as GT-known Loc, at the CAM threshold t* chosen on validation"),
    ("top1_loc_at_cam_threshold", "Top-1 Loc*", "as Top-1 Loc, at t*: the number to quote"),
    ("maxboxacc", "MaxBoxAcc", "best t, largest component, IoU>=0.5 (Choe et al. 2020)"),
    ("maxboxacc_v2", "MaxBoxAccV2", "mean over IoU 0.3/0.5/0.7, any component (Choe et al. 2020)"),
    *((f"maxboxacc_v2_iou{iou}", f"  at IoU 0.{iou // 10}", "best t") for iou in (30, 50, 70)),
)


def metrics_table_rows(metrics: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """:func:`format_metrics_table`'s content: ``(label, value, definition)`` rows of the metrics present, and the lines
    after them (the image counts, then the keys it does not know: ``loss``, ``split``, ...)."""
    rows = []
    for key, label, note in (row for row in _TABLE_ROWS if row[0] in metrics):
        value = metrics[key]
        text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"
        if (
            key == "maxboxacc"
            and isinstance(metrics.get("maxboxacc_threshold"), float)
            and not math.isnan(metrics["maxboxacc_threshold"])
        ):
            note = f"{note}; at t={metrics['maxboxacc_threshold']:.2f}"
        if key == "gt_known_loc_at_cam_threshold":
            note = f"{note} (t*={metrics['cam_threshold']:.2f}, {metrics.get('cam_threshold_source', 'val')})"
        rows.append((label, text, note))
    after = []
    if "n_images" in metrics:
        after.append(
            f"images: {metrics['n_images']} ({metrics.get('n_with_box', '?')} with a box, "
            f"{metrics.get('n_without_box', '?')} without: classified but not scored for localisation)"
        )
    known = {key for key, _, _ in _TABLE_ROWS} | {
        "maxboxacc_threshold",
        "n_images",
        "n_with_box",
        "n_without_box",
        "cam_threshold",
        "cam_threshold_source",
    }
    after += [
        f"{key}: {metrics[key]:.4f}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}"
        for key in sorted(metrics)
        if key not in known
    ]
    return rows, after


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """:meth:`LocalizationMeter.compute`'s metrics as a plain-text table in percent, no trailing newline.

    Absent metrics are skipped; keys it does not know (``loss``, ``split``, ...) follow the table.
    """
    rows, after = metrics_table_rows(metrics)
    lines = [
        f"{'metric':<16}{'value':>9}  definition",
        "-" * 78,
        *(f"{label:<16}{text:>9}  {note}" for label, text, note in rows),
    ]
    return "\n".join(lines + (["-" * 78] if "n_images" in metrics else []) + after)


def check_batch(logits: Tensor, labels: Tensor, cams: Tensor, gt_boxes: Tensor | None) -> tuple[Tensor, np.ndarray]:
    """:meth:`LocalizationMeter.update`'s checks; the labels (B,) int64 on the CPU and the boxes (B, 4) float64."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    n_images, n_classes = logits.shape
    labels = labels.detach().cpu().long().reshape(-1)
    if labels.shape[0] != n_images:
        raise ValueError(f"labels must be ({n_images},) to match logits, got shape {tuple(labels.shape)}")
    if n_images and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}) for {n_classes} logits, "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    if cams.shape[0] != n_images:
        raise ValueError(f"cams must hold {n_images} maps to match logits, got shape {tuple(cams.shape)}")
    if gt_boxes is None:
        return labels, np.full((n_images, 4), np.nan)
    if tuple(gt_boxes.shape) != (n_images, 4):
        raise ValueError(f"gt_boxes must be ({n_images}, 4), got shape {tuple(gt_boxes.shape)}")
    return labels, _check_boxes(gt_boxes, "gt_boxes")


def _check_thresholds(thresholds: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(thresholds, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all() or (np.diff(values) <= 0).any():
        raise ValueError(
            f"thresholds must be a non-empty, finite, strictly increasing 1-D sequence, got {np.asarray(thresholds)!r}"
        )
    return values


def _check_boxes(boxes: np.ndarray | Tensor, name: str) -> np.ndarray:
    """``boxes`` (..., 4) as float64 numpy, checked: each finite with ``x1 <= x2``, ``y1 <= y2``, or all NaN."""
    boxes = boxes.detach().cpu().double().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes, dtype=np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4) [x1, y1, x2, y2], got {boxes.shape}")
    nan = np.isnan(boxes)
    if (nan.any(axis=-1) & ~nan.all(axis=-1)).any():
        raise ValueError(f"{name} has a box that is only partly NaN; a missing box is all NaN")
    known = boxes[~nan[..., 0]]
    if not np.isfinite(known).all():
        raise ValueError(f"{name} has a box with an infinite coordinate; boxes are finite [x1, y1, x2, y2] or all NaN")
    inverted = (known[:, 2] < known[:, 0]) | (known[:, 3] < known[:, 1])
    if inverted.any():
        raise ValueError(
            f"{name} has a box with x2 < x1 or y2 < y1 ({known[inverted][0].tolist()}); boxes are [x1, y1, x2, y2]"
        )
    return boxes
