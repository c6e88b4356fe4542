"""CAM methods side by side on a checkpoint's data: every method scored by the same box metrics (GT-known and Top-1
Loc at the checkpoint's threshold, MaxBoxAcc, MaxBoxAccV2) and the same faithfulness metrics (RISE deletion and
insertion), in one pass over the data; one JSON, one CSV and one figure beside the checkpoint."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic_files import atomic_write_text
from .cams import METHODS
from .checkpoint import cam_threshold_of
from .evaluation import open_checkpoint
from .figures import save_figure_atomically
from .localization import METRIC_LABELS, LocalizationMeter, box_iou, boxes_from_cams
from .overlay import apply_cam
from .sanity import MapChecks
from .saved_maps import SavedMaps
from .scoring import BoxScores, Faithfulness, FirstImages, SourceSeconds, method_maps, score

# The columns of the printed table and of the CSV, after the method's name.
COLUMNS = (
    "top1",
    "gt_known_loc",
    "top1_loc",
    "gt_known_loc_at_cam_threshold",
    "top1_loc_at_cam_threshold",
    "maxboxacc",
    "maxboxacc_v2",
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "energy_pointing_game",
    "randomization_spearman",
    "ms_per_image",
)
LABELS = {
    **METRIC_LABELS,
    "deletion_auc": "deletion AUC (lower: faithful)",
    "insertion_auc": "insertion AUC (higher: faithful)",
    "average_drop": "avg drop (lower: faithful)",
    "increase_in_confidence": "conf increase (higher: faithful)",
    "energy_pointing_game": "energy in box (higher: on the car)",
    "randomization_spearman": "rand. Spearman (lower: depends on the weights)",
    "ms_per_image": "ms/image",
}


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` as a list without repeats, each one of :data:`METHODS` (``ValueError`` naming the unknown)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(
            f"--methods takes names among {', '.join(METHODS)}, comma-separated; got {', '.join(methods) or 'none'}"
        )
    return list(dict.fromkeys(methods))


def compare_methods(
    checkpoint_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    split: str = "test",
    methods: Sequence[str] = METHODS,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    max_images: int | None = None,
    figure_images: int = 4,
    steps: int = 20,
    save_maps: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score each CAM method on the split (or its first ``max_images``), all on the same images and true classes.

    Each method's map of the true class is scored as :class:`LocalizationMeter` scores the model's CAM (boxes at the
    checkpoint's ``cam_threshold`` for the ``*_at_cam_threshold`` keys), plus the mean RISE ``deletion_auc`` and
    ``insertion_auc`` (:func:`cams.deletion_insertion`) and the ``ms_per_image`` the method took.

    Returns:
        ``{"methods": {name: metrics}, "split", "checkpoint", "cam_threshold", "cam_threshold_source", "files"}``, also
        written as ``<stem>_<split>_methods.json`` beside the checkpoint, with ``.csv`` and ``.png`` (a row of overlays
        per image of the first ``figure_images``, a column per method, each with its box and IoU). With
        ``save_maps``, each method's maps and the split's metadata in wsolevaluation's layout under that folder
        (:class:`~.saved_maps.SavedMaps`, ``cam`` protocol).
    """
    methods = check_methods(methods)
    stem = Path(checkpoint_path).with_name(f"{Path(checkpoint_path).stem}_{split}_methods")
    opened = open_checkpoint(checkpoint_path, stem.with_suffix(".json"), root, device, num_workers)
    model, dataset = opened.model, opened.data(split)
    threshold, source = cam_threshold_of(opened.checkpoint)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    loader = opened.loader(dataset, range(n), batch_size)
    boxes = {m: BoxScores(LocalizationMeter(), m) for m in methods}
    faithfulness, seconds, shown = Faithfulness(model, methods, steps), SourceSeconds(), FirstImages(figure_images)
    checks = MapChecks(model, methods)
    saved = [SavedMaps(Path(save_maps), dataset)] if save_maps is not None else []
    score(
        model,
        loader,
        {m: method_maps(m) for m in methods},
        [*boxes.values(), faithfulness, checks, seconds, shown, *saved],
        opened.device,
        amp=False,
        progress=progress,
        desc=f"compare {len(methods)} methods",
    )
    images, sanity = max(n, 1), checks.rows()
    rows = {
        m: {
            **boxes[m].meter.compute(cam_threshold=threshold),
            **{key: total / images for key, total in faithfulness.sums[m].items()},
            **sanity[m],
            "ms_per_image": 1000 * seconds.seconds.get(m, 0.0) / images,
        }
        for m in methods
    }
    files = {kind: str(stem.with_suffix(f".{kind}")) for kind in ("json", "csv", "png")}
    result = {
        "methods": rows,
        "split": split,
        "checkpoint": Path(checkpoint_path).name,  # a file to share: no path of this machine
        "n_images": n,
        "cam_threshold": threshold,
        "cam_threshold_source": source,
        "files": files,
    }
    for sink in saved:
        sink.write_index()
        files["maps"] = str(save_maps)
    if figure_images and shown.images is not None:
        draw_comparison(shown.images, shown.maps, shown.true_boxes, threshold, files["png"])
    atomic_write_text(Path(files["csv"]), methods_csv(rows))
    shared = {**result, "files": {kind: Path(path).name for kind, path in files.items()}}  # names, not this machine's
    atomic_write_text(Path(files["json"]), json.dumps(shared, indent=2, sort_keys=True) + "\n")
    return result


