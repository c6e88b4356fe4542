"""``apply_cam``'s upsample, normalise, colour and blend in one numba pass per image. It reproduces torch's
arithmetic (interpolation taps, fused multiply-adds) bit for bit where :func:`matches_torch` says so."""

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

__all__ = ["bilinear_taps", "blend_overlays", "matches_torch", "upsample"]

TASKS_PER_THREAD = 4  # more than one: a thread slowed by other load hands its share to the others
MIN_PIXELS_PER_THREAD = 1 << 18  # below this, another thread costs more to start than it saves

Taps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def bilinear_taps(in_size: int, out_size: int) -> Taps:
    """``(i0, i1, w0, w1)``: the (out_size,) int64 source indices and float32 weights of ``F.interpolate(mode=
    "bilinear", align_corners=False)`` from ``in_size`` to ``out_size`` along one axis, as torch's CPU kernel computes
    them: output ``i`` is ``w0[i] * src[i0[i]] + w1[i] * src[i1[i]]``."""
    scale = np.float32(in_size) / np.float32(out_size)
    # float32 * float32 is exact in float64, so one rounding to float32 is the fused multiply-add.
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)).astype(np.float64) * np.float64(scale) - 0.5
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
    def _upsample_one(cam, ty, tx, rows, up):  # pragma: no cover - compiled
        """Upsample one (h, w) map into ``up`` (H, W), each tap torch's ``t0 * w0 + t1 * w1``; ``rows`` (h, W) is
        scratch."""
        y0, y1, wy0, wy1 = ty
        x0, x1, wx0, wx1 = tx
        for r in range(cam.shape[0]):
            for x in range(up.shape[1]):
                rows[r, x] = _fma(cam[r, x0[x]], wx0[x], cam[r, x1[x]] * wx1[x])
        for y in range(up.shape[0]):
            a, b, wa, wb = y0[y], y1[y], wy0[y], wy1[y]
            for x in range(up.shape[1]):
                up[y, x] = _fma(rows[a, x], wa, rows[b, x] * wb)

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
            low, high = up[0, 0], up[0, 0]  # one pass: numba's up.min(), up.max() take two slower ones
            for y in range(height):
                for x in range(width):
                    low = min(low, up[y, x])
                    high = max(high, up[y, x])
            # As the torch path: a flat map (256 / 0 or 256 / tiny span = inf) gets scale 0.
            scale = np.float32(256.0) / (high - low)
            scale = scale if math.isfinite(scale) else zero
            for y in range(height):
                for x in range(width):
                    # In [0, 256] for maps apply_cam accepts; the bounds keep a NaN inside the table.
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
    """The kernel's bilinear upsample of (n, h, w) maps to (n, *size) float32, as :func:`matches_torch` compares it."""
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
    """Whether the kernel's upsample of ``map_size`` maps to ``image_size`` equals this torch build's, bit for bit
    (torch picks its CPU kernel by shape and rounding by build; another arithmetic differs on most pixels)."""
    if not HAVE_NUMBA:
        return False
    probe = torch.randn(1, *map_size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(probe[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    return bool(np.array_equal(upsample(probe.numpy(), image_size), expected.numpy()))


def blend_overlays(
    images: np.ndarray, cams: np.ndarray, table: np.ndarray, alpha: float, out: np.ndarray, threads: int
) -> None:
    """Write ``clamp((1 - alpha) * images + table[:, floor(256 * normalise(upsample(cams)))], 0, 1)`` into ``out``.

    Args:
        images, out: (B, 3, H, W) C-contiguous float32 images and result.
        cams: (B, h, w) C-contiguous float32 maps.
        table: (3, 257) float32 colour table with ``alpha`` (the heat map's weight) folded in.
        threads: Threads to spread the batch over (the kernel releases the GIL).

    Raises:
        ValueError: If an array has a dtype, layout or shape the kernel would read or write outside of.
    """
    for name, array in {"images": images, "cams": cams, "table": table, "out": out}.items():
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError(
                f"{name} must be a C-contiguous float32 numpy array, "
                f"got {getattr(array, 'dtype', type(array).__name__)}"
            )
    if (
        images.ndim != 4
        or images.shape[1] != 3
        or out.shape != images.shape
        or cams.ndim != 3
        or len(cams) != len(images)
        or min(cams.shape[1:], default=0) < 1
        or table.shape != (3, 257)
        or not out.flags.writeable
    ):
        raise ValueError(
            "expected images and out (B, 3, H, W), non-empty cams (B, h, w), a (3, 257) table and a writable "
            f"out, got images {images.shape}, out {out.shape}, cams {cams.shape}, table {table.shape}"
        )
    batch, _, height, width = images.shape
    ty, tx = bilinear_taps(cams.shape[1], height), bilinear_taps(cams.shape[2], width)
    beta = np.float32(1.0 - alpha)
    workers = min(threads, batch * height * width // MIN_PIXELS_PER_THREAD)
    run = functools.partial(_blend, images, cams, table, beta, ty, tx, out)  # run(start, stop)
    run_in_ranges(run, batch, workers, tasks=workers * TASKS_PER_THREAD)
