"""``apply_cam``: blend class activation maps onto images as colour overlays."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import Colormap
from torch import Tensor

from .accel import overlay_kernel


LUT_SIZE = 256


# Pixels (summed over a chunk's images) that apply_cam processes at a time on the CPU: 5 images
# at 224x224. Every step then works on a few MB that stay in cache, so the batch streams through
# main memory once instead of once per operation; a plain chain of whole-batch ops is ~2x slower
# than OpenCV's per-image path, chunked it is faster.
CPU_CHUNK_PIXELS = 1 << 18


# numpy dtypes for the output buffer on the CPU (see _empty_like_images).
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
    # entry int(x * N)), so cam value x lands on colour cmap(x) as matplotlib itself would colour it.
    rgb = cmap(np.linspace(0.0, 1.0, LUT_SIZE))[:, :3]
    return torch.tensor(rgb, dtype=torch.float32, device=device)


def colormap_lut(colormap: str | Colormap = "jet", device: torch.device | str = "cpu") -> Tensor:
    """The colour lookup table ``apply_cam`` uses: entry ``i`` colours normalised values in ``[i/256, (i+1)/256)``.

    Tables for named colormaps are built once per (name, device) and cached; do not modify the
    returned tensor in place.

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

    single = images.ndim == 3
    if single:
        if cams.ndim == 3 and cams.shape[0] == 1:
            cams = cams[0]
        if cams.ndim != 2:
            raise ValueError(
                "a single image (3, H, W) takes a single map (h, w) or (1, h, w), "
                f"got cams of shape {tuple(cams.shape)}"
            )
        images, cams = images[None], cams[None]
    elif images.ndim == 4:
        if cams.ndim == 4:
            if cams.shape[1] != 1:
                raise ValueError(
                    f"cams of ndim 4 must be (B, 1, h, w), got shape {tuple(cams.shape)}; "
                    "pick one class's map per image, e.g. cams[torch.arange(B), labels]"
                )
            cams = cams[:, 0]
        if cams.ndim != 3:
            raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
        if cams.shape[0] != images.shape[0]:
            raise ValueError(
                f"batch sizes differ: {images.shape[0]} images but {cams.shape[0]} cams; pass one map per image"
            )
    else:
        raise ValueError(f"images must be (B, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")

    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 (RGB) channels, got shape {tuple(images.shape)}; "
            "repeat a grey channel with images.expand(-1, 3, -1, -1)"
        )
    if min(images.shape[2:]) < 1 or min(cams.shape[1:]) < 1:
        raise ValueError(f"empty image or map: images {tuple(images.shape)}, cams {tuple(cams.shape)}")
    if cams.numel():
        # Normalising divides by max - min in the working dtype; a span that overflows it has no
        # scale. A NaN or infinite value makes the span non-finite too, so one check (one wait for
        # a GPU) serves both.
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


