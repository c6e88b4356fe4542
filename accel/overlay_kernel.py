"""The CPU overlay kernel: ``apply_cam``'s upsample, normalise, colour and blend in one pass per image.

A chain of batched torch ops streams the batch through main memory once per op; this kernel
(compiled with numba) keeps each image's upsampled map in cache and touches every pixel once. It
reproduces torch's arithmetic rather than approximating it (``F.interpolate``'s bilinear taps,
``add``'s fused multiply-add), so its overlay equals the torch path's bit for bit. Whether the
upsample matches the running torch build is checked once per size (:func:`matches_torch`); where it
does not, or without numba, ``apply_cam`` keeps its torch path.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .jit import HAVE_NUMBA, njit, run_in_ranges

if HAVE_NUMBA:  # without numba, apply_cam runs its torch path
    from numba import types
    from numba.extending import intrinsic

__all__ = ["HAVE_NUMBA", "bilinear_taps", "blend_overlays", "matches_torch", "upsample"]

# Work items per thread: more than one, so a thread slowed by other load on its core hands its
# share to the others instead of holding up the whole batch.
TASKS_PER_THREAD = 4
# Pixels (over a thread's images) below which another thread costs more to start than it saves.
MIN_PIXELS_PER_THREAD = 1 << 18

Taps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def bilinear_taps(in_size: int, out_size: int) -> Taps:
    """Source indices and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis.

    Output pixel ``i`` is ``w0[i] * src[i0[i]] + w1[i] * src[i1[i]]``. Computed as torch's CPU kernel
    computes them: in float32, with the source coordinate ``scale * (i + 0.5) - 0.5`` rounded once
    (torch's vectorised builds contract it into a fused multiply-add).

    Args:
        in_size: Length of the map along this axis.
        out_size: Length of the output along this axis.

    Returns:
        ``(i0, i1, w0, w1)``: (out_size,) int64 indices and (out_size,) float32 weights.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # float32 * float32 is exact in float64, so one rounding to float32 is the fused multiply-add.
    source = centres.astype(np.float64) * np.float64(scale) - 0.5
    source = np.maximum(source.astype(np.float32), np.float32(0.0))
    i0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    w1 = np.clip(source - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


if HAVE_NUMBA:

    @intrinsic
    def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
        """``a * b + c`` rounded once (LLVM's ``fma``), as torch's vectorised kernels compute it."""
        if not (isinstance(a, types.Float) and a == b == c):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.fma(*args)

        return a(a, b, c), codegen

    @njit(cache=True, nogil=True)
    def _lerp(a: float, wa: float, b: float, wb: float) -> float:  # pragma: no cover - compiled
        # torch's `t0 * w0 + t1 * w1`, as its compiler contracts it.
        return _fma(a, wa, b * wb)

    @njit(cache=True, nogil=True)
    def _upsample_one(cam, ty, tx, rows, up):  # pragma: no cover - compiled
        """Upsample one (h, w) map into ``up`` (H, W); ``rows`` (h, W) is scratch."""
        y0, y1, wy0, wy1 = ty
        x0, x1, wx0, wx1 = tx
        for r in range(cam.shape[0]):
            for x in range(up.shape[1]):
                rows[r, x] = _lerp(cam[r, x0[x]], wx0[x], cam[r, x1[x]], wx1[x])
        for y in range(up.shape[0]):
            a, b, wa, wb = y0[y], y1[y], wy0[y], wy1[y]
            for x in range(up.shape[1]):
                up[y, x] = _lerp(rows[a, x], wa, rows[b, x], wb)

    # error_model="numpy": 256 / 0 is inf, as in torch, not a ZeroDivisionError.
    @njit(cache=True, nogil=True, error_model="numpy")
    def _blend(images, cams, table, beta, ty, tx, out, start, stop):  # pragma: no cover - compiled
        """Overlays of images ``start:stop``; see :func:`blend_overlays`."""
        height, width = images.shape[2], images.shape[3]
        rows = np.empty((cams.shape[1], width), dtype=np.float32)
        up = np.empty((height, width), dtype=np.float32)
        index = np.empty((height, width), dtype=np.int32)
        zero, one, end = np.float32(0.0), np.float32(1.0), np.float32(257.0)
        for i in range(start, stop):
            _upsample_one(cams[i], ty, tx, rows, up)
            # One pass for both ends; numba's up.min() and up.max() take two slower ones.
            low, high = up[0, 0], up[0, 0]
            for y in range(height):
                for x in range(width):
                    low = min(low, up[y, x])
                    high = max(high, up[y, x])
            # As the torch path: a flat map (256 / 0 = inf, or an overflowing 256 / tiny span)
            # gets scale 0, the colour of its minimum everywhere.
            scale = np.float32(256.0) / (high - low)
            if not math.isfinite(scale):
                scale = zero
            for y in range(height):
                for x in range(width):
                    # In [0, 256] for every map apply_cam accepts; the bounds keep any other
                    # input (a NaN from an overflowing span) inside the table.
                    position = (up[y, x] - low) * scale
                    index[y, x] = np.int32(position) if position >= zero and position < end else 0
            for c in range(3):
                colours = table[c]
                for y in range(height):
                    for x in range(width):
                        # torch's add(heat, image, alpha=1 - alpha): one fused multiply-add.
                        value = _fma(beta, images[i, c, y, x], colours[index[y, x]])
                        out[i, c, y, x] = min(max(value, zero), one)


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The kernel's bilinear upsample on its own (what :func:`matches_torch` compares).

    Args:
        cams: (n, h, w) float32 maps.
        size: Output ``(H, W)``.

    Returns:
        (n, H, W) float32.
    """
    if not HAVE_NUMBA:
        raise RuntimeError("the overlay kernel needs numba: pip install numba")
    cams = np.ascontiguousarray(cams, dtype=np.float32)
    n, h, w = cams.shape
    ty, tx = bilinear_taps(h, size[0]), bilinear_taps(w, size[1])
    out, rows = np.empty((n, *size), dtype=np.float32), np.empty((h, size[1]), dtype=np.float32)
    for i in range(n):
        _upsample_one(cams[i], ty, tx, rows, out[i])
    return out


@functools.lru_cache(maxsize=64)
def matches_torch(map_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether the kernel's upsample equals this torch build's ``F.interpolate``, bit for bit.

    torch picks its CPU kernel by shape (small outputs take another code path) and its rounding by
    build (fused multiply-adds or not), so this compares the two on a random map of this size.
    A differing arithmetic differs on most of the map's pixels, so one map decides.

    Args:
        map_size: ``(h, w)`` of the maps.
        image_size: ``(H, W)`` of the images.
    """
    if not HAVE_NUMBA:
        return False
    probe = torch.randn(1, *map_size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(probe[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    return bool(np.array_equal(upsample(probe.numpy(), image_size), expected.numpy()))


def _check_blend_arguments(images: np.ndarray, cams: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """Refuse what would make the compiled kernel read or write outside its arrays."""
    named = {"images": images, "cams": cams, "table": table, "out": out}
    for name, array in named.items():
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float32 numpy array, got {getattr(array, 'dtype', type(array).__name__)}")
    if images.ndim != 4 or images.shape[1] != 3 or out.shape != images.shape or cams.ndim != 3 or cams.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected images and out (B, 3, H, W) and cams (B, h, w), got images {images.shape}, out {out.shape}, cams {cams.shape}"
        )
    if table.shape != (3, 257) or min(cams.shape[1:], default=0) < 1 or not out.flags.writeable:
        raise ValueError(f"expected a (3, 257) table, non-empty maps and a writable out, got table {table.shape}, cams {cams.shape}")


def blend_overlays(images: np.ndarray, cams: np.ndarray, table: np.ndarray, alpha: float, out: np.ndarray, threads: int) -> None:
    """Write ``clamp((1 - alpha) * images + table[:, index], 0, 1)`` into ``out``, one image per pass.

    ``index = floor(256 * normalise(upsample(cam)))`` per pixel, as ``apply_cam`` defines it.

    Args:
        images: (B, 3, H, W) float32, C-contiguous.
        cams: (B, h, w) float32 maps, C-contiguous.
        table: (3, 257) float32 colour table with ``alpha`` folded in.
        alpha: The heat map's weight.
        out: (B, 3, H, W) float32 result.
        threads: Threads to spread the batch over (the kernel releases the GIL).

    Raises:
        ValueError: If an array has the wrong dtype, layout or shape (the kernel would read or
            write outside it).
    """
    _check_blend_arguments(images, cams, table, out)
    batch, _, height, width = images.shape
    ty, tx = bilinear_taps(cams.shape[1], height), bilinear_taps(cams.shape[2], width)
    beta = np.float32(1.0 - alpha)
    workers = min(threads, batch * height * width // MIN_PIXELS_PER_THREAD)

    def run(start: int, stop: int) -> None:
        _blend(images, cams, table, beta, ty, tx, out, start, stop)

    run_in_ranges(run, batch, workers, tasks=workers * TASKS_PER_THREAD)
