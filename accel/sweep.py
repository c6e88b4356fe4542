"""The compiled box sweep behind ``localization.sweep_boxes`` and ``sweep_best_iou``, held exactly equal to its plain
version ``reference_boxes`` / ``reference_best_iou`` (one ``scipy.ndimage.label`` per threshold) by tests.

Pixel ``p`` is in mask ``t`` iff ``float64(map[p]) >= thresholds[t]``. Pixels join a union-find over 8-connected
pixels from the top level down (raster order within a level): once level ``t`` is in, the sets are the components
of mask ``t``. Sets only grow and merge, so the largest is tracked in O(1) per pixel; of equal sizes the set whose
first pixel comes first in raster order wins, as ``ndimage.label`` numbers components in that order. The best IoU
over all sets (MaxBoxAccV2) is a heap of each set's IoU, pushed whenever its box grows; an entry is stale once its
set is merged away or has another IoU, and stale tops are dropped lazily. Compiled with numba (``nogil``, so threads
share a batch); without numba this is plain Python and ``localization`` labels with scipy instead. Inputs are
trusted: ``localization`` validates them.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy import ndimage

from ..runtime import usable_cpus
from .jit import HAVE_NUMBA, njit, run_in_ranges

__all__ = ["GROUPS", "run_sweep", "sweep_kernel"]

# Columns of a set's record in the union-find (one row per root): its box is [_X0, _Y0, _X1, _Y1], inclusive.
_SIZE, _FIRST, _X0, _Y0, _X1, _Y1 = range(6)


def _neighbour_groups() -> np.ndarray:
    """(256, 5) table: for a mask of added neighbours (bit ``i``: the ``i``-th in raster order, NW, N, NE, W, E, SW, S,
    SE), how many 8-connected groups they form, then each one's first bit. Neighbours that touch were united already,
    so a pixel looks up one neighbour per group (at most 4: the lone corners)."""
    table = np.zeros((256, 5), dtype=np.int64)
    for mask in range(256):
        grid = np.zeros(9, dtype=bool)
        grid[[i + (i > 3) for i in range(8) if mask >> i & 1]] = True  # cell 4 is the pixel itself
        labels = ndimage.label(grid.reshape(3, 3), structure=np.ones((3, 3)))[0].ravel()
        firsts = np.unique(labels, return_index=True)[1][1:]  # each group's first cell, groups in raster order
        table[mask, 0] = firsts.size
        table[mask, 1 : 1 + firsts.size] = firsts - (firsts > 4)
    return table


GROUPS = _neighbour_groups()  # the table sweep_kernel takes


@njit(cache=True)
def _set_iou(stats: np.ndarray, root: int, gt: np.ndarray) -> float:
    # The same operations, in the same order, as localization's numpy IoU: results agree bit for bit.
    x1, y1 = np.float64(stats[root, _X0]), np.float64(stats[root, _Y0])
    x2, y2 = np.float64(stats[root, _X1] + 1), np.float64(stats[root, _Y1] + 1)
    inter = max(min(x2, gt[2]) - max(x1, gt[0]), 0.0) * max(min(y2, gt[3]) - max(y1, gt[1]), 0.0)
    union = (x2 - x1) * (y2 - y1) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return inter / union if union > 0.0 else 0.0


@njit(cache=True)
def _order_pixels(cam: np.ndarray, thresholds: np.ndarray, counts: np.ndarray, order: np.ndarray) -> None:
    """Fill ``counts`` (T,) with the pixels per level (a pixel's level: the last ``t`` with ``thresholds[t] <=
    float64(value)``, -1 if none) and ``order`` with those pixels, top level first, raster order within a level."""
    n_levels, first = thresholds.shape[0], thresholds[0]
    # A guess by linear interpolation, then exact comparisons: one or two for evenly spaced thresholds.
    scale = (n_levels - 1) / (thresholds[n_levels - 1] - first) if n_levels > 1 else 0.0
    level = np.empty(cam.size, np.int64)
    counts[:] = 0
    for p, value in enumerate(cam.ravel()):
        guess = (np.float64(value) - first) * scale
        lev = -1 if guess < 0.0 else n_levels - 1 if guess >= n_levels - 1 else int(guess)
        while lev + 1 < n_levels and thresholds[lev + 1] <= value:
            lev += 1
        while lev >= 0 and thresholds[lev] > value:
            lev -= 1
        level[p] = lev
        if lev >= 0:
            counts[lev] += 1
    fill = np.cumsum(counts[::-1])[::-1] - counts  # where each level starts in ``order``: after all levels above it
    for p in range(level.shape[0]):
        if level[p] >= 0:
            order[fill[level[p]]] = p
            fill[level[p]] += 1


@njit(cache=True)
def _find(parent: np.ndarray, node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]  # path halving keeps the trees flat
        node = parent[node]
    return node


@njit(cache=True, inline="always")
def _grow(stats: np.ndarray, root: int, x0: int, y0: int, x1: int, y1: int) -> bool:
    """Stretch ``root``'s box over ``[x0, x1] x [y0, y1]``; whether it grew."""
    if stats[root, _X0] <= x0 and stats[root, _Y0] <= y0 and x1 <= stats[root, _X1] and y1 <= stats[root, _Y1]:
        return False
    stats[root, _X0], stats[root, _Y0] = min(stats[root, _X0], x0), min(stats[root, _Y0], y0)
    stats[root, _X1], stats[root, _Y1] = max(stats[root, _X1], x1), max(stats[root, _Y1], y1)
    return True


