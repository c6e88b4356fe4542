"""``apply_cam``: CAM heat maps blended onto images, in plain torch (:func:`_overlay_torch`) and, for float32
on the CPU, through the compiled kernel of :mod:`.accel.overlay_kernel`, equal to it bit for bit."""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import Colormap
from torch import Tensor

from .accel import overlay_kernel

__all__ = ["LUT_SIZE", "apply_cam", "colormap_lut", "get_colormap"]

LUT_SIZE = 256

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def get_colormap(colormap: str | Colormap) -> Colormap:
    """The matplotlib colormap named by ``colormap`` (or ``colormap`` itself); ``ValueError`` for an unknown name."""
    _check(
        isinstance(colormap, (str, Colormap)),
        f"colormap must be a matplotlib colormap name or Colormap, got {type(colormap).__name__} {colormap!r}",
    )
    _check(
        isinstance(colormap, Colormap) or colormap in matplotlib.colormaps,
        f"unknown colormap {colormap!r}: "
        "expected a matplotlib colormap name such as 'jet', 'viridis' or 'inferno' (see matplotlib.colormaps)",
    )
    return matplotlib.colormaps.get_cmap(colormap)


def _lut(colormap: str | Colormap, device: torch.device) -> Tensor:
    """:func:`colormap_lut` of a checked colormap."""
    # Sampling at i / 255 reproduces a 256-colour map's own table exactly (matplotlib maps x to
    # entry int(x * N)), so value x gets the colour matplotlib itself gives it.
    table = matplotlib.colormaps.get_cmap(colormap)(np.linspace(0, 1, LUT_SIZE))[:, :3]
    return torch.tensor(table, dtype=torch.float32, device=device)


_cached_lut = functools.lru_cache(maxsize=64)(_lut)


def colormap_lut(colormap: str | Colormap = "jet", device: torch.device | str = "cpu") -> Tensor:
    """The (256, 3) float32 RGB table in [0, 1] ``apply_cam`` uses on ``device``: entry ``i`` colours normalised
    values in ``[i/256, (i+1)/256)``. A colormap name's table is cached per device: do not modify it in place.

    Raises:
        ValueError: If ``colormap`` is not a known matplotlib colormap.
    """
    device = torch.device(device)  # "cuda" and "cuda:N" share a cache entry
    device = torch.device("cuda", torch.cuda.current_device()) if device == torch.device("cuda") else device
    get_colormap(colormap)  # validated before caching
    return (_lut if isinstance(colormap, Colormap) else _cached_lut)(colormap, device)


def _validate(images: Tensor, cams: Tensor, alpha: float) -> tuple[Tensor, Tensor, bool]:
    """Return images as (B, 3, H, W), cams as (B, h, w), and whether the input was a single image."""
    _check(
        isinstance(images, Tensor) and isinstance(cams, Tensor),
        f"images and cams must be torch tensors, got {type(images).__name__} and {type(cams).__name__}",
    )
    _check(
        not isinstance(alpha, bool) and isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0,
        f"alpha must be a number in [0, 1] (the heat map's weight), got {alpha!r}",
    )
    _check(
        images.is_floating_point(),
        f"images must be a floating point tensor with values in [0, 1], got dtype "
        f"{images.dtype}; convert uint8 images with images.float() / 255",
    )
    _check(cams.is_floating_point(), f"cams must be a floating point tensor, got dtype {cams.dtype}")
    image_shape, cam_shape, single = tuple(images.shape), tuple(cams.shape), images.ndim == 3
    _check(
        images.ndim in (3, 4) and image_shape[-3] == 3 and min(image_shape[-2:]) >= 1,
        f"images must be (B, 3, H, W) or (3, H, W), non-empty, with 3 (RGB) channels, got shape {image_shape}"
        + ("; repeat a grey channel with images.expand(-1, 3, -1, -1)" if images.ndim == 4 else ""),
    )
    if single:  # a batch of one
        images, cams = images[None], (cams[None] if cams.ndim == 2 else cams)
    cams = cams[:, 0] if cams.ndim == 4 and cams.shape[1] == 1 else cams
    single_map = f"a single image (3, H, W) takes a single map (h, w) or (1, h, w), got cams of shape {cam_shape}"
    _check(
        cams.ndim == 3 and min(cams.shape[1:]) >= 1,
        single_map
        if single
        else f"cams must be (B, h, w) or (B, 1, h, w), non-empty, got shape {cam_shape}"
        + ("; pick one class's map per image, e.g. cams[torch.arange(B), labels]" if cams.ndim == 4 else ""),
    )
    _check(
        len(cams) == len(images),
        single_map
        if single
        else f"batch sizes differ: {len(images)} images but {len(cams)} cams; pass one map per image",
    )
    # Normalising divides by max - min in the working dtype. A NaN, an infinity or a span that
    # overflows all make the span non-finite, so one check (one wait for a GPU) serves them all.
    work = cams.detach().flatten(1).to(torch.promote_types(cams.dtype, torch.float32))
    finite = torch.isfinite(work.amax(dim=1) - work.amin(dim=1))
    if not bool(finite.all()):
        _check(
            bool(torch.isfinite(cams).all()),
            "cams contain NaN or infinite values; a class activation map must be finite",
        )
        raise ValueError(
            f"cams[{int(torch.nonzero(~finite)[0])}] spans more than {work.dtype} can hold "
            "(max - min overflows); rescale the maps, e.g. cams / cams.abs().amax()"
        )
    return images, cams, single