def methods_csv(rows: dict[str, dict[str, Any]]) -> str:
    """One line per method, the :data:`COLUMNS` after its name."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", *COLUMNS])
    writer.writerows([name, *(row.get(key) for key in COLUMNS)] for name, row in rows.items())
    return out.getvalue()


def methods_table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """:func:`format_methods_table`'s content: the header, a row of cells per method (fractions in percent, AUCs as
    they are) and the caption."""
    header = ["method", *(LABELS[key].split(" (")[0] for key in COLUMNS)]
    rows = [
        [
            name,
            *(
                f"{row[key]:.1f}"
                if key == "ms_per_image"
                else f"{row[key]:.3f}"
                if key.endswith("_auc") or key == "randomization_spearman"
                else f"{100 * row[key]:.1f}%"
                for key in COLUMNS
            ),
        ]
        for name, row in result["methods"].items()
    ]
    caption = (
        f"{result['n_images']} images; boxes at the CAM threshold {result['cam_threshold']:.2f} "
        f"({result['cam_threshold_source']}); * marks scores at that threshold"
    )
    return header, rows, caption


def format_methods_table(result: dict[str, Any]) -> str:
    """The comparison as a plain-text table, one row per method, 16 characters a column."""
    header, rows, caption = methods_table_rows(result)
    line = lambda cells: f"{cells[0]:<16}" + "".join(f"{cell:>16}" for cell in cells[1:])  # noqa: E731
    top = line(header)
    return "\n".join([top, "-" * len(top), *map(line, rows), caption])


def draw_comparison(
    images: torch.Tensor,
    maps: dict[str, torch.Tensor],
    true_boxes: torch.Tensor,
    threshold: float,
    save_path: str | os.PathLike,
) -> Path:
    """A row per image, a column per method: the overlay of the method's map with its box (solid) at ``threshold``,
    the true box (dashed) and their IoU."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    names, n = list(maps), images.shape[0]
    fig = Figure(figsize=(2.2 * len(names), 2.3 * n), layout="constrained")
    axes = fig.subplots(n, len(names), squeeze=False)
    for column, name in enumerate(names):
        overlays = apply_cam(images, maps[name]).permute(0, 2, 3, 1).numpy()
        predicted = boxes_from_cams(maps[name], tuple(images.shape[-2:]), threshold)
        ious = box_iou(predicted.double(), true_boxes.double())
        for row in range(n):
            ax = axes[row, column]
            ax.imshow(overlays[row])
            ax.set_axis_off()
            for box, style in (
                (predicted[row], {"edgecolor": "magenta"}),
                (true_boxes[row], {"edgecolor": "lime", "linestyle": "--"}),
            ):
                if not torch.isnan(box).any():
                    x1, y1, x2, y2 = box.tolist()
                    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.5, **style))
            ax.set_title(f"{name}" if row == 0 else "", fontsize=9)
            ax.text(
                2,
                images.shape[-2] - 4,
                f"IoU {float(ious[row]):.2f}",
                color="white",
                fontsize=8,
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1},
            )
    save_figure_atomically(fig, save_path, 100.0)
    return Path(save_path)
