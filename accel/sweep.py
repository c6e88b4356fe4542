"""The compiled box sweep behind ``localization.sweep_boxes`` and ``sweep_best_iou``.

The plain version is ``localization.reference_boxes`` / ``reference_best_iou``, one ``scipy.ndimage.label`` per
threshold; tests hold the two equal exactly. Pixel ``p`` is in mask ``t`` iff ``float64(map[p]) >= thresholds[t]``.
Pixels join a union-find over 8-connected pixels from the top level down (raster order within a level): once level
``t`` is in, the sets are the components of mask ``t``. Sets only grow and merge, so the largest is tracked in O(1)
per pixel; of equal sizes the set whose first pixel comes first in raster order wins, as ``ndimage.label`` numbers
components in that order. The best IoU over all sets (MaxBoxAccV2) is a max-heap of each set's IoU, pushed whenever
its box grows; an entry is stale once its set is merged away or has another IoU, and stale tops are dropped lazily.
Compiled with numba (``nogil``, so threads share a batch); without numba this is plain Python and ``localization``
labels with scipy instead. Inputs are trusted: ``localization`` validates them.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..runtime import usable_cpus
from .jit import HAVE_NUMBA, njit, run_in_ranges

__all__ = ["GROUPS", "HAVE_NUMBA", "run_sweep", "sweep_kernel"]

# Per-set record in the union-find: one row of _STRIDE int32 per root (two spare).
_SIZE, _FIRST, _ROW0, _ROW1, _COL0, _COL1 = 0, 1, 2, 3, 4, 5
_STRIDE = 8


def _neighbour_groups() -> np.ndarray:
    """(256, 5) table: for a mask of added neighbours, how many 8-connected groups they form, then each one's first bit.

    Bit ``i`` is the ``i``-th neighbour in raster order (NW, N, NE, W, E, SW, S, SE). Neighbours that touch were
    united already, so a pixel looks up one neighbour per group (at most 4: the lone corners).
    """
    table = np.zeros((256, 5), dtype=np.int64)
    for mask in range(256):
        grid = np.zeros(9, dtype=bool)
        grid[[i + (i > 3) for i in range(8) if mask >> i & 1]] = True  # cell 4 is the pixel itself
        labels = ndimage.label(grid.reshape(3, 3), structure=np.ones((3, 3)))[0].ravel()
        firsts = np.unique(labels, return_index=True)[1][1:]  # each group's first cell, groups in raster order
        table[mask, 0] = firsts.size
        table[mask, 1 : 1 + firsts.size] = firsts - (firsts > 4)
    return table


GROUPS = _neighbour_groups()
"""The neighbour-group table :func:`sweep_kernel` takes (see :func:`_neighbour_groups`)."""


@njit(cache=True)
def _set_iou(stats: np.ndarray, root: int, gt: np.ndarray) -> float:
    # The same operations, in the same order, as localization's numpy IoU: results agree bit for bit.
    s = root * _STRIDE
    x1, y1 = np.float64(stats[s + _COL0]), np.float64(stats[s + _ROW0])
    x2, y2 = np.float64(stats[s + _COL1] + 1), np.float64(stats[s + _ROW1] + 1)
    inter = max(min(x2, gt[2]) - max(x1, gt[0]), 0.0) * max(min(y2, gt[3]) - max(y1, gt[1]), 0.0)
    union = (x2 - x1) * (y2 - y1) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return inter / union if union > 0.0 else 0.0


@njit(cache=True)
def _heap_push(keys: np.ndarray, roots: np.ndarray, n: int, key: float, root: int) -> int:
    """Push ``(key, root)`` onto the max-heap of ``n`` entries; the new size."""
    i = n
    while i > 0 and keys[(i - 1) >> 1] < key:
        keys[i], roots[i] = keys[(i - 1) >> 1], roots[(i - 1) >> 1]
        i = (i - 1) >> 1
    keys[i], roots[i] = key, root
    return n + 1


@njit(cache=True)
def _heap_pop(keys: np.ndarray, roots: np.ndarray, n: int) -> int:
    """Drop the top of the max-heap of ``n`` entries; the new size."""
    n -= 1
    if n == 0:
        return 0
    key, root, i = keys[n], roots[n], 0
    while 2 * i + 1 < n:
        child = 2 * i + 1
        if child + 1 < n and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        keys[i], roots[i] = keys[child], roots[child]
        i = child
    keys[i], roots[i] = key, root
    return n


@njit(cache=True)
def _order_pixels(cam: np.ndarray, thresholds: np.ndarray, level: np.ndarray, counts: np.ndarray, order: np.ndarray) -> None:
    """Each pixel's level (the last ``t`` with ``thresholds[t] <= float64(cam[p])``, -1 if none), pixels per level,
    and ``order``: the pixels of the top level first, raster order within a level (a counting sort).

    The level is guessed by linear interpolation and corrected by exact comparisons: exact for any increasing
    thresholds, one or two comparisons for evenly spaced ones.
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
    fill = np.empty(n_levels, np.int64)
    position = 0
    for t in range(n_levels - 1, -1, -1):
        fill[t] = position
        position += counts[t]
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
def _new_set(parent: np.ndarray, stats: np.ndarray, p: int, r: int, c: int) -> None:
    parent[p] = p
    s = p * _STRIDE
    stats[s + _SIZE] = 1
    stats[s + _FIRST] = p
    stats[s + _ROW0] = stats[s + _ROW1] = r
    stats[s + _COL0] = stats[s + _COL1] = c


