"""The compiled box sweep: every threshold's largest-component box in one pass over the pixels.

An accelerator behind ``localization.sweep_boxes`` / ``sweep_best_iou``, whose plain version is
``localization.reference_boxes`` / ``reference_best_iou`` (``scipy.ndimage.label`` once per
threshold); the tests hold the two equal exactly. Instead of labelling 100 masks, the pixels are
added in falling order of value to a union-find over 8-connected pixels: once every pixel of level
``t`` is in, the sets are exactly the components of ``map >= thresholds[t]``, and both answers for
``t`` are read off. Compiled with numba (``nogil``, so plain threads share a batch); without numba
these functions stay plain Python and ``localization`` uses its scipy version instead.

Inputs are trusted: ``localization`` validates them (finite maps, increasing thresholds, valid
boxes) before they get here.
"""

from __future__ import annotations

import numpy as np

from ..runtime import usable_cpus
from .jit import HAVE_NUMBA, njit, run_in_ranges

__all__ = ["GROUPS", "HAVE_NUMBA", "run_sweep", "sweep_kernel"]

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


GROUPS = _neighbour_groups()
"""The neighbour-group table :func:`sweep_kernel` takes (see :func:`_neighbour_groups`)."""


# --------------------------------------------------------------------------------------------
# Small helpers: IoU, a max-heap, pixel levels


@njit(cache=True)
def _iou(ax1: float, ay1: float, ax2: float, ay2: float, bx1: float, by1: float, bx2: float, by2: float) -> float:
    # The same operations, in the same order, as localization's numpy IoU: results agree bit for bit.
    inter_w = min(ax2, bx2) - max(ax1, bx1)
    inter_w = max(inter_w, 0.0)
    inter_h = min(ay2, by2) - max(ay1, by1)
    inter_h = max(inter_h, 0.0)
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
    """Push ``key`` with its ``(node, stamp)`` onto the max-heap of ``length`` entries; the new length."""
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
    """Drop the top of the max-heap; the new length."""
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


@njit(cache=True)
def _order_by_level(level: np.ndarray, counts: np.ndarray, order: np.ndarray) -> None:
    """Counting sort: ``order`` lists the pixels of the top level first, raster order within a level."""
    n_levels = counts.shape[0]
    fill = np.empty(n_levels, np.int64)
    position = 0
    for t in range(n_levels - 1, -1, -1):
        fill[t] = position
        position += counts[t]
    for p in range(level.shape[0]):
        lev = level[p]
        if lev >= 0:
            order[fill[lev]] = p
            fill[lev] += 1


# --------------------------------------------------------------------------------------------
# The union-find: each set's size, first pixel in raster order, extent and stamp


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
    stats[s + _ROW0] = r
    stats[s + _ROW1] = r
    stats[s + _COL0] = c
    stats[s + _COL1] = c
    stats[s + _STAMP] = 0


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
    """Merge two roots by size; the surviving root and whether its box grew.

    The survivor takes the other's size, first pixel and extent.
    """
    if stats[other * _STRIDE + _SIZE] > stats[root * _STRIDE + _SIZE]:
        root, other = other, root
    sr = root * _STRIDE
    so = other * _STRIDE
    parent[other] = root
    stats[sr + _SIZE] += stats[so + _SIZE]
    stats[sr + _FIRST] = min(stats[sr + _FIRST], stats[so + _FIRST])
    if (
        stats[so + _ROW0] >= stats[sr + _ROW0] and stats[so + _ROW1] <= stats[sr + _ROW1]
        and stats[so + _COL0] >= stats[sr + _COL0] and stats[so + _COL1] <= stats[sr + _COL1]
    ):
        return root, False
    stats[sr + _ROW0] = min(stats[sr + _ROW0], stats[so + _ROW0])
    stats[sr + _ROW1] = max(stats[sr + _ROW1], stats[so + _ROW1])
    stats[sr + _COL0] = min(stats[sr + _COL0], stats[so + _COL0])
    stats[sr + _COL1] = max(stats[sr + _COL1], stats[so + _COL1])
    return root, True


# --------------------------------------------------------------------------------------------
# The sweep


@njit(cache=True)
def _drop_stale(keys: np.ndarray, nodes: np.ndarray, stamps: np.ndarray, length: int, parent: np.ndarray, stats: np.ndarray) -> int:
    """Pop heap tops whose node is no longer a root or whose box changed since; the new length."""
    while length > 0:
        node = nodes[0]
        if parent[node] == node and stats[node * _STRIDE + _STAMP] == stamps[0]:
            break
        length = _heap_pop(keys, nodes, stamps, length)
    return length


