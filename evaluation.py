"""Scoring a model: one evaluation pass (top-1, loss and the box metrics), the CAM threshold a checkpoint carries
(chosen on validation), and a saved checkpoint scored on its data (``--evaluate``), whose set-up ``compare`` and
``report`` share through :func:`open_checkpoint`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .atomic_files import atomic_write_text, unwritable_reason
from .checkpoint import PAPER_THRESHOLD, add_entries, cam_threshold_of, require_entries
from .dataset import StanfordCarsCAM, stratified_split
from .distributed import DistInfo
from .localization import LocalizationMeter, choose_cam_threshold
from .model import GAPNet, load_checkpoint
from .runtime import (
    configure_cpu_threads,
    default_num_workers,
    make_loader,
    select_device,
)
from .saved_maps import SavedMaps
from .scoring import BoxScores, LossSum, Sink, model_cam, score
from .wsolevaluation import WsolevaluationMeter

PROTOCOLS = ("cam", "wsolevaluation")  # how boxes are scored: this project's, or clovaai/wsolevaluation's exactly
THRESHOLD_KEYS = ("cam_threshold", "cam_threshold_source", "cam_threshold_curve")


def threshold_from_validation(val_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's CAM threshold entries: the threshold that boxes the validation images best (the centre of the
    best plateau of the box accuracy at IoU 0.5, ``"val"``), or when no validation box is hit at any threshold (or there
    is no validation split) the CAM paper's 0.2 (``"paper"``)."""
    if not val_metrics or not max(val_metrics["box_accuracy_curve"]["accuracy"], default=0.0):  # no box to choose by
        return {"cam_threshold": PAPER_THRESHOLD, "cam_threshold_source": "paper", "cam_threshold_curve": None}
    curve = val_metrics["box_accuracy_curve"]
    threshold = choose_cam_threshold(np.asarray(curve["accuracy"]), np.asarray(curve["threshold"]))
    return {"cam_threshold": threshold, "cam_threshold_source": "val", "cam_threshold_curve": curve}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    dist_info: DistInfo | None = None,
    criterion: nn.Module | None = None,
    amp: bool = True,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
    cam_threshold: float | None = None,
    protocol: str = "cam",
    cam_curve_interval: float = 0.01,
    curve: bool = False,
    sinks: Sequence[Sink] = (),
) -> dict[str, Any]:
    """Classification and CAM localisation metrics of ``model`` on ``loader``: one :func:`~.scoring.score` pass
    of the model's CAM of the true class into a box meter (and the loss, with a ``criterion``).

    Args:
        loader: Yields ``(images (B,3,S,S), labels (B,), boxes (B,4))``, boxes in the image's pixels
            (NaN where a layout has none).
        cam_threshold: Also score GT-known and Top-1 Loc at this CAM threshold (``*_at_cam_threshold``).
        protocol: ``"cam"`` (this project's, :class:`LocalizationMeter`) or ``"wsolevaluation"``
            (clovaai/wsolevaluation's ``BoxEvaluator``, exactly: :class:`WsolevaluationMeter`, with
            ``cam_curve_interval``; needs OpenCV).
        curve: Add ``box_accuracy_curve``: ``{"threshold": [...], "accuracy": [...]}``, the hit rate per threshold.
        sinks: More sinks of the pass (e.g. :class:`~.saved_maps.SavedMaps`).

    Returns:
        ``loss`` (with a criterion) and the metrics of the meter, summed over all ranks.
    """
    meter = LocalizationMeter() if protocol == "cam" else WsolevaluationMeter(cam_curve_interval)
    loss = LossSum(criterion, device) if criterion is not None else None
    score(
        model,
        loader,
        {"cam": model_cam()},
        [BoxScores(meter), *([loss] if loss is not None else []), *sinks],
        device,
        amp=amp,
        channels_last=channels_last,
        dist_info=dist_info,
        progress=progress,
        desc=desc,
    )
    metrics: dict[str, Any] = meter.compute(cam_threshold)
    if curve:
        metrics["box_accuracy_curve"] = {
            "threshold": meter.thresholds.tolist(),
            "accuracy": meter.box_accuracy_curve().tolist(),
        }
    if loss is not None:
        metrics["loss"] = loss.result()
    return metrics


