"""Figures: ``visualize_cam`` (images beside their ``apply_cam`` overlays) and ``render_cam_grid``
(``python visualize.py CHECKPOINT``; with ``--images``, your own photos through
:mod:`.photos`, by a checkpoint or by torchvision's ImageNet classifier, ``--imagenet resnet50``). Boxes are float
``[x1, y1, x2, y2]`` pixel edges (pixel columns ``c0..c1`` give ``x1 = c0``, ``x2 = c1 + 1``); a missing box is all
NaN. See docs/visualization.md."""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Run as ``python visualize.py``: hand over to the package's copy of this module.
    import _bootstrap

    _bootstrap.ensure_package()
    from CAM_Stanford_Cars.visualize import main

    sys.exit(main())

import argparse
import logging
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor
from torch.utils.data import default_collate

from .atomic_files import check_writable
from .cams import METHODS, compute_cams
from .checkpoint import PAPER_THRESHOLD, THRESHOLD_SOURCES, CheckpointError, cam_threshold_of, require_entries
from .cli import HelpFormatter, OneLineParser, positive_int
from .data.common import DatasetError
from .dataset import StanfordCarsCAM
from .figures import check_dpi, check_save_path, finish_figure, new_figure, save_figure_atomically
from .localization import boxes_from_cams
from .model import IMAGENET_ARCHS, PretrainedWeightsError, imagenet_model, load_checkpoint
from .overlay import apply_cam, get_colormap
from .photos import PhotoError, find_photos, write_explanations
from .report import check_report_path, photo_report
from .runtime import select_device

logger = logging.getLogger(__name__)

__all__ = [
    "apply_cam",
    "get_args_parser",
    "main",
    "render_cam_grid",
    "visualize_cam",
]

BoxesArg = Mapping[str, Any] | Sequence[Any] | None
BoxSet = tuple[np.ndarray, Mapping[str, Any], str]  # (B, 4) boxes, their style, their legend label

PREDICTED_BOX_STYLE = {"edgecolor": "#ff00ff", "linestyle": "-", "linewidth": 1.8}
TRUE_BOX_STYLE = {"edgecolor": "#00ff40", "linestyle": "--", "linewidth": 1.8}
RIGHT_COLOR, WRONG_COLOR = "#1a7f37", "#cf222e"
RIGHT_MARK, WRONG_MARK = "\u2713", "\u2717"  # ✓ ✗
_PANEL_INCHES = 2.3  # a panel's longer side


def _as_image_batch(name: str, images: Any) -> np.ndarray:
    """(B, H, W, 3) float32 numpy in [0, 1] from a (B, 3, H, W) or (3, H, W) tensor or array."""
    images = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a tensor (B, 3, H, W) or (3, H, W), got {type(images).__name__}")
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be (B, 3, H, W) or (3, H, W) RGB, got shape {tuple(images.shape)}")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    return (images.detach().cpu().float() / scale).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def _class_labels(
    name: str, classes: Any, batch: int, class_names: Sequence[str] | Mapping[int, str] | None
) -> list[str]:
    """Display names for ``classes`` (names, ints, or an int tensor), one per image."""
    classes = classes.reshape(-1).tolist() if isinstance(classes, (Tensor, np.ndarray)) else classes
    classes = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
    if len(classes) != batch:
        raise ValueError(f"{name} has {len(classes)} entries for {batch} images; pass one class per image")
    labels = []
    for value in classes:
        if isinstance(value, str):
            labels.append(value)
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{name} entries must be class names or integer indices, got {value!r}")
        if value < 0:  # with a list of names, -1 would quietly name the last class
            raise ValueError(f"{name} holds class index {value}; class indices are 0 or more")
        try:
            labels.append(f"class {value}" if class_names is None else str(class_names[int(value)]))
        except (IndexError, KeyError):
            raise ValueError(f"{name} holds class index {value}, which class_names does not have") from None
    return labels


