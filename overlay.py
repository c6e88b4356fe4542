"""``apply_cam``: blend class activation maps onto images as colour overlays.

:func:`_overlay_torch` is the overlay in plain torch ops, what ``apply_cam`` computes. On the CPU,
float32 inputs take a compiled kernel (:mod:`.accel.overlay_kernel`) that gives the same output
bit for bit (the tests hold them equal) without streaming the batch through memory once per op.
"""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import Colormap
from torch import Tensor

from .accel import overlay_kernel

__all__ = ["LUT_SIZE", "apply_cam", "colormap_lut"]

LUT_SIZE = 256

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _get_colormap(colormap: str | Colormap) -> Colormap:
    if isinstance(colormap, Colormap):
        return colormap
    if not isinstance(colormap, str):
        raise ValueError(
            f"colormap must be a matplotlib colormap name or Colormap, got {type(colormap).__name__} {colormap!r}"
        )
    try:
        return matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(
            f"unknown colormap {colormap!r}: expected a matplotlib colormap name such as 'jet', "
            "'viridis' or 'inferno' (see matplotlib.colormaps)"
        ) from None


@functools.lru_cache(maxsize=64)
def _cached_lut(name: str, device: torch.device) -> Tensor:
    return _lut_from_colormap(_get_colormap(name), device)


def _lut_from_colormap(cmap: Colormap, device: torch.device) -> Tensor:
    # Sampling at i / 255 reproduces a 256-colour map's own table exactly (matplotlib maps x to
    # entry int(x * N)), so value x gets the colour matplotlib itself gives it.
    rgb = cmap(np.linspace(0.0, 1.0, LUT_SIZE))[:, :3]
    return torch.tensor(rgb, dtype=torch.float32, device=device)


