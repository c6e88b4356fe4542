"""Overlays and figures: see where the network looked.

``apply_cam`` turns a batch of class activation maps into heat-map overlays on their images;
``visualize_cam`` lays images and overlays out as a labelled grid, optionally with the predicted
and ground-truth boxes. The seed README's call keeps working::

    blended_images = apply_cam(image_visualize, cam)     # (B, 3, H, W) in [0, 1]
    visualize_cam(image_visualize, blended_images, predicted_classes)

Boxes follow the project's convention: float ``[x1, y1, x2, y2]`` in the pixels of the image the
model sees, pixel-edge coordinates (a box over pixel columns ``c0..c1`` has ``x1 = c0``,
``x2 = c1 + 1``); a missing box is all NaN.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Run as ``python visualize.py``: hand over to the package's copy of this module.
    import _bootstrap

    _bootstrap.ensure_package()
    from CAM_Stanford_Cars.visualize import main

    sys.exit(main())

import argparse
import contextlib
import functools
import logging
import math
import os
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor

from . import overlay_kernel
from .cli import HelpFormatter, OneLineParser, positive_int

logger = logging.getLogger(__name__)

__all__ = ["apply_cam", "colormap_lut", "plot_training_curves", "render_cam_grid", "visualize_cam"]

LUT_SIZE = 256
# Pixels (summed over a chunk's images) that apply_cam processes at a time on the CPU: 5 images
# at 224x224. Every step then works on a few MB that stay in cache, so the batch streams through
# main memory once instead of once per operation; a plain chain of whole-batch ops is ~2x slower
# than OpenCV's per-image path, chunked it is faster.
CPU_CHUNK_PIXELS = 1 << 18
# matplotlib's built-in backends that can only write files; on these, figures are not registered
# with pyplot, so scripts that draw many grids do not accumulate open figures.
_NON_INTERACTIVE_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})
# numpy dtypes for the output buffer on the CPU (see _empty_like_images).
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

ClassLabel = Union[str, int]
BoxesArg = Union[Mapping[str, Any], Sequence[Any], None]


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

PREDICTED_BOX_STYLE = {"edgecolor": "#ff00ff", "linestyle": "-", "linewidth": 1.8}
TRUE_BOX_STYLE = {"edgecolor": "#00ff40", "linestyle": "--", "linewidth": 1.8}
RIGHT_COLOR = "#1a7f37"
WRONG_COLOR = "#cf222e"
RIGHT_MARK = "\u2713"  # ✓
WRONG_MARK = "\u2717"  # ✗
_TITLE_WRAP = 30


def _as_image_batch(name: str, images: Any) -> np.ndarray:
    """(B, H, W, 3) float32 numpy in [0, 1] from a (B, 3, H, W) or (3, H, W) tensor or array."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a tensor (B, 3, H, W) or (3, H, W), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be (B, 3, H, W) or (3, H, W) RGB, got shape {tuple(images.shape)}")
    images = images.detach().cpu()
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return images.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def _class_labels(
    name: str, classes: Any, batch: int, class_names: Sequence[str] | Mapping[int, str] | None
) -> list[str]:
    """Display names for ``classes`` (names, ints, or an int tensor), one per image."""
    if isinstance(classes, Tensor):
        classes = classes.detach().cpu().reshape(-1).tolist()
    elif isinstance(classes, (str, int, np.integer)):
        classes = [classes]
    elif isinstance(classes, np.ndarray):
        classes = classes.reshape(-1).tolist()
    classes = list(classes)
    if len(classes) != batch:
        raise ValueError(f"{name} has {len(classes)} entries for {batch} images; pass one class per image")
    labels = []
    for value in classes:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = int(value)
            if value < 0:
                # With a list of names, -1 would quietly name the last class.
                raise ValueError(f"{name} holds class index {value}; class indices are 0 or more")
            if class_names is not None:
                try:
                    labels.append(str(class_names[value]))
                    continue
                except (IndexError, KeyError):
                    raise ValueError(f"{name} holds class index {value}, which class_names does not have") from None
            labels.append(f"class {value}")
        elif isinstance(value, str):
            labels.append(value)
        else:
            raise ValueError(f"{name} entries must be class names or integer indices, got {value!r}")
    return labels