def _box_sets(boxes: BoxesArg, batch: int) -> list[BoxSet]:
    """The predicted and/or true boxes given, each with its style, from a mapping or a pair."""
    if isinstance(boxes, Mapping):
        if unknown := set(boxes) - {"predicted", "true"}:
            raise ValueError(f"boxes keys must be 'predicted' and/or 'true', got unexpected {sorted(unknown)!r}")
        boxes = (boxes.get("predicted"), boxes.get("true"))
    elif boxes is not None and not (isinstance(boxes, Sequence) and not isinstance(boxes, str) and len(boxes) == 2):
        raise ValueError(
            'boxes must be {"predicted": (B, 4), "true": (B, 4)} or a pair (predicted, true), '
            f"got {type(boxes).__name__}"
        )
    sets = []
    for name, value, style in zip(("predicted", "true"), boxes or (None, None), (PREDICTED_BOX_STYLE, TRUE_BOX_STYLE)):
        if value is not None:
            array = (
                value.detach().to("cpu", torch.float64).numpy()
                if isinstance(value, Tensor)
                else np.asarray(value, float)
            )
            array = array[None] if array.ndim == 1 and batch == 1 else array
            if array.shape != (batch, 4):
                raise ValueError(f"{name} boxes must be ({batch}, 4) [x1, y1, x2, y2], got shape {array.shape}")
            sets.append((array, style, f"{name} box"))
    return sets


def _titles(predicted: list[str], true: list[str] | None, scores: Any) -> list[tuple[str, str, str]]:
    """(image title, overlay title, overlay title colour) per sample; ✓/✗ where the true class is known."""
    if scores is not None:
        scores = [float(s) for s in (scores.detach().cpu().reshape(-1) if isinstance(scores, Tensor) else scores)]
        if len(scores) != len(predicted):
            raise ValueError(f"scores has {len(scores)} entries for {len(predicted)} images; pass one per image")

    def wrap(text: str) -> str:
        return "\n".join(textwrap.wrap(text, 30)) or text

    titles = []
    for i, pred in enumerate(predicted):
        pred_text = pred if scores is None else f"{pred} ({100 * scores[i]:.0f}%)"
        if true is None:
            titles.append(("image", wrap(f"pred: {pred_text}"), "black"))
        else:
            mark, color = (RIGHT_MARK, RIGHT_COLOR) if pred == true[i] else (WRONG_MARK, WRONG_COLOR)
            titles.append((wrap(f"true: {true[i]}"), wrap(f"{mark} pred: {pred_text}"), color))
    return titles