@njit(cache=True, inline="always")
def _join(parent: np.ndarray, stats: np.ndarray, root: int, p: int, r: int, c: int) -> bool:
    """Add pixel ``p`` at ``(r, c)`` to ``root``'s set; whether the set's box grew."""
    parent[p] = root
    s = root * _STRIDE
    stats[s + _SIZE] += 1
    stats[s + _FIRST] = min(stats[s + _FIRST], p)
    if stats[s + _ROW0] <= r <= stats[s + _ROW1] and stats[s + _COL0] <= c <= stats[s + _COL1]:
        return False
    stats[s + _ROW0] = min(stats[s + _ROW0], r)
    stats[s + _ROW1] = max(stats[s + _ROW1], r)
    stats[s + _COL0] = min(stats[s + _COL0], c)
    stats[s + _COL1] = max(stats[s + _COL1], c)
    return True


@njit(cache=True, inline="always")
def _union(parent: np.ndarray, stats: np.ndarray, root: int, other: int) -> tuple[int, bool]:
    """Merge two roots by size; the surviving root and whether its box grew."""
    if stats[other * _STRIDE + _SIZE] > stats[root * _STRIDE + _SIZE]:
        root, other = other, root
    sr, so = root * _STRIDE, other * _STRIDE
    parent[other] = root
    stats[sr + _SIZE] += stats[so + _SIZE]
    stats[sr + _FIRST] = min(stats[sr + _FIRST], stats[so + _FIRST])
    if (stats[so + _ROW0] >= stats[sr + _ROW0] and stats[so + _ROW1] <= stats[sr + _ROW1]
            and stats[so + _COL0] >= stats[sr + _COL0] and stats[so + _COL1] <= stats[sr + _COL1]):
        return root, False
    stats[sr + _ROW0] = min(stats[sr + _ROW0], stats[so + _ROW0])
    stats[sr + _ROW1] = max(stats[sr + _ROW1], stats[so + _ROW1])
    stats[sr + _COL0] = min(stats[sr + _COL0], stats[so + _COL0])
    stats[sr + _COL1] = max(stats[sr + _COL1], stats[so + _COL1])
    return root, True


