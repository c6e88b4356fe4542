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

Every threshold at once: :func:`sweep_boxes` derives the largest component's box for all 100
thresholds from one pass over the pixels in falling order with a union-find (compiled with numba
when it is installed), instead of 100 labellings; :func:`reference_boxes` is the plain
per-threshold ``scipy.ndimage.label`` it must equal exactly.

Metrics (:class:`LocalizationMeter`), a hit being IoU >= 0.5 with the ground-truth box:

- top-1 / top-5 classification accuracy;
- GT-known Loc: the box of the true class's CAM at ``t = 0.2`` is a hit;
- Top-1 Loc: the top-1 class is right and the box at ``t = 0.2`` is a hit;
- MaxBoxAcc: the best GT-known Loc over ``t`` in :data:`THRESHOLDS`, with the ``t`` that gave it;
- MaxBoxAccV2: for IoU 0.3, 0.5 and 0.7 the best accuracy over ``t`` where the box of any
  8-connected component may match, averaged over the three IoUs.

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

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from .accel.jit import HAVE_NUMBA, njit, run_in_ranges  # without numba the same functions run as plain Python, ~100x slower

logger = logging.getLogger(__name__)

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

_warned_no_numba = False


# --------------------------------------------------------------------------------------------
# Maps and boxes


def normalize_cams(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Upsample CAMs bilinearly to ``size`` and min-max normalise each to [0, 1].

    ``out = (up - min(up)) / (max(up) - min(up))`` per map, where ``up`` is the map upsampled with
    ``align_corners=False``; the minimum becomes exactly 0 and the maximum exactly 1. A constant map
    has no range and becomes all zeros (never NaN). The whole batch is one interpolation.

    Args:
        cams: raw maps, (B, h, w) or (B, 1, h, w), any real dtype and device.
        size: ``(H, W)`` of the image the boxes are wanted in.

    Returns:
        (B, H, W) on the input's device; float64 for float64 input, float32 otherwise.

    Raises:
        ValueError: on a wrong shape, a bad ``size`` or a non-finite value.
    """
    if cams.dim() == 4 and cams.shape[1] == 1:
        cams = cams[:, 0]
    if cams.dim() != 3:
        raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
    height, width = _check_size(size)
    if cams.dtype != torch.float64:
        cams = cams.float()
    if cams.numel() and not bool(torch.isfinite(cams).all()):
        raise ValueError("cams contain NaN or infinite values; check the model's output before scoring it")
    up = F.interpolate(cams[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low
    # A flat map has no "where": zeros, and the division never sees a zero denominator.
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), 0.0)


def box_iou(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Intersection over union of boxes, pair by pair.

    ``iou = inter / (area_a + area_b - inter)`` with ``area = (x2 - x1) * (y2 - y1)`` (the
    half-open pixel-edge convention of this module, so boxes that only touch have IoU 0). The
    shapes broadcast: (N, 4) with (N, 4), (N, 4) with (4,), ... A pair whose union has zero area
    (two zero-area boxes) has IoU 0. A pair in which either box is missing (all NaN) has IoU NaN,
    which fails every ``iou >= threshold`` test.

    Args:
        a: boxes (..., 4), ``[x1, y1, x2, y2]``.
        b: boxes (..., 4), broadcastable against ``a``.

    Returns:
        (...,) IoUs in [0, 1] or NaN: a float64 array for numpy input; for tensor input a tensor
        on ``a``'s device, float32 unless an input is float64.

    Raises:
        ValueError: if a box has ``x2 < x1`` or ``y2 < y1``, is only partly NaN, is infinite, or
            the last dimension is not 4.
    """
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        ref = a if isinstance(a, Tensor) else b
        dtype = torch.float64 if torch.float64 in (getattr(a, "dtype", None), getattr(b, "dtype", None)) else torch.float32
        out = box_iou(_to_numpy64(a), _to_numpy64(b))
        return torch.from_numpy(np.asarray(out)).to(device=ref.device, dtype=dtype)
    a64 = _check_boxes(np.asarray(a, dtype=np.float64), "a")
    b64 = _check_boxes(np.asarray(b, dtype=np.float64), "b")
    missing = np.isnan(a64[..., 0]) | np.isnan(b64[..., 0])
    # The same operations, in the same order, as _iou in the compiled sweep: results agree bit for bit.
    inter_w = np.clip(np.minimum(a64[..., 2], b64[..., 2]) - np.maximum(a64[..., 0], b64[..., 0]), 0.0, None)
    inter_h = np.clip(np.minimum(a64[..., 3], b64[..., 3]) - np.maximum(a64[..., 1], b64[..., 1]), 0.0, None)
    inter = inter_w * inter_h
    union = (a64[..., 2] - a64[..., 0]) * (a64[..., 3] - a64[..., 1]) + (b64[..., 2] - b64[..., 0]) * (b64[..., 3] - b64[..., 1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(missing, np.nan, iou)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """The bounding box of the True pixels of a 2-D mask.

    Pixels in columns ``c0..c1`` and rows ``r0..r1`` give ``[c0, r0, c1 + 1, r1 + 1]``; an empty
    mask gives :data:`EMPTY_BOX` ``[0, 0, 0, 0]``.

    Args:
        mask: (H, W) boolean (or 0/1) array.

    Returns:
        (4,) float64 box.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return EMPTY_BOX.copy()
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def largest_component_box(mask: np.ndarray) -> np.ndarray:
    """The bounding box of the largest 8-connected component of a mask (``scipy.ndimage.label``).

    Ties in size go to the component whose first pixel in raster order (row by row) comes first,
    which is the one ``scipy.ndimage.label`` numbers lowest. An empty mask gives ``[0, 0, 0, 0]``.

    Args:
        mask: (H, W) boolean array.

    Returns:
        (4,) float64 box.
    """
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=EIGHT_CONNECTED)
    if count == 0:
        return EMPTY_BOX.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]  # argmax: the first of equal sizes
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float64)


def reference_boxes(cam: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Largest-component box of ``cam >= t`` for each threshold, one labelling per threshold.

    The slow, obviously right counterpart of :func:`sweep_boxes` (for tests and benchmarks). The
    comparison is made in float64, so a float32 map is compared exactly with the float64
    thresholds.

    Args:
        cam: (H, W) map.
        thresholds: (T,) increasing thresholds.

    Returns:
        (T, 4) float64 boxes.
    """
    cam64 = np.asarray(cam, dtype=np.float64)
    return np.stack([largest_component_box(cam64 >= t) for t in _check_thresholds(thresholds)])


def reference_best_iou(cam: np.ndarray, gt_box: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Best IoU with ``gt_box`` over the boxes of all 8-connected components of ``cam >= t``.

    The per-threshold ``scipy.ndimage.label`` + ``find_objects`` counterpart of
    :func:`sweep_best_iou` (MaxBoxAccV2's matching rule). No component gives 0.

    Args:
        cam: (H, W) map.
        gt_box: (4,) ground-truth box.
        thresholds: (T,) increasing thresholds.

    Returns:
        (T,) float64 IoUs.
    """
    cam64 = np.asarray(cam, dtype=np.float64)
    gt = np.asarray(gt_box, dtype=np.float64)
    best = []
    for t in _check_thresholds(thresholds):
        labels, count = ndimage.label(cam64 >= t, structure=EIGHT_CONNECTED)
        if count == 0:
            best.append(0.0)
            continue
        boxes = np.array([[cols.start, rows.start, cols.stop, rows.stop] for rows, cols in ndimage.find_objects(labels)], dtype=np.float64)
        best.append(float(box_iou(boxes, gt).max()))
    return np.array(best)


# --------------------------------------------------------------------------------------------
# The one-pass sweep: compiled with numba where installed, plain Python otherwise

# Offsets of the 8 neighbours, in the order of the bits of a neighbourhood mask.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# Per-component record in the union-find: one row of _STRIDE int32 per root.
_SIZE, _FIRST, _ROW0, _ROW1, _COL0, _COL1, _STAMP = 0, 1, 2, 3, 4, 5, 6
_STRIDE = 8


def _neighbour_groups() -> np.ndarray:
    """Lookup table ``(256, 5)``: for a mask of already-added neighbours, one per group.

    Two added neighbours of a pixel that touch each other (8-connectivity) were united when the
    later of them was added, so they are in the same set already; a pixel need look up only one
    neighbour per touching group, usually one instead of up to eight. Row ``m`` holds the number
    of groups (at most 4, the four lone corners) and then the bit index of each group's first
    neighbour.
    """
    table = np.zeros((256, 5), dtype=np.int64)
    for mask in range(256):
        on = [i for i in range(8) if mask >> i & 1]
        group = {i: i for i in on}
        for i in on:
            for j in on:
                if max(abs(_NEIGHBOURS[i][0] - _NEIGHBOURS[j][0]), abs(_NEIGHBOURS[i][1] - _NEIGHBOURS[j][1])) <= 1:
                    gi, gj = group[i], group[j]
                    for key, value in group.items():
                        if value == gj:
                            group[key] = gi
        firsts = sorted({min(k for k in on if group[k] == g) for g in set(group.values())})
        table[mask, 0] = len(firsts)
        table[mask, 1 : 1 + len(firsts)] = firsts
    return table


_GROUPS = _neighbour_groups()


@njit(cache=True)
def _find(parent: np.ndarray, node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]  # path halving keeps the trees flat
        node = parent[node]
    return node


@njit(cache=True)
def _iou(ax1: float, ay1: float, ax2: float, ay2: float, bx1: float, by1: float, bx2: float, by2: float) -> float:
    inter_w = min(ax2, bx2) - max(ax1, bx1)
    if inter_w < 0.0:
        inter_w = 0.0
    inter_h = min(ay2, by2) - max(ay1, by1)
    if inter_h < 0.0:
        inter_h = 0.0
    inter = inter_w * inter_h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union > 0.0:
        return inter / union
    return 0.0


@njit(cache=True)
def _component_iou(stats: np.ndarray, root: int, gt: np.ndarray) -> float:
    s = root * _STRIDE
    return _iou(
        np.float64(stats[s + _COL0]), np.float64(stats[s + _ROW0]), np.float64(stats[s + _COL1] + 1),
        np.float64(stats[s + _ROW1] + 1), gt[0], gt[1], gt[2], gt[3],
    )


@njit(cache=True)
def _heap_push(keys: np.ndarray, nodes: np.ndarray, stamps: np.ndarray, length: int, key: float, node: int, stamp: int) -> int:
    i = length
    while i > 0:
        up = (i - 1) >> 1
        if keys[up] >= key:
            break
        keys[i] = keys[up]
        nodes[i] = nodes[up]
        stamps[i] = stamps[up]
        i = up
    keys[i] = key
    nodes[i] = node
    stamps[i] = stamp
    return length + 1


@njit(cache=True)
def _heap_pop(keys: np.ndarray, nodes: np.ndarray, stamps: np.ndarray, length: int) -> int:
    length -= 1
    if length == 0:
        return 0
    key = keys[length]
    node = nodes[length]
    stamp = stamps[length]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= length:
            break
        if child + 1 < length and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        keys[i] = keys[child]
        nodes[i] = nodes[child]
        stamps[i] = stamps[child]
        i = child
    keys[i] = key
    nodes[i] = node
    stamps[i] = stamp
    return length


@njit(cache=True)
def _pixel_levels(cam: np.ndarray, thresholds: np.ndarray, level: np.ndarray, counts: np.ndarray) -> None:
    """``level[p]``: the last ``t`` with ``thresholds[t] <= float64(cam[p])`` (-1 if none); ``counts`` per level.

    The same answer as ``np.searchsorted(thresholds, value, side="right") - 1``, found from a
    guess by linear interpolation and corrected by exact comparisons, so it stays exact for any
    increasing thresholds and takes one or two comparisons for evenly spaced ones.
    """
    height, width = cam.shape
    n_levels = thresholds.shape[0]
    first = thresholds[0]
    scale = (n_levels - 1) / (thresholds[n_levels - 1] - first) if n_levels > 1 else 0.0
    counts[:] = 0
    for r in range(height):
        for c in range(width):
            value = np.float64(cam[r, c])
            guess = (value - first) * scale
            if guess < 0.0:
                lev = -1
            elif guess >= n_levels - 1:
                lev = n_levels - 1
            else:
                lev = int(guess)
            while lev + 1 < n_levels and thresholds[lev + 1] <= value:
                lev += 1
            while lev >= 0 and thresholds[lev] > value:
                lev -= 1
            level[r * width + c] = lev
            if lev >= 0:
                counts[lev] += 1


@njit(cache=True, nogil=True)
def _sweep_kernel(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray, with_iou: bool, groups: np.ndarray,
    out_boxes: np.ndarray, out_iou: np.ndarray,
) -> None:
    """Fill ``out_boxes`` (B, T, 4) and, when ``with_iou``, ``out_iou`` (B, T) for maps (B, H, W).

    Pixel ``p`` is in mask ``t`` iff ``float64(map[p]) >= thresholds[t]``, so mask ``t`` holds the
    pixels whose level (:func:`_pixel_levels`) is ``>= t``. Pixels are bucketed by level (counting
    sort; raster order within a bucket) and added from the top level down, each joining a
    union-find set with its already-added 8-neighbours. Once every pixel of level ``t`` is in, the
    sets are exactly the 8-connected components of mask ``t``, and both answers for ``t`` are read.

    Largest component: sets only grow and merge, so the largest is tracked in O(1) per pixel (a
    largest set that merges becomes part of a strictly larger one). Of equal sizes, the set whose
    first pixel in raster order comes first wins: ``scipy.ndimage.label`` numbers components in
    raster order of their first pixel and ``argmax`` takes the lowest label.

    Best IoU over all components (MaxBoxAccV2): a maximum under deletions. Each time a set's box
    changes its stamp goes up and the new IoU is pushed to a max-heap with the stamp; an entry is
    stale once its node is no longer a root or its stamp moved on, and stale tops are popped
    lazily when a level is read.

    The image is padded by a never-added border, so neighbours need no bounds checks.
    """
    n_images, height, width = maps.shape
    n_levels = thresholds.shape[0]
    pw = width + 2
    n_padded = (height + 2) * pw
    level = np.empty(height * width, np.int32)
    counts = np.empty(n_levels, np.int64)
    fill = np.empty(n_levels, np.int64)
    order = np.empty(height * width, np.int32)
    added = np.zeros(n_padded, np.uint8)
    parent = np.empty(n_padded, np.int32)
    stats = np.empty(n_padded * _STRIDE, np.int32)
    offsets = np.array([-pw - 1, -pw, -pw + 1, -1, 1, pw - 1, pw, pw + 1], np.int64)
    heap_keys = np.empty(n_padded if with_iou else 0, np.float64)
    heap_nodes = np.empty(n_padded if with_iou else 0, np.int32)
    heap_stamps = np.empty(n_padded if with_iou else 0, np.int32)
    for b in range(n_images):
        _pixel_levels(maps[b], thresholds, level, counts)
        position = 0
        for t in range(n_levels - 1, -1, -1):
            fill[t] = position
            position += counts[t]
        for p in range(height * width):
            lev = level[p]
            if lev >= 0:
                order[fill[lev]] = p
                fill[lev] += 1
        added[:] = 0
        gt = gt_boxes[b]
        best = -1
        best_size = 0
        best_first = 0
        heap_len = 0
        k = 0
        for t in range(n_levels - 1, -1, -1):
            stop = k + counts[t]
            while k < stop:
                raster = order[k]
                k += 1
                r = raster // width
                c = raster - r * width
                p = (r + 1) * pw + c + 1
                mask = (
                    added[p - pw - 1] | (added[p - pw] << 1) | (added[p - pw + 1] << 2) | (added[p - 1] << 3)
                    | (added[p + 1] << 4) | (added[p + pw - 1] << 5) | (added[p + pw] << 6) | (added[p + pw + 1] << 7)
                )
                added[p] = 1
                n_groups = groups[mask, 0]
                changed = True
                if n_groups == 0:
                    root = p
                    parent[p] = p
                    s = p * _STRIDE
                    stats[s + _SIZE] = 1
                    stats[s + _FIRST] = p
                    stats[s + _ROW0] = r
                    stats[s + _ROW1] = r
                    stats[s + _COL0] = c
                    stats[s + _COL1] = c
                    stats[s + _STAMP] = 0
                else:
                    root = _find(parent, p + offsets[groups[mask, 1]])
                    parent[p] = root
                    s = root * _STRIDE
                    stats[s + _SIZE] += 1
                    stats[s + _FIRST] = min(stats[s + _FIRST], p)
                    changed = r < stats[s + _ROW0] or r > stats[s + _ROW1] or c < stats[s + _COL0] or c > stats[s + _COL1]
                    if changed:
                        stats[s + _ROW0] = min(stats[s + _ROW0], r)
                        stats[s + _ROW1] = max(stats[s + _ROW1], r)
                        stats[s + _COL0] = min(stats[s + _COL0], c)
                        stats[s + _COL1] = max(stats[s + _COL1], c)
                    for g in range(2, n_groups + 1):
                        other = _find(parent, p + offsets[groups[mask, g]])
                        if other == root:
                            continue
                        # Union by size; the surviving root takes the other's size, first pixel and extent.
                        if stats[other * _STRIDE + _SIZE] > stats[root * _STRIDE + _SIZE]:
                            root, other = other, root
                        sr = root * _STRIDE
                        so = other * _STRIDE
                        parent[other] = root
                        stats[sr + _SIZE] += stats[so + _SIZE]
                        stats[sr + _FIRST] = min(stats[sr + _FIRST], stats[so + _FIRST])
                        if (
                            stats[so + _ROW0] < stats[sr + _ROW0] or stats[so + _ROW1] > stats[sr + _ROW1]
                            or stats[so + _COL0] < stats[sr + _COL0] or stats[so + _COL1] > stats[sr + _COL1]
                        ):
                            changed = True
                            stats[sr + _ROW0] = min(stats[sr + _ROW0], stats[so + _ROW0])
                            stats[sr + _ROW1] = max(stats[sr + _ROW1], stats[so + _ROW1])
                            stats[sr + _COL0] = min(stats[sr + _COL0], stats[so + _COL0])
                            stats[sr + _COL1] = max(stats[sr + _COL1], stats[so + _COL1])
                s = root * _STRIDE
                if stats[s + _SIZE] > best_size or (stats[s + _SIZE] == best_size and stats[s + _FIRST] < best_first):
                    best = root
                    best_size = stats[s + _SIZE]
                    best_first = stats[s + _FIRST]
                if with_iou and changed:
                    stats[s + _STAMP] += 1
                    iou = _component_iou(stats, root, gt)
                    if iou > 0.0:  # a zero never beats the 0 that "no overlapping component" gives
                        heap_len = _heap_push(heap_keys, heap_nodes, heap_stamps, heap_len, iou, root, stats[s + _STAMP])
            if best >= 0:
                s = best * _STRIDE
                out_boxes[b, t, 0] = stats[s + _COL0]
                out_boxes[b, t, 1] = stats[s + _ROW0]
                out_boxes[b, t, 2] = stats[s + _COL1] + 1
                out_boxes[b, t, 3] = stats[s + _ROW1] + 1
            if with_iou:
                while heap_len > 0 and (
                    parent[heap_nodes[0]] != heap_nodes[0] or stats[heap_nodes[0] * _STRIDE + _STAMP] != heap_stamps[0]
                ):
                    heap_len = _heap_pop(heap_keys, heap_nodes, heap_stamps, heap_len)
                out_iou[b, t] = heap_keys[0] if heap_len > 0 else 0.0


def _maps_array(maps: np.ndarray | Tensor) -> np.ndarray:
    """``maps`` as a CPU numpy array the sweep kernel reads (float32 or float64).

    A tensor may live on a GPU, require grad or be bf16, none of which numpy takes: it is
    detached and copied to the CPU, float64 kept, every other dtype widened to float32
    (exact for bf16 and fp16), so the result equals the float32 numpy path.
    """
    if isinstance(maps, Tensor):
        dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
        return maps.detach().to("cpu", dtype).numpy()
    return np.asarray(maps)


def _run_sweep(
    maps: np.ndarray | Tensor, thresholds: np.ndarray, gt_boxes: np.ndarray | None, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate, then run the kernel over the batch, split across threads when compiled."""
    global _warned_no_numba
    if not HAVE_NUMBA and not _warned_no_numba:
        logger.warning("numba is not installed: the localisation sweep runs as plain Python (about 100x slower); pip install numba")
        _warned_no_numba = True
    maps = _maps_array(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got shape {maps.shape}")
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float64)  # exact for every integer and float16 value
    maps = np.ascontiguousarray(maps)
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values; a map must be finite to be thresholded")
    thresholds = _check_thresholds(thresholds)
    n_images = maps.shape[0]
    out_boxes = np.zeros((n_images, thresholds.shape[0], 4), dtype=np.float64)
    with_iou = gt_boxes is not None
    if with_iou:
        gt = np.ascontiguousarray(gt_boxes, dtype=np.float64)
        if gt.shape != (n_images, 4):
            raise ValueError(f"gt_boxes must be ({n_images}, 4) for {n_images} maps, got shape {gt.shape}")
        out_iou = np.zeros((n_images, thresholds.shape[0]), dtype=np.float64)
    else:
        gt = np.zeros((n_images, 4), dtype=np.float64)
        out_iou = np.zeros((n_images, 0), dtype=np.float64)
    if n_images == 0 or maps.shape[1] * maps.shape[2] == 0:
        return out_boxes, (out_iou if with_iou else None)
    n_threads = (_default_threads() if num_threads is None else int(num_threads)) if HAVE_NUMBA else 1

    def run(lo: int, hi: int) -> None:
        _sweep_kernel(maps[lo:hi], thresholds, gt[lo:hi], with_iou, _GROUPS, out_boxes[lo:hi], out_iou[lo:hi])

    run_in_ranges(run, n_images, n_threads)
    return out_boxes, (out_iou if with_iou else None)


def _default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sweep_boxes(maps: np.ndarray | Tensor, thresholds: np.ndarray = THRESHOLDS, num_threads: int | None = None) -> np.ndarray:
    """Box of the largest 8-connected component of ``map >= t`` for every threshold, in one pass.

    Equal to :func:`reference_boxes` exactly, ties included: of equal-size components the one
    whose first pixel in raster order comes first wins; a threshold above every value gives
    ``[0, 0, 0, 0]``. ``map >= t`` is decided in float64, so float32 maps compare exactly with
    the float64 thresholds. Cost: one pass over the pixels for all thresholds together (about
    1.5 ms per 224x224 map on one core with numba, some 30x less than :func:`reference_boxes`).

    Args:
        maps: (B, H, W) or (H, W) finite maps (normally :func:`normalize_cams` output): an
            array, or a tensor of any float dtype on any device (bf16 and fp16 are compared as
            float32).
        thresholds: (T,) strictly increasing thresholds; default :data:`THRESHOLDS`.
        num_threads: threads sharing the batch; ``None`` uses every CPU this process may run on.

    Returns:
        (B, T, 4) or (T, 4) float64 boxes, ``[x1, y1, x2, y2]`` half-open pixel edges.

    Raises:
        ValueError: on a wrong shape, non-finite values or unsorted thresholds.
    """
    arr = _maps_array(maps)
    single = arr.ndim == 2
    boxes, _ = _run_sweep(arr[None] if single else arr, thresholds, None, num_threads)
    return boxes[0] if single else boxes


def sweep_best_iou(
    maps: np.ndarray | Tensor, gt_boxes: np.ndarray, thresholds: np.ndarray = THRESHOLDS, num_threads: int | None = None
) -> np.ndarray:
    """Best IoU with the ground truth over every 8-connected component of ``map >= t``, per threshold.

    MaxBoxAccV2's matching rule in one pass (equal to :func:`reference_best_iou`). wsolevaluation
    takes the boxes of the contours of the thresholded mask (``cv2.findContours``); the outer
    contour of an 8-connected component bounds that component, so its box is the component's box
    here. (wsolevaluation's ``RETR_TREE`` also lists hole outlines; a hole lies inside its
    component's box, and those inner boxes are not matched here.)

    Args:
        maps: (B, H, W) finite maps, an array or a tensor of any float dtype on any device.
        gt_boxes: (B, 4) ground-truth boxes; a missing (all-NaN) box gives a row of NaN.
        thresholds: (T,) strictly increasing thresholds.
        num_threads: threads sharing the batch; ``None`` uses every CPU this process may run on.

    Returns:
        (B, T) float64 IoUs; 0 where the mask is empty.
    """
    maps = _maps_array(maps)
    gt = _check_boxes(_maps_array(gt_boxes).astype(np.float64), "gt_boxes")
    if maps.ndim != 3 or gt.shape != (maps.shape[0], 4):
        raise ValueError(f"maps must be (B, H, W) and gt_boxes (B, 4), got shapes {maps.shape} and {gt.shape}")
    thresholds = _check_thresholds(thresholds)
    out = np.full((maps.shape[0], thresholds.shape[0]), np.nan)
    known = ~np.isnan(gt[:, 0])
    if known.any():
        _, best = _run_sweep(maps[known], thresholds, gt[known], num_threads)
        out[known] = best
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
    maps = normalize_cams(cams.detach(), size)
    boxes = sweep_boxes(maps.cpu().numpy(), np.array([float(threshold)]))[:, 0]
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

    Against clovaai/wsolevaluation (``BoxEvaluator``), which these follow: the same thresholds
    (``cam_curve_interval=0.01``), the same ``IoU >= threshold`` hits and the same empty-mask
    box. Where it differs, this meter follows the CAM paper's wording instead: the mask is
    ``map >= t`` on the float map (wsolevaluation: ``uint8(255 * map) > int(t * 255)``, via
    ``cv2.threshold``), "largest" is the most pixels
    (wsolevaluation: the largest ``cv2.contourArea``), and boxes are half-open pixel edges
    (wsolevaluation: inclusive corners with ``+1`` areas).

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
            boxes = np.full((n_images, 4), np.nan)
        else:
            boxes = gt_boxes.detach().cpu().double().numpy() if isinstance(gt_boxes, Tensor) else np.asarray(gt_boxes, dtype=np.float64)
            if boxes.shape != (n_images, 4):
                raise ValueError(f"gt_boxes must be ({n_images}, 4), got shape {boxes.shape}")
            _check_boxes(boxes, "gt_boxes")
        logits = logits.detach().cpu().float()
        topk = logits.topk(min(5, n_classes), dim=1).indices  # (B, k)
        top1_right = (topk[:, 0] == labels).numpy()
        top5_right = (topk == labels[:, None]).any(dim=1).numpy()
        has_box = ~np.isnan(boxes[:, 0])
        self._counts[0] += n_images
        self._counts[1] += int(has_box.sum())
        self._counts[2] += int(top1_right.sum())
        self._counts[3] += int(top5_right.sum())
        if not has_box.any():
            return
        keep = torch.from_numpy(np.flatnonzero(has_box))
        maps = normalize_cams(cams.detach().cpu()[keep], image_size).numpy()  # (N, H, W)
        gt = boxes[has_box]
        largest, best_iou = _run_sweep(maps, self.thresholds, gt, self.num_threads)  # (N, T, 4), (N, T)
        hit = box_iou(largest, gt[:, None, :]) >= IOU_THRESHOLD  # (N, T)
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
    """A plain-text table of :meth:`LocalizationMeter.compute`'s metrics, in percent.

    Keys it does not know (``loss``, ``split``, ``checkpoint``, ...) are listed after the table;
    absent ones are skipped.

    Args:
        metrics: the dict from :meth:`LocalizationMeter.compute`, possibly with extra keys.

    Returns:
        The table, lines joined by newlines, no trailing newline.
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