def _box_array(name: str, value: Any, batch: int) -> np.ndarray | None:
    if value is None:
        return None
    array = value.detach().to("cpu", torch.float64).numpy() if isinstance(value, Tensor) else np.asarray(value, float)
    if array.ndim == 1 and batch == 1:
        array = array[None]
    if array.shape != (batch, 4):
        raise ValueError(f"{name} boxes must be ({batch}, 4) [x1, y1, x2, y2], got shape {array.shape}")
    return array


def _parse_boxes(boxes: BoxesArg, batch: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(predicted, true) box arrays (B, 4) or None, from a mapping or a pair."""
    if boxes is None:
        return None, None
    if isinstance(boxes, Mapping):
        unknown = set(boxes) - {"predicted", "true"}
        if unknown:
            raise ValueError(f"boxes keys must be 'predicted' and/or 'true', got unexpected {sorted(unknown)!r}")
        predicted, true = boxes.get("predicted"), boxes.get("true")
    elif isinstance(boxes, Sequence) and not isinstance(boxes, str) and len(boxes) == 2:
        predicted, true = boxes
    else:
        raise ValueError(
            'boxes must be {"predicted": (B, 4), "true": (B, 4)} or a pair (predicted, true), '
            f"got {type(boxes).__name__}"
        )
    return _box_array("predicted", predicted, batch), _box_array("true", true, batch)


def _draw_box(ax: Any, box: np.ndarray, style: Mapping[str, Any], label: str) -> None:
    if not np.isfinite(box).all():
        return
    x1, y1, x2, y2 = (float(v) for v in box)
    # imshow centres pixel c on c, so its left edge (the box's x1 = c) sits at c - 0.5.
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, facecolor="none", label=label, **style))


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, _TITLE_WRAP)) or text


def _new_figure(figsize: tuple[float, float], dpi: float, show: bool, display: bool = True) -> Figure:
    """A pyplot figure where something can display it (notebooks, GUIs), a plain one otherwise.

    Notebook backends show the figures pyplot created during a cell, so the seed's snippet, which
    ignores the return value, still displays its grid. On file-only backends (Agg in scripts and
    tests), or with ``display=False``, a plain ``Figure`` is freed with its last reference instead
    of piling up in pyplot.
    """
    backend = str(matplotlib.get_backend()).lower()
    if show or (display and backend not in _NON_INTERACTIVE_BACKENDS):
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, dpi=dpi, layout="constrained")
    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def _save_format(save_path: str | os.PathLike[str], name: str = "save_path") -> str:
    """The image format named by ``save_path``'s suffix, e.g. ``"png"``; ``name`` is the argument's name in errors."""
    fmt = Path(save_path).suffix[1:].lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot tell the image format of {name} {str(save_path)!r} from its suffix; "
            f"use one of {', '.join('.' + s for s in sorted(supported))}"
        )
    return fmt


def _check_save_path(save_path: str | os.PathLike[str], name: str = "save_path") -> str:
    """Refuse a figure path that cannot be written, before anything is drawn; return its format.

    Args:
        save_path: The figure file.
        name: How the caller calls it in messages (``"save_path"``, ``"--out"``).

    Raises:
        TypeError: If ``save_path`` is not a str or path.
        ValueError: If it is a folder, lies under a file, or has no known image suffix.
    """
    if not isinstance(save_path, str | os.PathLike):
        raise TypeError(f"{name} must be a file name such as 'cams.png', got {type(save_path).__name__}")
    path = Path(save_path)
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file name such as {str(path / 'cams.png')!r}")
    from .model import file_in_the_way

    blocker = file_in_the_way(path)
    if blocker is not None:
        raise ValueError(f"{name} {str(path)!r} cannot be written: {str(blocker)!r} is a file, not a folder; choose another path")
    return _save_format(path, name)


def _check_dpi(dpi: Any) -> float:
    """``dpi`` as a positive finite float, checked before anything is drawn."""
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.integer, np.floating)) or not (
        math.isfinite(float(dpi)) and float(dpi) > 0
    ):
        raise ValueError(f"dpi must be a positive number of dots per inch such as 100, got {dpi!r}")
    return float(dpi)


def _save_figure_atomically(fig: Figure, save_path: str | os.PathLike[str], dpi: float) -> Path:
    from .model import atomic_file

    path = Path(save_path)
    fmt = _save_format(path)
    # Through a hidden sibling, so a crash never leaves a half-written figure under the final name.
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format=fmt, dpi=dpi, metadata=None)
    logger.debug("saved figure to %s", path)
    return path


def visualize_cam(
    images: Tensor,
    blended_images: Tensor,
    predicted_classes: Sequence[ClassLabel] | Tensor | ClassLabel,
    true_classes: Sequence[ClassLabel] | Tensor | ClassLabel | None = None,
    boxes: BoxesArg = None,
    save_path: str | os.PathLike[str] | None = None,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    scores: Sequence[float] | Tensor | None = None,
    samples_per_row: int | None = None,
    colormap: str | Colormap = "jet",
    colorbar: bool = True,
    dpi: float = 100.0,
    show: bool = False,
) -> Figure:
    """Draw each image beside its CAM overlay, titled with the predicted (and true) class.

    The image's panel is titled with the true class when given; the overlay's panel with the
    predicted class, marked ✓ in green when it equals the true class and ✗ in red otherwise.
    Boxes are drawn on both panels: predicted solid magenta, true dashed green; NaN boxes are
    skipped. Samples wrap into rows of ``samples_per_row`` pairs.

    In a notebook the figure appears below the cell whether or not the return value is used (it
    is created through pyplot there; end the line with ``;`` if it is the cell's last expression
    to avoid seeing it twice). With a file-only backend nothing is displayed or kept open.

    Args:
        images: (B, 3, H, W) or (3, H, W) RGB in [0, 1].
        blended_images: Overlays of the same shape, e.g. from ``apply_cam``.
        predicted_classes: One class per image: names, integer indices, or an int tensor (B,).
        true_classes: Ground-truth classes in the same forms, or None.
        boxes: ``{"predicted": (B, 4), "true": (B, 4)}`` (either key optional) or a pair
            ``(predicted, true)`` of tensors/arrays, ``[x1, y1, x2, y2]`` in the images' pixels
            (pixel-edge convention), or None.
        save_path: Where to write the figure; the format follows the suffix (``.png``, ``.pdf``,
            ...). Parent folders are created; the file is replaced atomically.
        class_names: Maps integer classes to names (a list, or the dataset's ``class_to_idx``).
        scores: (B,) confidence of each prediction in [0, 1], shown as a percentage.
        samples_per_row: Image/overlay pairs per row; default about the square root of B, at most 4.
        colormap: Colormap of the colour bar; use the one given to ``apply_cam``.
        colorbar: Whether to add a colour bar for the normalised CAM.
        dpi: Figure resolution, also used when saving.
        show: Call ``matplotlib.pyplot.show()`` (for scripts with a GUI backend).

    Returns:
        The matplotlib figure, with two axes per image (image, overlay), plus the colour bar's.

    Raises:
        ValueError: On mismatched shapes or counts, a negative class index, a malformed
            ``boxes``, a ``dpi`` that is not a positive number, or a ``save_path`` that is a
            folder or whose suffix names no supported format.

    Example:
        >>> blended = apply_cam(images, cams)
        >>> fig = visualize_cam(images, blended, ["BMW M3 Coupe 2012"] * len(images), save_path="cams.png")
    """
    image_array = _as_image_batch("images", images)
    blended_array = _as_image_batch("blended_images", blended_images)
    if image_array.shape != blended_array.shape:
        raise ValueError(
            f"images and blended_images must have the same shape, got {tuple(images.shape)} and "
            f"{tuple(blended_images.shape)}; pass the overlays apply_cam made from these images"
        )
    batch, height, width, _ = image_array.shape
    if batch == 0:
        raise ValueError("images is an empty batch (0, 3, H, W); there is nothing to draw")
    dpi = _check_dpi(dpi)
    if save_path is not None:
        _check_save_path(save_path)  # a folder or a bad suffix fails before any drawing
    predicted = _class_labels("predicted_classes", predicted_classes, batch, class_names)
    true = None if true_classes is None else _class_labels("true_classes", true_classes, batch, class_names)
    predicted_boxes, true_boxes = _parse_boxes(boxes, batch)
    score_list = None
    if scores is not None:
        score_list = [float(s) for s in (scores.detach().cpu().reshape(-1) if isinstance(scores, Tensor) else scores)]
        if len(score_list) != batch:
            raise ValueError(f"scores has {len(score_list)} entries for {batch} images; pass one per image")
    if samples_per_row is None:
        samples_per_row = min(batch, 4, max(1, math.ceil(math.sqrt(batch))))
    elif isinstance(samples_per_row, bool) or not isinstance(samples_per_row, int) or samples_per_row < 1:
        raise ValueError(f"samples_per_row must be a positive integer, got {samples_per_row!r}")
    samples_per_row = min(samples_per_row, batch)
    rows = math.ceil(batch / samples_per_row)

    # Titles first: the tallest one sets the rows' height, so long class names are never clipped.
    image_titles, overlay_titles, overlay_colors = [], [], []
    for i in range(batch):
        pred_text = predicted[i] if score_list is None else f"{predicted[i]} ({100 * score_list[i]:.0f}%)"
        if true is None:
            image_titles.append("image")
            overlay_titles.append(_wrap(f"pred: {pred_text}"))
            overlay_colors.append("black")
        else:
            right = predicted[i] == true[i]
            mark, color = (RIGHT_MARK, RIGHT_COLOR) if right else (WRONG_MARK, WRONG_COLOR)
            image_titles.append(_wrap(f"true: {true[i]}"))
            overlay_titles.append(_wrap(f"{mark} pred: {pred_text}"))
            overlay_colors.append(color)
    title_lines = max(t.count("\n") + 1 for t in image_titles + overlay_titles)

    panel = 2.3  # inches per panel's longer side
    aspect = height / width
    grid_width = 2 * samples_per_row * panel
    bar_width = 0.8 if colorbar else 0.0
    legend_height = 0.35 if predicted_boxes is not None or true_boxes is not None else 0.0
    row_height = panel * aspect + 0.25 + 0.17 * title_lines
    figsize = (grid_width + bar_width, rows * row_height + legend_height)
    fig = _new_figure(figsize, dpi, show)
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04)
    if colorbar:
        grid_fig, bar_fig = fig.subfigures(1, 2, width_ratios=[grid_width, bar_width], wspace=0.0)
    else:
        grid_fig, bar_fig = fig, None
    # One subfigure per sample, on a faint background, so each image visibly pairs with its overlay.
    cells = grid_fig.subfigures(rows, samples_per_row, squeeze=False, wspace=0.02, hspace=0.02)
    for i in range(batch):
        cell = cells.flat[i]
        cell.set_facecolor("0.95")
        ax_image, ax_overlay = cell.subplots(1, 2)
        ax_image.imshow(image_array[i], interpolation="nearest")
        ax_overlay.imshow(blended_array[i], interpolation="nearest")
        ax_image.set_title(image_titles[i], fontsize=9)
        ax_overlay.set_title(overlay_titles[i], fontsize=9, color=overlay_colors[i])
        for ax in (ax_image, ax_overlay):
            if predicted_boxes is not None:
                _draw_box(ax, predicted_boxes[i], PREDICTED_BOX_STYLE, "predicted box")
            if true_boxes is not None:
                _draw_box(ax, true_boxes[i], TRUE_BOX_STYLE, "true box")
            # Pin the view to the image: a box reaching past the border must not rescale the panel.
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_axis_off()

    if predicted_boxes is not None or true_boxes is not None:
        handles = []
        if predicted_boxes is not None:
            handles.append(Patch(facecolor="none", label="predicted box", **PREDICTED_BOX_STYLE))
        if true_boxes is not None:
            handles.append(Patch(facecolor="none", label="true box", **TRUE_BOX_STYLE))
        grid_fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    if bar_fig is not None:
        mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=_get_colormap(colormap))
        # A bar of about one row's height, centred: a full-height bar on a tall grid would dwarf it.
        bar_height = min(0.8, 2.0 / (rows + 1))
        cax = bar_fig.add_axes((0.15, 0.5 - bar_height / 2, 0.2, bar_height))
        bar = bar_fig.colorbar(mappable, cax=cax)
        bar.set_label("normalised CAM", fontsize=8)
        bar.ax.tick_params(labelsize=7)

    if save_path is not None:
        _save_figure_atomically(fig, save_path, dpi)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


# Training curves: (panel title, metric keys without their split prefix, y label).
_CURVE_PANELS = (
    ("loss", ("loss",), "cross-entropy"),
    ("classification", ("top1", "top5"), "accuracy"),
    ("localisation", ("gt_known_loc", "top1_loc", "maxboxacc", "maxboxacc_v2"), "accuracy"),
)
_CURVE_LABELS = {
    "loss": "loss", "top1": "top-1", "top5": "top-5", "gt_known_loc": "GT-known Loc",
    "top1_loc": "Top-1 Loc", "maxboxacc": "MaxBoxAcc", "maxboxacc_v2": "MaxBoxAccV2",
}
_SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    save_path: str | os.PathLike[str] | None = None,
    *,
    dpi: float = 100.0,
    show: bool = False,
) -> Figure:
    """Loss, classification and localisation metrics per epoch, one panel each.

    Each record is one epoch's metrics as the training loop logs them: ``epoch`` plus keys
    ``<split>_<metric>`` for split ``train``/``val``/``test`` and metric ``loss``, ``top1``,
    ``top5``, ``gt_known_loc``, ``top1_loc``, ``maxboxacc`` or ``maxboxacc_v2``; missing keys and
    panels without any data are left out. The last epoch marked ``"best": True`` gets a dotted line.

    The figure is never registered with pyplot unless ``show`` is set, so calling this once per
    epoch from a training loop, in a notebook too, neither accumulates nor displays figures.

    Args:
        history: The per-epoch records, in any order.
        save_path: Where to write the figure (format from the suffix), atomically.
        dpi: Figure resolution, also used when saving.
        show: Call ``matplotlib.pyplot.show()``.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: If ``history`` is empty, a record has no ``epoch``, ``dpi`` is not a positive
            number, or ``save_path`` is a folder or has no supported suffix.
    """
    records = list(history)
    if not records:
        raise ValueError("history is empty: there are no epochs to plot")
    if any("epoch" not in record for record in records):
        raise ValueError("every history record needs an 'epoch' key")
    dpi = _check_dpi(dpi)
    if save_path is not None:
        _check_save_path(save_path)
    records.sort(key=lambda record: record["epoch"])
    epochs = [record["epoch"] for record in records]

    panels = []
    for title, metrics, ylabel in _CURVE_PANELS:
        series = []
        for split, linestyle in _SPLIT_STYLES.items():
            for metric in metrics:
                key = f"{split}_{metric}"
                if any(key in record for record in records):
                    values = [float(record.get(key, math.nan)) for record in records]
                    series.append((f"{split} {_CURVE_LABELS[metric]}", values, linestyle, metric))
        if series:
            panels.append((title, ylabel, series))
    if not panels:
        raise ValueError(
            "history has no '<split>_<metric>' keys to plot (e.g. 'train_loss', 'val_top1'); "
            f"the first record's keys are {sorted(records[0])}"
        )

    fig = _new_figure((4.2 * len(panels), 3.4), dpi, show, display=False)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = {metric: f"C{i}" for i, metric in enumerate(_CURVE_LABELS)}
    best = [record["epoch"] for record in records if record.get("best")]
    for ax, (title, ylabel, series) in zip(axes, panels):
        for label, values, linestyle, metric in series:
            ax.plot(epochs, values, linestyle=linestyle, color=colors[metric], marker="." if len(epochs) < 30 else None,
                    label=label)
        if best:
            ax.axvline(best[-1], color="0.5", linestyle=":", linewidth=1.0, label=f"best (epoch {best[-1]})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if ylabel == "accuracy":
            ax.set_ylim(-0.02, 1.02)
    if save_path is not None:
        _save_figure_atomically(fig, save_path, dpi)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


# --------------------------------------------------------------------------------------------
# A CAM grid for a checkpoint, and the command line
# --------------------------------------------------------------------------------------------
def render_cam_grid(
    checkpoint: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    split: str = "test",
    n: int = 16,
    out: str | os.PathLike[str] = "cams.png",
    seed: int = 0,
    threshold: float = 0.2,
    device: str | torch.device = "cpu",
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Path:
    """Draw CAM overlays of ``n`` images of a split, with predicted and true boxes.

    The images are chosen at random by ``seed`` from the split of the data the checkpoint was
    trained on (its filters, classes and image size). Each overlay shows the CAM of the
    predicted class; the predicted box is the box of the largest connected region of the
    normalised CAM at ``threshold`` (the CAM paper's rule, 0.2).

    Args:
        checkpoint: A file written by training (``best.pt`` or ``last.pt``).
        root: The Stanford Cars folder the checkpoint was trained on; None takes the one its
            training arguments name (a relative one is relative to where training ran).
        split: ``"train"`` or ``"test"`` (train images are shown without augmentation).
        n: Number of images, at most the split's size.
        out: Figure path (format from the suffix), written atomically.
        seed: Chooses the images.
        threshold: CAM threshold of the predicted box, in [0, 1).
        device: Where to run the model: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        alpha: Overlay opacity.
        colormap: Matplotlib colormap of the overlay.

    Returns:
        The path of the figure.

    Raises:
        ValueError: If ``n``, ``threshold``, ``out`` or ``device`` is unusable, or the data's
            classes are not the checkpoint's.
        DatasetNotFoundError: If no Stanford Cars is under the data folder.
    """
    from .dataset import DatasetNotFoundError, StanfordCarsCAM
    from .localization import boxes_from_cams
    from .model import load_checkpoint, require_entries
    from .train import select_device

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of images, at least 1, got {n!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    _check_save_path(out, "out")  # before minutes of loading and drawing
    # By name, as training does, so "auto" works and a missing GPU is not reported as a bad file.
    device = select_device(str(device))
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    require_entries(ckpt, ("image_size", "class_names"), checkpoint)
    recorded = root is None
    if recorded:
        root = (ckpt.get("args") or {}).get("root")
        if root is None:
            raise ValueError(f"{str(checkpoint)!r} does not record its data folder; pass it (root=..., or --root DIR)")
    try:
        dataset = StanfordCarsCAM(
            root, split=split, car_type=ckpt.get("car_type"), car_brand=ckpt.get("car_brand"),
            car_production_year=ckpt.get("car_production_year"), image_size=int(ckpt["image_size"]),
            augment=False, return_box=True,
        )
    except DatasetNotFoundError as err:
        where = (
            f"{str(root)!r} is the data folder recorded in {str(checkpoint)!r}"
            + ("; a relative path there is relative to the folder training ran in" if not Path(root).is_absolute() else "")
            + ". " if recorded else ""
        )
        raise DatasetNotFoundError(
            err.problem,
            f"{where}Pass the folder holding the data the checkpoint was trained on: root=... (visualize.py: --root DIR).",
        ) from None
    if list(dataset.classes) != list(ckpt["class_names"]):
        raise ValueError(
            f"the data under {str(root)!r} has classes {list(dataset.classes)} but {str(checkpoint)!r} was trained "
            f"on {list(ckpt['class_names'])}; pass the data folder it was trained on"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(dataset), generator=generator)[: min(n, len(dataset))].tolist()
    items = [dataset[i] for i in chosen]
    images = torch.stack([item[0] for item in items])  # (N, 3, S, S)
    labels = torch.tensor([item[1] for item in items])
    true_boxes = torch.stack([item[2] for item in items])  # (N, 4)
    with torch.no_grad():
        logits, cams = model(images.to(device), True)  # (N, C), (N, h, w)
    probabilities = logits.softmax(dim=1).max(dim=1)
    predicted_boxes = boxes_from_cams(cams.cpu(), tuple(images.shape[-2:]), threshold=threshold)
    blended = apply_cam(images, cams.cpu(), alpha=alpha, colormap=colormap)
    fig = visualize_cam(
        images, blended, probabilities.indices.cpu(), labels,
        boxes={"predicted": predicted_boxes, "true": true_boxes}, save_path=out,
        class_names=list(dataset.classes), scores=probabilities.values.cpu(), colormap=colormap,
    )
    _close(fig)
    return Path(out)


def _close(fig: Figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _threshold(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) such as 0.2, got {value!r}")
    return number


def get_args_parser() -> argparse.ArgumentParser:
    """Parser of ``python visualize.py CHECKPOINT ...``."""
    parser = OneLineParser(
        prog="visualize.py",
        description="Draw CAM overlays with predicted and true boxes for images of a checkpoint's data.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint written by main.py (best.pt or last.pt)")
    parser.add_argument("--root_datasets_dir", "--root", dest="root", default=None,
                        help="Stanford Cars folder (default: the one the checkpoint was trained on, relative to where training ran)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="split to draw images from")
    parser.add_argument("--n", type=positive_int, default=16, help="number of images")
    parser.add_argument("--out", default="cams.png", help="figure file (.png, .pdf, .svg, ...)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the images")
    parser.add_argument("--threshold", type=_threshold, default=0.2, help="CAM threshold of the predicted box, in [0, 1)")
    parser.add_argument("--device", default="cpu", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python visualize.py``; returns the exit status."""
    from .dataset import DatasetError
    from .model import CheckpointError

    args = get_args_parser().parse_args(argv)
    try:
        _check_save_path(args.out, "--out")  # named as the user typed it, before any work
        path = render_cam_grid(args.checkpoint, args.root, split=args.split, n=args.n, out=args.out, seed=args.seed,
                               threshold=args.threshold, device=args.device)
    except (ValueError, TypeError, OSError, DatasetError, CheckpointError) as err:
        print(f"visualize.py: error: {err}", file=sys.stderr)
        return 2
    print(f"CAM figure written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
