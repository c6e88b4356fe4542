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

from .checkpoint import require_entries
from .cli import HelpFormatter, OneLineParser, positive_int
from .dataset import DatasetError, DatasetNotFoundError, StanfordCarsCAM
from .files import CheckpointError, _check_dpi, _check_save_path, _save_figure_atomically
from .localization import boxes_from_cams
from .model import load_checkpoint
from .overlay import _get_colormap, apply_cam, colormap_lut
from .runtime import select_device

logger = logging.getLogger(__name__)

__all__ = ["apply_cam", "colormap_lut", "plot_training_curves", "render_cam_grid", "visualize_cam"]

# matplotlib's built-in backends that can only write files; on these, figures are not registered
# with pyplot, so scripts that draw many grids do not accumulate open figures.
_NON_INTERACTIVE_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})

ClassLabel = Union[str, int]
BoxesArg = Union[Mapping[str, Any], Sequence[Any], None]


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------


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