@dataclass
class OpenedCheckpoint:
    """A checkpoint ready to be scored: its model on ``device``, its entries, and its data."""

    model: GAPNet
    checkpoint: dict[str, Any]
    device: torch.device
    num_workers: int
    data: Callable[[str], StanfordCarsCAM]  # split -> that split with the checkpoint's filters, size and classes

    def loader(self, dataset: StanfordCarsCAM, indices: Any, batch_size: int) -> DataLoader:
        return make_loader(dataset, indices, batch_size, self.num_workers, self.device, seed=0)


def open_checkpoint(
    checkpoint_path: str | os.PathLike,
    writes: str | os.PathLike | None,
    root: str | os.PathLike | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    download_datasets: bool = False,
) -> OpenedCheckpoint:
    """Load a checkpoint to score it on its data (under ``root``, or the folder it records), once ``writes`` (a file to
    be written beside it, or None) is known to be writable; threads and loader workers set for ``device``."""
    dev = select_device(device)
    model, checkpoint = load_checkpoint(checkpoint_path, map_location=dev)
    if writes is not None and (reason := unwritable_reason(Path(writes).parent)) is not None:
        raise ValueError(
            f"{str(writes)!r} is written beside the checkpoint, but that folder is not writable ({reason}); "
            "copy the checkpoint somewhere writable and use that copy"
        )
    require_entries(checkpoint, ("image_size", "class_names"), checkpoint_path)
    configure_cpu_threads(DistInfo(), dev)
    workers = default_num_workers(DistInfo(), dev) if num_workers is None else num_workers
    data = partial(
        StanfordCarsCAM.from_checkpoint,
        checkpoint,
        root,
        source=checkpoint_path,
        return_box=True,
        download_datasets=download_datasets,
    )
    return OpenedCheckpoint(model, checkpoint, dev, workers, data)


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    download_datasets: bool = False,
    protocol: str = "cam",
    cam_curve_interval: float = 0.01,
    save_maps: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on a split of the data it was trained for (its filters and size), boxes at its CAM threshold.

    A checkpoint without a CAM threshold gets one chosen on its validation split (rebuilt from its ``val_fraction`` and
    ``seed``), stored in it.

    Args:
        root: The Stanford Cars folder; ``None`` takes the one the checkpoint records.
        protocol, cam_curve_interval: As :func:`evaluate`.
        save_maps: Also write each image's CAM, normalised as ``protocol`` scores it, and the split's metadata in
            wsolevaluation's layout under this folder (:class:`~.saved_maps.SavedMaps`); ``--score_maps`` repeats
            these metrics from the files.

    Returns:
        The metrics of the meter, ``cam_threshold`` with its ``*_at_cam_threshold`` scores and source, ``split`` and
        ``checkpoint``; also written as ``<checkpoint stem>_<split>_metrics.json`` beside the checkpoint.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    out = Path(checkpoint_path).with_name(f"{Path(checkpoint_path).stem}_{split}_metrics.json")
    opened = open_checkpoint(checkpoint_path, out, root, device, num_workers, download_datasets)
    checkpoint = opened.checkpoint
    scoring = partial(
        evaluate,
        opened.model,
        device=opened.device,
        progress=progress,
        protocol=protocol,
        cam_curve_interval=cam_curve_interval,
    )
    if checkpoint.get("cam_threshold") is None:
        args, train = checkpoint.get("args") or {}, opened.data("train")
        _, val_idx = stratified_split(train.targets, float(args.get("val_fraction", 0.0)), int(args.get("seed", 0)))
        val = (
            scoring(opened.loader(train, val_idx, batch_size), desc="choose threshold", curve=True) if val_idx else None
        )
        checkpoint.update(threshold_from_validation(val))
        add_entries(checkpoint_path, {key: checkpoint[key] for key in THRESHOLD_KEYS})
    threshold, source = cam_threshold_of(checkpoint)
    dataset = opened.data(split)
    saved = SavedMaps(Path(save_maps), dataset, protocol) if save_maps is not None else None
    metrics = scoring(
        opened.loader(dataset, range(len(dataset)), batch_size),
        desc=f"evaluate {split}",
        cam_threshold=threshold,
        sinks=[saved] if saved is not None else [],
    )
    metrics.update(
        cam_threshold_source=source, protocol=protocol, split=split, checkpoint=Path(checkpoint_path).name
    )  # a file to share: the checkpoint's name, no path of this machine
    if saved is not None:
        saved.write_index()
        metrics["maps"] = str(save_maps)
    atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