def _empty_like_images(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    # On the CPU the output (38 MB for 64 images at 224x224) costs more to fault in than to fill.
    # numpy asks the kernel for transparent huge pages on large buffers and torch's allocator does
    # not, which makes first touch about three times cheaper; the tensor owns the array.
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(shape, dtype=dtype, device=device)


@torch.no_grad()
def apply_cam(
    images: Tensor,
    cams: Tensor,
    alpha: float = 0.5,
    colormap: str | Colormap = "jet",
) -> Tensor:
    """Blend each image with its class activation map drawn as a heat map.

    Each map is upsampled bilinearly to its image's size, min-max normalised per image to [0, 1]
    (a constant map becomes all zeros, never NaN), coloured through ``colormap`` with one table
    lookup over the whole batch, and blended::

        out = clamp((1 - alpha) * image + alpha * colormap(normalise(upsample(cam))), 0, 1)

    The colour of a normalised value ``x`` is matplotlib's ``colormap(x)`` (256 levels). On the CPU,
    float32 images go through a compiled kernel that does all of this in one pass per image,
    spread over ``torch.get_num_threads()`` threads (:mod:`overlay_kernel`); other dtypes are
    processed in cache-sized chunks. Both give the torch reference's colours, whatever the batch
    split. Nothing here builds an autograd graph.

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
    # The maps are tiny next to the images: bring them to the images, whose device the result
    # keeps, in the working dtype (float32, or float64 for float64 maps).
    images = images.detach()
    cams = cams.detach().to(images.device, torch.promote_types(cams.dtype, torch.float32))
    batch, _, height, width = images.shape

    # Per-channel tables with alpha folded in, so the blend is a single add per element. Entry 256
    # repeats entry 255: a maximum that rounds to 256.00001 after scaling needs no extra clamp pass.
    table = (alpha * lut.t()).to(images.dtype)  # (3, 256)
    table = torch.cat([table, table[:, -1:]], dim=1).contiguous()  # (3, 257)

    out = _empty_like_images((batch, 3, height, width), images.dtype, images.device)
    if batch == 0:
        return out
    on_cpu = images.device.type == "cpu"
    if on_cpu and _kernel_applies(images, cams):
        overlay_kernel.blend_overlays(
            images.contiguous().numpy(), cams.contiguous().numpy(), table.numpy(), alpha, out.numpy(),
            threads=torch.get_num_threads(),
        )
        return out[0] if single else out
    chunk = max(1, CPU_CHUNK_PIXELS // (height * width)) if on_cpu else batch
    chunk = min(chunk, batch)
    # Reused by every chunk, so the allocator hands out no fresh (page-faulting) memory per chunk.
    index_buffer = torch.empty(chunk * height * width, dtype=torch.int32, device=images.device)
    heat_buffer = torch.empty(3 * chunk * height * width, dtype=images.dtype, device=images.device)
    with _one_cpu_thread() if on_cpu else contextlib.nullcontext():
        _blend_chunks(images, cams, table, alpha, chunk, index_buffer, heat_buffer, out)
    return out[0] if single else out


def _kernel_applies(images: Tensor, cams: Tensor) -> bool:
    """Whether the fused CPU kernel computes what the torch path would: float32 images and maps."""
    return (
        overlay_kernel.HAVE_NUMBA
        and images.dtype == torch.float32
        and cams.dtype == torch.float32
        and overlay_kernel.matches_torch(tuple(cams.shape[1:]), tuple(images.shape[2:]))
    )


# Each cache-sized chunk is ~60 small element-wise passes. Split over torch's threads, every pass
# wakes the other threads and waits for the slowest: on 2-core VMs that made apply_cam 1-4x slower
# than one thread, varying run to run (benchmarks/run.py, overlay), and one thread was never slower.
@contextlib.contextmanager
def _one_cpu_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _blend_chunks(
    images: Tensor, cams: Tensor, table: Tensor, alpha: float, chunk: int,
    index_buffer: Tensor, heat_buffer: Tensor, out: Tensor,
) -> None:
    """Write ``clamp((1 - alpha) * images + table[:, index(cams)], 0, 1)`` into ``out``, ``chunk`` images at a time.

    Args:
        images: (B, 3, H, W) floats.
        cams: (B, h, w) maps in the working dtype.
        table: (3, 257) colour table with ``alpha`` folded in.
        chunk: Images per pass.
        index_buffer: (chunk * H * W,) int32 scratch.
        heat_buffer: (3 * chunk * H * W,) scratch in the images' dtype.
        out: (B, 3, H, W) result.
    """
    batch, _, height, width = images.shape
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        n = stop - start
        index = index_buffer[: n * height * width]
        _heat_index(cams[start:stop], height, width, out=index)
        # A contiguous prefix, not heat_buffer[:, :m]: index_select into a strided out is ~10x slower.
        heat = heat_buffer[: 3 * n * height * width].view(3, n * height * width)
        torch.index_select(table, 1, index, out=heat)  # (3, n*H*W): all channels in one lookup
        out_chunk = out[start:stop]
        heat = heat.view(3, n, height, width).transpose(0, 1)  # (n, 3, H, W)
        torch.add(heat, images[start:stop], alpha=1.0 - alpha, out=out_chunk)
        out_chunk.clamp_(0.0, 1.0)


def _heat_index(cams: Tensor, height: int, width: int, out: Tensor) -> Tensor:
    """Colour-table index of every pixel: ``floor(256 * normalise(upsample(cams)))``.

    Args:
        cams: (n, h, w) float maps.
        height: Output height H.
        width: Output width W.
        out: (n * H * W,) int32 buffer the indices are written to.

    Returns:
        ``out``, holding indices in [0, 256].
    """
    up = F.interpolate(cams[:, None], size=(height, width), mode="bilinear", align_corners=False)  # (n, 1, H, W)
    low = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - low
    # A flat map carries no location: scale 0 puts every pixel at the colour of the minimum. span
    # is never negative or NaN, so inf (span 0, or so small that 256 / span overflows) is the case.
    scale = (LUT_SIZE / span).nan_to_num_(posinf=0.0)
    # (up - low) >= 0 exactly, so the float -> int cast's truncation is the floor matplotlib uses.
    return out.copy_(up.sub_(low).mul_(scale).view(-1))