@njit(cache=True, inline="always")
def _union(parent: np.ndarray, stats: np.ndarray, root: int, other: int) -> tuple[int, bool]:
    """Merge two roots by size; the surviving root and whether its box grew."""
    if stats[other, _SIZE] > stats[root, _SIZE]:
        root, other = other, root
    parent[other] = root
    stats[root, _SIZE] += stats[other, _SIZE]
    stats[root, _FIRST] = min(stats[root, _FIRST], stats[other, _FIRST])
    return root, _grow(stats, root, stats[other, _X0], stats[other, _Y0], stats[other, _X1], stats[other, _Y1])


@njit(cache=True)
def _sweep_map(
    cam: np.ndarray,
    thresholds: np.ndarray,
    gt: np.ndarray,
    with_iou: bool,
    groups: np.ndarray,
    out_boxes: np.ndarray,
    out_iou: np.ndarray,
) -> None:
    """Add one (H, W) map's pixels level by level, filling its (T, 4) boxes and (T,) best IoUs. The image is padded
    by a never-added border, so neighbours need no bounds checks."""
    height, width = cam.shape
    pw = width + 2
    counts, order = np.empty(thresholds.shape[0], np.int64), np.empty(height * width, np.int32)
    _order_pixels(cam, thresholds, counts, order)
    added = np.zeros((height + 2) * pw, np.uint8)
    parent = np.empty_like(added, np.int32)
    stats = np.empty((added.shape[0], 6), np.int32)
    offsets = np.array([-pw - 1, -pw, -pw + 1, -1, 1, pw - 1, pw, pw + 1])  # the neighbours, as GROUPS numbers them
    heap = [(0.0, 0)]  # (-IoU, root): heapq's min-heap as a max-heap of IoUs; seeded so that numba can type it
    heap.pop()
    best, best_size, best_first, start = -1, 0, 0, 0
    for t in range(counts.shape[0] - 1, -1, -1):
        for k in range(start, start + counts[t]):
            r = order[k] // width
            c = order[k] - r * width
            p = (r + 1) * pw + c + 1
            mask = (
                added[p - pw - 1]
                | (added[p - pw] << 1)
                | (added[p - pw + 1] << 2)
                | (added[p - 1] << 3)
                | (added[p + 1] << 4)
                | (added[p + pw - 1] << 5)
                | (added[p + pw] << 6)
                | (added[p + pw + 1] << 7)
            )
            added[p] = 1
            if groups[mask, 0] == 0:
                parent[p], stats[p, _SIZE], stats[p, _FIRST] = p, 1, p
                stats[p, _X0], stats[p, _Y0], stats[p, _X1], stats[p, _Y1] = c, r, c, r
                root, changed = p, True
            else:
                root = parent[p] = _find(parent, p + offsets[groups[mask, 1]])
                stats[root, _SIZE] += 1
                stats[root, _FIRST] = min(stats[root, _FIRST], p)
                changed = _grow(stats, root, c, r, c, r)
            for g in range(2, groups[mask, 0] + 1):
                other = _find(parent, p + offsets[groups[mask, g]])
                if other != root:
                    root, grew = _union(parent, stats, root, other)
                    changed = changed or grew
            if stats[root, _SIZE] > best_size or (stats[root, _SIZE] == best_size and stats[root, _FIRST] < best_first):
                best, best_size, best_first = root, stats[root, _SIZE], stats[root, _FIRST]
            if with_iou and changed:
                iou = _set_iou(stats, root, gt)
                if iou > 0.0:  # a zero never beats the 0 that "no overlapping set" gives
                    heapq.heappush(heap, (-iou, root))
        start += counts[t]
        if best >= 0:
            out_boxes[t, 0], out_boxes[t, 1] = stats[best, _X0], stats[best, _Y0]
            out_boxes[t, 2], out_boxes[t, 3] = stats[best, _X1] + 1, stats[best, _Y1] + 1
        if with_iou:
            while len(heap) > 0 and (
                parent[heap[0][1]] != heap[0][1] or _set_iou(stats, heap[0][1], gt) != -heap[0][0]
            ):  # stale
                heapq.heappop(heap)
            out_iou[t] = -heap[0][0] if len(heap) > 0 else 0.0