def colormap_lut(colormap: str | Colormap = "jet", device: torch.device | str = "cpu") -> Tensor:
    """The colour table ``apply_cam`` uses: entry ``i`` colours normalised values in ``[i/256, (i+1)/256)``.

    Tables of named colormaps are cached per (name, device); do not modify them in place.

    Args:
        colormap: A matplotlib colormap name or ``Colormap``.
        device: Where the table lives.

    Returns:
        (256, 3) float32 RGB values in [0, 1].

    Raises:
        ValueError: If ``colormap`` is not a known matplotlib colormap.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if isinstance(colormap, Colormap):
        return _lut_from_colormap(colormap, device)
    _get_colormap(colormap)  # validate before caching
    return _cached_lut(colormap, device)


def _validate_overlay_inputs(images: Tensor, cams: Tensor, alpha: float) -> tuple[Tensor, Tensor, bool]:
    """Return images as (B, 3, H, W), cams as (B, h, w), and whether the input was a single image."""
    if not isinstance(images, Tensor) or not isinstance(cams, Tensor):
        raise ValueError(
            f"images and cams must be torch tensors, got {type(images).__name__} and {type(cams).__name__}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (the heat map's weight), got {alpha!r}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a floating point tensor with values in [0, 1], got dtype {images.dtype}; "
            "convert uint8 images with images.float() / 255"
        )
    if not cams.is_floating_point():
        raise ValueError(f"cams must be a floating point tensor, got dtype {cams.dtype}")

    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (B, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")
    single = images.ndim == 3
    if single:
        cams = cams[0] if cams.ndim == 3 and cams.shape[0] == 1 else cams
        if cams.ndim != 2:
            raise ValueError(
                f"a single image (3, H, W) takes a single map (h, w) or (1, h, w), got cams of shape {tuple(cams.shape)}"
            )
        images, cams = images[None], cams[None]
    if cams.ndim == 4 and cams.shape[1] != 1:
        raise ValueError(
            f"cams of ndim 4 must be (B, 1, h, w), got shape {tuple(cams.shape)}; "
            "pick one class's map per image, e.g. cams[torch.arange(B), labels]"
        )
    cams = cams[:, 0] if cams.ndim == 4 else cams
    if cams.ndim != 3:
        raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
    if cams.shape[0] != images.shape[0]:
        raise ValueError(f"batch sizes differ: {images.shape[0]} images but {cams.shape[0]} cams; pass one map per image")
    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 (RGB) channels, got shape {tuple(images.shape)}; "
            "repeat a grey channel with images.expand(-1, 3, -1, -1)"
        )
    if min(images.shape[2:]) < 1 or min(cams.shape[1:]) < 1:
        raise ValueError(f"empty image or map: images {tuple(images.shape)}, cams {tuple(cams.shape)}")
    if cams.numel():
        # Normalising divides by max - min in the working dtype. A NaN, an infinity or a span that
        # overflows all make the span non-finite, so one check (one wait for a GPU) serves them all.
        work = cams.detach().flatten(1).to(torch.promote_types(cams.dtype, torch.float32))
        span = work.amax(dim=1) - work.amin(dim=1)
        if not bool(torch.isfinite(span).all()):
            if not bool(torch.isfinite(cams).all()):
                raise ValueError("cams contain NaN or infinite values; a class activation map must be finite")
            index = int(torch.nonzero(~torch.isfinite(span))[0])
            raise ValueError(
                f"cams[{index}] spans more than {work.dtype} can hold (max - min overflows); "
                "rescale the maps, e.g. cams / cams.abs().amax()"
            )
    return images, cams, single


@torch.no_grad()
def apply_cam(images: Tensor, cams: Tensor, alpha: float = 0.5, colormap: str | Colormap = "jet") -> Tensor:
    """Blend each image with its class activation map drawn as a heat map.

    Each map is upsampled bilinearly to its image's size, min-max normalised per image to [0, 1]
    (a constant map becomes all zeros, never NaN), coloured through ``colormap`` (256 levels, the
    colour matplotlib gives each value) and blended::

        out = clamp((1 - alpha) * image + alpha * colormap(normalise(upsample(cam))), 0, 1)

    Nothing here builds an autograd graph.

    Args:
        images: (B, 3, H, W) RGB in [0, 1], any float dtype, or a single image (3, H, W).
        cams: (B, h, w) or (B, 1, h, w) maps, any float dtype and device (e.g. the
            ``cam`` returned by ``model(x, True)``); a single (h, w) map for a single image.
        alpha: Weight of the heat map, in [0, 1]: 0 returns the image, 1 the heat map alone.
        colormap: A matplotlib colormap name (e.g. ``"jet"``, ``"inferno"``) or ``Colormap``.

    Returns:
        (B, 3, H, W) overlays in [0, 1] with the images' dtype and device; (3, H, W) for a single image.

    Raises:
        ValueError: On a shape, batch size or dtype mismatch, an ``alpha`` outside [0, 1],
            an unknown colormap, or a map with NaN or infinite values.

    Example:
        >>> images, cams = torch.rand(2, 3, 224, 224), torch.randn(2, 13, 13)
        >>> apply_cam(images, cams).shape
        torch.Size([2, 3, 224, 224])
    """
    images, cams, single = _validate_overlay_inputs(images, cams, alpha)
    lut = colormap_lut(colormap, images.device)
    alpha = float(alpha)
    # The maps are tiny next to the images: bring them to the images' device, in float32 at least.
    images = images.detach()
    cams = cams.detach().to(images.device, torch.promote_types(cams.dtype, torch.float32))
    # alpha folded into the table makes the blend one multiply-add. Entry 256 repeats entry 255:
    # the maximum of a map lands exactly on 256 and needs no clamp.
    table = (alpha * lut.t()).to(images.dtype)  # (3, 256)
    table = torch.cat([table, table[:, -1:]], dim=1).contiguous()  # (3, 257)
    out = _empty_like_images(images.shape, images.dtype, images.device)
    if len(out) == 0:
        return out
    if _kernel_applies(images, cams):
        overlay_kernel.blend_overlays(
            images.contiguous().numpy(), cams.contiguous().numpy(), table.numpy(), alpha, out.numpy(),
            threads=torch.get_num_threads(),
        )
    else:
        _overlay_torch(images, cams, table, alpha, out)
    return out[0] if single else out


def _overlay_torch(images: Tensor, cams: Tensor, table: Tensor, alpha: float, out: Tensor) -> Tensor:
    """Write ``clamp((1 - alpha) * images + table[:, floor(256 * normalise(upsample(cams)))], 0, 1)`` into ``out``.

    Args:
        images: (B, 3, H, W) floats.
        cams: (B, h, w) maps, float32 or float64.
        table: (3, 257) colour table with ``alpha`` folded in, in the images' dtype.
        alpha: The heat map's weight.
        out: (B, 3, H, W) contiguous result.
    """
    batch, _, height, width = images.shape
    up = F.interpolate(cams[:, None], size=(height, width), mode="bilinear", align_corners=False)  # (B, 1, H, W)
    low = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - low
    # A flat map carries no location: scale 0 gives every pixel the colour of its minimum. A span
    # so small that 256 / span overflows to inf counts as flat.
    scale = (LUT_SIZE / span).nan_to_num_(posinf=0.0)
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


def _empty_like_images(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    # On the CPU the output costs more to fault in than to fill. numpy asks the kernel for
    # transparent huge pages on large buffers and torch's allocator does not; the tensor owns the array.
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(tuple(shape), dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)