@njit(cache=True)
def _read_box(stats: np.ndarray, root: int, out: np.ndarray) -> None:
    s = root * _STRIDE
    out[0] = stats[s + _COL0]
    out[1] = stats[s + _ROW0]
    out[2] = stats[s + _COL1] + 1
    out[3] = stats[s + _ROW1] + 1


@njit(cache=True)
def _sweep_levels(
    order: np.ndarray, counts: np.ndarray, width: int, gt: np.ndarray, with_iou: bool, groups: np.ndarray,
    offsets: np.ndarray, added: np.ndarray, parent: np.ndarray, stats: np.ndarray, heap_keys: np.ndarray,
    heap_nodes: np.ndarray, heap_stamps: np.ndarray, out_boxes: np.ndarray, out_iou: np.ndarray,
) -> None:
    """Add one map's pixels level by level (``order``), filling its (T, 4) boxes and (T,) best IoUs.

    Each pixel unites with one added neighbour per touching group (``groups``). The image is
    padded by a never-added border, so neighbours need no bounds checks. This loop runs once per
    pixel, so the union-find helpers it calls are inlined (``inline="always"``): as separate
    calls they cost time.
    """
    best, best_size, best_first, heap_len, start = -1, 0, 0, 0, 0
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
                stats[s + _STAMP] += 1
                iou = _component_iou(stats, root, gt)
                if iou > 0.0:  # a zero never beats the 0 that "no overlapping component" gives
                    heap_len = _heap_push(heap_keys, heap_nodes, heap_stamps, heap_len, iou, root, stats[s + _STAMP])
        start += counts[t]
        if best >= 0:
            _read_box(stats, best, out_boxes[t])
        if with_iou:
            heap_len = _drop_stale(heap_keys, heap_nodes, heap_stamps, heap_len, parent, stats)
            out_iou[t] = heap_keys[0] if heap_len > 0 else 0.0


@njit(cache=True, nogil=True)
def sweep_kernel(
    maps: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray, with_iou: bool, groups: np.ndarray,
    out_boxes: np.ndarray, out_iou: np.ndarray,
) -> None:
    """Fill ``out_boxes`` (B, T, 4) and, when ``with_iou``, ``out_iou`` (B, T) for maps (B, H, W).

    Pixel ``p`` is in mask ``t`` iff ``float64(map[p]) >= thresholds[t]``, so mask ``t`` holds the
    pixels whose level (:func:`_pixel_levels`) is ``>= t``. Pixels are added from the top level
    down (raster order within a level), each joining a set with its added 8-neighbours.

    Largest component: sets only grow and merge, so the largest is tracked in O(1) per pixel (a
    largest set that merges becomes part of a strictly larger one). Of equal sizes, the set whose
    first pixel in raster order comes first wins: ``scipy.ndimage.label`` numbers components in
    raster order of their first pixel and ``argmax`` takes the lowest label.

    Best IoU over all components (MaxBoxAccV2): a maximum under deletions. Each time a set's box
    changes its stamp goes up and the new IoU is pushed to a max-heap with the stamp; an entry is
    stale once its node is no longer a root or its stamp moved on, and stale tops are popped
    lazily when a level is read.
    """
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
    heap_nodes = np.empty(n_padded if with_iou else 0, np.int32)
    heap_stamps = np.empty(n_padded if with_iou else 0, np.int32)
    for b in range(n_images):
        _pixel_levels(maps[b], thresholds, level, counts)
        _order_by_level(level, counts, order)
        added[:] = 0
        _sweep_levels(
            order, counts, width, gt_boxes[b], with_iou, groups, offsets, added, parent, stats,
            heap_keys, heap_nodes, heap_stamps, out_boxes[b], out_iou[b],
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
    n_images = maps.shape[0]
    n_levels = thresholds.shape[0]
    out_boxes = np.zeros((n_images, n_levels, 4), dtype=np.float64)
    with_iou = gt_boxes is not None
    out_iou = np.zeros((n_images, n_levels if with_iou else 0), dtype=np.float64)
    gt = np.ascontiguousarray(gt_boxes, dtype=np.float64) if with_iou else np.zeros((n_images, 4))
    if n_images and maps.shape[1] * maps.shape[2]:
        threads = usable_cpus() if num_threads is None else int(num_threads)

        def run(lo: int, hi: int) -> None:
            sweep_kernel(maps[lo:hi], thresholds, gt[lo:hi], with_iou, GROUPS, out_boxes[lo:hi], out_iou[lo:hi])

        run_in_ranges(run, n_images, threads if HAVE_NUMBA else 1)
    return out_boxes, (out_iou if with_iou else None)