@njit(cache=True, nogil=True)
def sweep_kernel(
    maps: np.ndarray,
    thresholds: np.ndarray,
    gt_boxes: np.ndarray,
    with_iou: bool,
    groups: np.ndarray,
    out_boxes: np.ndarray,
    out_iou: np.ndarray,
) -> None:
    """Fill ``out_boxes`` (B, T, 4) and, when ``with_iou``, ``out_iou`` (B, T) for maps (B, H, W) (module docstring)."""
    for b in range(maps.shape[0]):
        _sweep_map(maps[b], thresholds, gt_boxes[b], with_iou, groups, out_boxes[b], out_iou[b])


def run_sweep(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray | None, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The largest component's boxes (B, T, 4) and, given ``gt_boxes`` (B, 4), every component's best IoU (B, T)
    (else ``None``), per threshold, all float64, for finite C-contiguous (B, H, W) float32 or float64 maps and (T,)
    strictly increasing thresholds; ``num_threads=None`` uses every CPU this process may run on."""
    n_images, n_levels, with_iou = maps.shape[0], thresholds.shape[0], gt_boxes is not None
    out_boxes = np.zeros((n_images, n_levels, 4), dtype=np.float64)
    out_iou = np.zeros((n_images, n_levels if with_iou else 0), dtype=np.float64)
    gt = np.ascontiguousarray(gt_boxes, dtype=np.float64) if with_iou else np.zeros((n_images, 4))
    if n_images and maps.shape[1] * maps.shape[2]:

        def run(lo: int, hi: int) -> None:
            sweep_kernel(maps[lo:hi], thresholds, gt[lo:hi], with_iou, GROUPS, out_boxes[lo:hi], out_iou[lo:hi])

        threads = usable_cpus() if num_threads is None else int(num_threads)
        run_in_ranges(run, n_images, threads if HAVE_NUMBA else 1)
    return out_boxes, (out_iou if with_iou else None)