@torch.no_grad()
def apply_cam(images: Tensor, cams: Tensor, alpha: float = 0.5, colormap: str | Colormap = "jet") -> Tensor:
    """Blend each image with its class activation map drawn as a heat map.

    Each map is upsampled bilinearly to its image's size, min-max normalised per image to [0, 1]
    (a constant map becomes all zeros, never NaN), coloured through ``colormap`` (256 levels, the
    colour matplotlib gives each value) and blended; nothing builds an autograd graph::

        out = clamp((1 - alpha) * image + alpha * colormap(normalise(upsample(cam))), 0, 1)

    Args:
        images: (B, 3, H, W) RGB in [0, 1], any float dtype, or a single image (3, H, W).
        cams: (B, h, w) or (B, 1, h, w) maps, any float dtype and device (e.g. the ``cam`` returned
            by ``model(x, True)``); a single (h, w) map for a single image.
        alpha: Weight of the heat map, in [0, 1]: 0 returns the image, 1 the heat map alone.
        colormap: A matplotlib colormap name (e.g. ``"jet"``, ``"inferno"``) or ``Colormap``.

    Returns:
        (B, 3, H, W) overlays in [0, 1] with the images' dtype and device; (3, H, W) for a single image.

    Raises:
        ValueError: On a bad shape, batch size, dtype, ``alpha`` or colormap, or a map with NaN or infinite values.
    """
    images, cams, single = _validate(images, cams, alpha)
    lut, alpha, images = colormap_lut(colormap, images.device), float(alpha), images.detach()
    cams = cams.detach().to(images.device, torch.promote_types(cams.dtype, torch.float32))
    # alpha folded into the table makes the blend one multiply-add. Entry 256 repeats entry 255:
    # the maximum of a map lands exactly on 256 and needs no clamp.
    table = (alpha * torch.cat([lut.t(), lut.t()[:, -1:]], dim=1)).to(images.dtype).contiguous()  # (3, 257)
    # On the CPU the output costs more to fault in than to fill; numpy asks for transparent huge
    # pages on large buffers and torch's allocator does not.
    np_dtype = _NUMPY_DTYPES.get(images.dtype) if images.device.type == "cpu" else None
    out = (
        torch.from_numpy(np.empty(images.shape, np_dtype))
        if np_dtype
        else torch.empty_like(images, memory_format=torch.contiguous_format)
    )
    if _kernel_applies(images, cams):
        overlay_kernel.blend_overlays(
            images.contiguous().numpy(),
            cams.contiguous().numpy(),
            table.numpy(),
            alpha,
            out.numpy(),
            threads=torch.get_num_threads(),
        )
    else:
        _overlay_torch(images, cams, table, alpha, out)
    return out[0] if single else out


def _overlay_torch(images: Tensor, cams: Tensor, table: Tensor, alpha: float, out: Tensor) -> Tensor:
    """``out`` (B, 3, H, W) =
    ``clamp((1 - alpha) * images + table[:, floor(256 * normalise(upsample(cams)))], 0, 1)``."""
    batch, _, height, width = images.shape
    up = F.interpolate(cams[:, None], size=(height, width), mode="bilinear", align_corners=False)  # (B, 1, H, W)
    low = up.amin(dim=(2, 3), keepdim=True)
    # A flat map carries no location: scale 0 gives every pixel the colour of its minimum. A span
    # so small that 256 / span overflows to inf counts as flat.
    scale = (LUT_SIZE / (up.amax(dim=(2, 3), keepdim=True) - low)).nan_to_num_(posinf=0.0)
    # up - low >= 0, so the cast's truncation is the floor matplotlib uses.
    index = up.sub_(low).mul_(scale).view(-1).int()  # (B*H*W,) in [0, 256]
    heat = table.index_select(1, index).view(3, batch, height, width).transpose(0, 1)  # (B, 3, H, W)
    torch.add(heat, images, alpha=1.0 - alpha, out=out)  # rounded once, as the kernel's fused multiply-add
    return out.clamp_(0.0, 1.0)


def _kernel_applies(images: Tensor, cams: Tensor) -> bool:
    """Whether the compiled kernel computes what :func:`_overlay_torch` would: float32 on the CPU."""
    return (
        overlay_kernel.HAVE_NUMBA
        and images.device.type == "cpu"
        and images.dtype == cams.dtype == torch.float32
        and overlay_kernel.matches_torch(tuple(cams.shape[1:]), tuple(images.shape[2:]))
    )