def _draw_grid(
    images: np.ndarray,
    blended: np.ndarray,
    titles: list[tuple[str, str, str]],
    boxes: list[BoxSet],
    per_row: int,
    colormap: str | Colormap | None,
    dpi: float,
    show: bool,
) -> Figure:
    """The CAM grid, rows tall enough for the longest title, with a colour bar unless ``colormap`` is None."""
    batch, height, width, _ = images.shape
    rows = math.ceil(batch / per_row)
    title_lines = max(title.count("\n") + 1 for sample in titles for title in sample[:2])
    grid_width, bar_width = 2 * per_row * _PANEL_INCHES, 0.0 if colormap is None else 0.8
    row_height = _PANEL_INCHES * height / width + 0.25 + 0.17 * title_lines
    fig = new_figure((grid_width + bar_width, rows * row_height + (0.35 if boxes else 0.0)), dpi, show)
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04)
    grid_fig, bar_fig = (
        fig.subfigures(1, 2, width_ratios=[grid_width, bar_width], wspace=0.0) if bar_width else (fig, None)
    )
    for i, cell in enumerate(grid_fig.subfigures(rows, per_row, squeeze=False, wspace=0.02, hspace=0.02).flat[:batch]):
        cell.set_facecolor("0.95")  # a faint background pairs each image with its overlay
        axes = cell.subplots(1, 2)
        for ax, shown, title in zip(axes, (images[i], blended[i]), titles[i][:2]):
            ax.imshow(shown, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            for array, style, label in boxes:
                if np.isfinite(array[i]).all():
                    x1, y1, x2, y2 = (
                        float(v) for v in array[i]
                    )  # imshow centres pixel c on c: edge x1 = c is at c - 0.5
                    ax.add_patch(
                        Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, facecolor="none", label=label, **style)
                    )
            # Pin the view to the image: a box reaching past the border must not rescale the panel.
            ax.set(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))
            ax.set_axis_off()
        axes[1].title.set_color(titles[i][2])
    if boxes:
        handles = [Patch(facecolor="none", label=label, **style) for _, style, label in boxes]
        grid_fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    if bar_fig is not None:
        bar_height = min(
            0.8, 2.0 / (rows + 1)
        )  # about a row, centred: a full-height bar would dwarf a tall grid's rows
        bar = bar_fig.colorbar(
            ScalarMappable(norm=Normalize(0.0, 1.0), cmap=get_colormap(colormap)),
            cax=bar_fig.add_axes((0.15, 0.5 - bar_height / 2, 0.2, bar_height)),
        )
        bar.set_label("normalised CAM", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def visualize_cam(
    images: Tensor,
    blended_images: Tensor,
    predicted_classes: Sequence[str | int] | Tensor | str | int,
    true_classes: Sequence[str | int] | Tensor | str | int | None = None,
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

    Args:
        images, blended_images: (B, 3, H, W) or (3, H, W) RGB in [0, 1], and their overlays (e.g. ``apply_cam``'s).
        predicted_classes, true_classes: One class per image, as names or as indices (an int tensor (B,) too) that
            ``class_names`` (a list or dict) names; true classes are optional and mark predictions ✓ or ✗.
        boxes: ``{"predicted": (B, 4), "true": (B, 4)}`` (either key optional) or a pair ``(predicted, true)``,
            drawn on both panels (predicted solid magenta, true dashed green; NaN ones skipped).
        save_path: Figure file (format from the suffix), written atomically; parents are created.
        scores: (B,) confidence of each prediction in [0, 1], shown as a percentage.
        samples_per_row: Image/overlay pairs per row; default about sqrt(B), at most 4.
        colormap, colorbar: The colour bar's colormap (the one given to ``apply_cam``); whether to draw it.
        dpi, show: Figure resolution, also when saving; call ``matplotlib.pyplot.show()`` (a GUI backend).

    Returns:
        The figure: two axes per image (image, overlay), plus the colour bar's.

    Raises:
        ValueError: On mismatched shapes or counts, a negative class index, or a bad ``boxes``, ``dpi`` or
            ``save_path``.
    """
    image_array, blended_array = _as_image_batch("images", images), _as_image_batch("blended_images", blended_images)
    if image_array.shape != blended_array.shape:
        raise ValueError(
            f"images and blended_images must have the same shape, got {tuple(images.shape)} and "
            f"{tuple(blended_images.shape)}; pass the overlays apply_cam made from these images"
        )
    if (batch := len(image_array)) == 0:
        raise ValueError("images is an empty batch (0, 3, H, W); there is nothing to draw")
    dpi = check_dpi(dpi)
    if save_path is not None:
        check_save_path(save_path)  # a folder or a bad suffix fails before any drawing
    predicted = _class_labels("predicted_classes", predicted_classes, batch, class_names)
    true = None if true_classes is None else _class_labels("true_classes", true_classes, batch, class_names)
    box_sets, titles = _box_sets(boxes, batch), _titles(predicted, true, scores)
    if samples_per_row is not None and (type(samples_per_row) is not int or samples_per_row < 1):
        raise ValueError(f"samples_per_row must be a positive integer, got {samples_per_row!r}")
    per_row = min(samples_per_row, batch) if samples_per_row else min(4, math.ceil(math.sqrt(batch)))
    fig = _draw_grid(image_array, blended_array, titles, box_sets, per_row, colormap if colorbar else None, dpi, show)
    return finish_figure(fig, save_path, dpi, show)


def render_cam_grid(
    checkpoint: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    split: str = "test",
    n: int = 16,
    out: str | os.PathLike[str] = "cams.png",
    seed: int = 0,
    threshold: float | None = None,
    device: str | torch.device = "cpu",
    alpha: float = 0.5,
    colormap: str = "jet",
    method: str = "cam",
) -> Path:
    """Draw the CAM overlays of ``n`` images of a split of the checkpoint's data, with predicted and true boxes.

    Each overlay shows the predicted class's CAM; the predicted box bounds its largest region above ``threshold``
    once normalised: by default the checkpoint's ``cam_threshold``, chosen on validation (the CAM paper's 0.2 for a
    checkpoint without one). The threshold used and where it came from are logged.

    Args:
        checkpoint: A file written by training (``best.pt`` or ``last.pt``).
        root: The Stanford Cars folder; None takes the checkpoint's (relative to where training ran).
        split, n, seed: ``"train"`` or ``"test"`` (no augmentation), how many images, and which.
        out: Figure path (format from the suffix), written atomically; returned as a ``Path``.
        threshold: CAM threshold of the predicted box, in [0, 1); ``None``: the checkpoint's.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        alpha, colormap: The overlay's opacity and matplotlib colormap.
        method: The map drawn: the model's own ``"cam"`` or another of ``cams.METHODS`` (e.g. ``"gradcam"``).

    Raises:
        ValueError: If an argument is unusable, or the data's classes are not the checkpoint's.
        DatasetNotFoundError: If no Stanford Cars is under the data folder.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of images, at least 1, got {n!r}")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_save_path(out, "out")  # before minutes of loading and drawing
    return _render_cam_grid(checkpoint, root, split, n, out, seed, threshold, device, method, alpha, colormap)


def _render_cam_grid(
    checkpoint: str | os.PathLike[str],
    root: str | os.PathLike[str] | None,
    split: str,
    n: int,
    out: str | os.PathLike[str],
    seed: int,
    threshold: float | None,
    device: str | torch.device,
    method: str,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Path:
    """:func:`render_cam_grid` of checked arguments: its own checks', or the command line's (which has no flag for
    ``alpha`` and ``colormap``)."""
    # By name, as training does, so "auto" works and a missing GPU is not reported as a bad file.
    device = select_device(str(device))
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    require_entries(ckpt, ("image_size", "class_names"), checkpoint)
    threshold, source = (threshold, "given") if threshold is not None else cam_threshold_of(ckpt)
    logger.info("Boxes at CAM threshold %.2f (%s)", threshold, THRESHOLD_SOURCES.get(source, source))
    dataset = StanfordCarsCAM.from_checkpoint(
        ckpt, root, split, source=checkpoint, flag="root=... (visualize.py: --root DIR)", return_box=True
    )
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    images, labels, true_boxes = default_collate([dataset[i] for i in chosen])  # (N, 3, S, S), (N,), (N, 4)
    cams = compute_cams(model, images.to(device), method).cpu()  # (N, h, w), of the predicted class
    with torch.no_grad():
        logits = model(images.to(device), check_input=False)  # (N, C); compute_cams checked the images
    scores, predicted = logits.softmax(dim=1).max(dim=1)
    predicted_boxes = boxes_from_cams(cams, tuple(images.shape[-2:]), threshold=threshold)
    dpi = 100.0
    fig = visualize_cam(
        images,
        apply_cam(images, cams, alpha=alpha, colormap=colormap),
        predicted.cpu(),
        labels,
        boxes={"predicted": predicted_boxes, "true": true_boxes},
        class_names=list(dataset.classes),
        scores=scores.cpu(),
        colormap=colormap,
        dpi=dpi,
    )
    save_figure_atomically(fig, out, dpi)  # out was checked before any work
    import matplotlib.pyplot as plt

    plt.close(fig)  # an interactive backend registered it with pyplot
    return Path(out)


def _threshold(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) such as 0.2, got {value!r}")
    return number


# The flags of --images mode, which the CAM grid does not take.
_PHOTO_ARGS = frozenset(
    (
        "images",
        "imagenet",
        "out_dir",
        "max_side",
        "format",
        "save_maps",
        "class_name",
        "batch_size",
        "num_workers",
        "report",
    )
)
# The input side of --imagenet: torchvision's evaluation size, here the whole photo resized to it (not cropped).
IMAGENET_IMAGE_SIZE = 224


def _workers(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (decode in the main process) or more workers, got {value!r}")
    return number


def get_args_parser() -> argparse.ArgumentParser:
    """Parser of ``python visualize.py CHECKPOINT ...``."""
    parser = OneLineParser(
        prog="visualize.py",
        formatter_class=HelpFormatter,
        description="Draw CAM overlays with predicted and true boxes for images of a checkpoint's data, "
        "or (--images) explain your own photos: an overlay per photo and predictions.csv.",
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="checkpoint written by main.py (best.pt or last.pt); with --images, --imagenet ARCH may stand for it",
    )
    parser.add_argument(
        "--root_datasets_dir",
        "--root",
        dest="root",
        default=None,
        help="Stanford Cars folder (default: the one the checkpoint was trained on, relative to where training ran)",
    )
    parser.add_argument("--split", choices=("train", "test"), default="test", help="split to draw images from")
    parser.add_argument("--n", type=positive_int, default=16, help="number of images")
    parser.add_argument("--out", default="cams.png", help="figure file (.png, .pdf, .svg, ...)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the images")
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help="CAM threshold of the predicted box, in [0, 1) "
        "(default: the checkpoint's, chosen on validation; 0.2, the CAM paper's, with --imagenet)",
    )
    parser.add_argument(
        "--method", choices=METHODS, default="cam", help="the map to draw: the model's CAM or another method's"
    )
    parser.add_argument("--device", default="cpu", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    photos = parser.add_argument_group("your own photos (--images)")
    photos.add_argument(
        "--images",
        nargs="+",
        metavar="FILE|FOLDER|PATTERN",
        default=None,
        help="explain these photos instead of the data's: files, folders (recursively, image files only) and glob "
        "patterns (quote them); writes an overlay per photo and predictions.csv into --out_dir",
    )
    photos.add_argument(
        "--imagenet",
        choices=IMAGENET_ARCHS,
        default=None,
        help="explain with torchvision's ImageNet classifier instead of a checkpoint (its 1000 classes; weights from "
        "torchvision's cache, TORCH_HOME/hub/checkpoints, downloaded if absent)",
    )
    photos.add_argument("--out_dir", default="cams", help="folder of the overlays; the photos' folders are mirrored")
    photos.add_argument("--max_side", type=positive_int, default=1024, help="longer side of each overlay, in pixels")
    photos.add_argument("--format", choices=("jpg", "png"), default="jpg", help="overlay format (JPEG quality 90)")
    photos.add_argument(
        "--save_maps", action="store_true", help="also write each map as .npy (S x S float32 in [0, 1]) beside it"
    )
    photos.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME|INDEX",
        default=None,
        help="explain this class instead of each photo's predicted one",
    )
    photos.add_argument("--batch_size", type=positive_int, default=16, help="photos per forward pass")
    photos.add_argument("--num_workers", type=_workers, default=0, help="DataLoader workers decoding photos")
    photos.add_argument(
        "--report",
        default=None,
        metavar="PATH.html",
        help="also write one self-contained HTML page of every photo's map, box and classes (e.g. cams/index.html)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python visualize.py``; returns the exit status."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.imagenet is not None:
        parser.error("give a checkpoint or --imagenet, not both")
    if args.checkpoint is None and args.imagenet is None:
        parser.error("the following arguments are required: checkpoint (or --imagenet ARCH with --images)")
    if args.imagenet is not None and args.images is None:
        parser.error("--imagenet explains your own photos: add --images FILE|FOLDER|PATTERN")
    if args.report is not None and args.images is None:
        parser.error(
            "--report here is the page of your own photos: add --images FILE|FOLDER|PATTERN "
            "(a split's page: main.py --evaluate CHECKPOINT --report PATH.html)"
        )
    if args.images is not None:
        return _explain_photos_main(args)
    handler = logging.StreamHandler(sys.stdout)  # the threshold the boxes are drawn at, as render_cam_grid logs it
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        check_save_path(args.out, "--out")  # named as the user typed it, before any work
        grid_args = {key: value for key, value in vars(args).items() if key not in _PHOTO_ARGS}
        path = _render_cam_grid(**grid_args)  # the parser checked the rest
    except (ValueError, TypeError, OSError, DatasetError, CheckpointError) as err:
        print(f"visualize.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)
    print(f"CAM figure written to {path}")
    return 0


def _photo_model(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, list[str], int, float, str]:
    """``(model, class names, input size S, CAM threshold, where it came from)`` of the checkpoint the command names,
    or of ``--imagenet``'s classifier (the CAM paper's threshold: there is no validation split to choose one on)."""
    if args.imagenet is not None:
        model, class_names = imagenet_model(args.imagenet)
        image_size, (threshold, source) = IMAGENET_IMAGE_SIZE, (PAPER_THRESHOLD, "paper")
        model = model.to(device)
    else:
        model, ckpt = load_checkpoint(args.checkpoint, map_location=device)
        require_entries(ckpt, ("image_size", "class_names"), args.checkpoint)
        class_names, image_size, (threshold, source) = ckpt["class_names"], ckpt["image_size"], cam_threshold_of(ckpt)
    if args.threshold is not None:
        threshold, source = args.threshold, "given"
    return model, list(class_names), int(image_size), threshold, source


def _class_index(value: str | None, class_names: Sequence[str]) -> int | None:
    """``--class`` as an index of ``class_names``: a name, or an index."""
    if value is None or value in class_names:
        return None if value is None else list(class_names).index(value)
    if value.strip().isdigit() and int(value) < len(class_names):
        return int(value)
    raise ValueError(
        f"--class {value!r} is neither a class name of the model nor an index in [0, {len(class_names) - 1}]"
    )


def _explain_photos_main(args: argparse.Namespace) -> int:
    """``python visualize.py CHECKPOINT|--imagenet ARCH --images ... [--report PATH.html]``: usage errors (exit 2)
    before any work, then one line per skipped photo and a summary; exit 1 when some were skipped."""

    try:
        photos = find_photos(args.images, exclude=args.out_dir)
        device = select_device(str(args.device))
        model, class_names, image_size, threshold, source = _photo_model(args, device)
        class_idx = _class_index(args.class_name, class_names)
        check_writable(Path(args.out_dir), "--out_dir")
        if args.report is not None:
            check_report_path(args.report)
    except (ValueError, TypeError, OSError, CheckpointError, PretrainedWeightsError) as err:
        for line in str(err).splitlines():
            print(f"visualize.py: error: {line}", file=sys.stderr)
        return 2
    skipped = []

    def skip(error: PhotoError) -> None:
        skipped.append(error)
        print(f"visualize.py: skipped {error.name}: {error.reason}", file=sys.stderr)

    def explain(consumers: Sequence[Any] = ()) -> int:
        return write_explanations(
            model,
            class_names,
            image_size,
            photos,
            Path(args.out_dir),
            method=args.method,
            class_idx=class_idx,
            threshold=threshold,
            fmt=args.format,
            save_maps=args.save_maps,
            max_side=args.max_side,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            on_error=skip,
            progress=sys.stderr.isatty(),
            consumers=consumers,
        )

    if args.report is None:
        explained = explain()
    else:
        with photo_report(args.report, class_names) as page:
            explained = explain([page.add])
            # Names, not paths: the page is made to be shared.
            model_text = (
                Path(args.checkpoint).name if args.checkpoint else f"torchvision's {args.imagenet}, ImageNet weights"
            )
            about = [
                ["model", f"{model_text} ({len(class_names)} classes)"],
                ["input", f"{image_size} x {image_size}: the whole photo, resized"],
                ["map", args.method],
                ["CAM threshold for boxes", f"{threshold:.2f}: {THRESHOLD_SOURCES.get(source, source)}"],
                ["photos", f"{explained} explained, {len(skipped)} skipped"],
                ["overlays and predictions.csv", Path(args.out_dir).name],
            ]
            page.write(about, threshold, None if class_idx is None else class_names[class_idx])
    print(f"{explained} explained, {len(skipped)} skipped, written to {args.out_dir}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