@njit(cache=True)
def _sweep_levels(
    order: np.ndarray, counts: np.ndarray, width: int, gt: np.ndarray, with_iou: bool, groups: np.ndarray,
    offsets: np.ndarray, added: np.ndarray, parent: np.ndarray, stats: np.ndarray, heap_keys: np.ndarray,
    heap_roots: np.ndarray, out_boxes: np.ndarray, out_iou: np.ndarray,
) -> None:
    """Add one map's pixels level by level (``order``), filling its (T, 4) boxes and (T,) best IoUs.

    The image is padded by a never-added border, so neighbours need no bounds checks. The union-find helpers are
    inlined (``inline="always"``) because this loop runs once per pixel.
    """
    best, best_size, best_first, start = -1, 0, 0, 0
    heap_len = 0
    pw = width + 2
    for t in range(counts.shape[0] - 1, -1, -1):
        for k in range(start, start + counts[t]):
            r = order[k] // width
            c = order[k] - r * width
            p = (r + 1) * pw + c + 1
            mask = (
                added[p - pw - 1] | (added[p - pw] << 1) | (added[p - pw + 1] << 2) | (added[p - 1] << 3)
                | (added[p + 1] << 4) | (added[p + pw - 1] << 5) | (added[p + pw] << 6) | (added[p + pw + 1] << 7)
            )
            added[p] = 1
            n_groups = groups[mask, 0]
            if n_groups == 0:
                _new_set(parent, stats, p, r, c)
                root, changed = p, True
            else:
                root = _find(parent, p + offsets[groups[mask, 1]])
                changed = _join(parent, stats, root, p, r, c)
                for g in range(2, n_groups + 1):
                    other = _find(parent, p + offsets[groups[mask, g]])
                    if other != root:
                        root, grew = _union(parent, stats, root, other)
                        changed = changed or grew
            s = root * _STRIDE
            if stats[s + _SIZE] > best_size or (stats[s + _SIZE] == best_size and stats[s + _FIRST] < best_first):
                best, best_size, best_first = root, stats[s + _SIZE], stats[s + _FIRST]
            if with_iou and changed:
                iou = _set_iou(stats, root, gt)
                if iou > 0.0:  # a zero never beats the 0 that "no overlapping set" gives
                    heap_len = _heap_push(heap_keys, heap_roots, heap_len, iou, root)
        start += counts[t]
        if best >= 0:
            s = best * _STRIDE
            out_boxes[t, 0], out_boxes[t, 1] = stats[s + _COL0], stats[s + _ROW0]
            out_boxes[t, 2], out_boxes[t, 3] = stats[s + _COL1] + 1, stats[s + _ROW1] + 1
        if with_iou:
            top = heap_roots[0]
            while heap_len > 0 and (parent[top] != top or _set_iou(stats, top, gt) != heap_keys[0]):  # stale
                heap_len = _heap_pop(heap_keys, heap_roots, heap_len)
                top = heap_roots[0]
            out_iou[t] = heap_keys[0] if heap_len > 0 else 0.0


@njit(cache=True, nogil=True)
def sweep_kernel(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray, with_iou: bool, groups: np.ndarray,
    out_boxes: np.ndarray, out_iou: np.ndarray,
) -> None:
    """Fill ``out_boxes`` (B, T, 4) and, when ``with_iou``, ``out_iou`` (B, T) for maps (B, H, W) (module docstring)."""
    n_images, height, width = maps.shape
    pw = width + 2
    n_padded = (height + 2) * pw
    level = np.empty(height * width, np.int32)
    counts = np.empty(thresholds.shape[0], np.int64)
    order = np.empty(height * width, np.int32)
    added = np.zeros(n_padded, np.uint8)
    parent = np.empty(n_padded, np.int32)
    stats = np.empty(n_padded * _STRIDE, np.int32)
    offsets = np.array([-pw - 1, -pw, -pw + 1, -1, 1, pw - 1, pw, pw + 1], np.int64)
    heap_keys = np.empty(n_padded if with_iou else 0, np.float64)
    heap_roots = np.empty(n_padded if with_iou else 0, np.int32)
    for b in range(n_images):
        _order_pixels(maps[b], thresholds, level, counts, order)
        added[:] = 0
        _sweep_levels(
            order, counts, width, gt_boxes[b], with_iou, groups, offsets, added, parent, stats, heap_keys, heap_roots,
            out_boxes[b], out_iou[b],
        )


def run_sweep(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray | None, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The largest component's boxes and, given ``gt_boxes``, every component's best IoU, per threshold.

    Args:
        maps: (B, H, W) finite, C-contiguous float32 or float64 maps.
        thresholds: (T,) strictly increasing float64 thresholds.
        gt_boxes: (B, 4) finite float64 boxes, or ``None`` for boxes only.
        num_threads: threads sharing the batch; ``None`` uses every CPU this process may run on.

    Returns:
        (B, T, 4) float64 boxes and (B, T) float64 IoUs (``None`` without ``gt_boxes``).
    """
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
