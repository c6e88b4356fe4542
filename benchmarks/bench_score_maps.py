"""Saved maps: ``score_map_folder`` under both protocols against wsolevaluation's own per-image contour loop."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench_evaluation import spread
from bench_helpers import Sizes, median_ratio, side_by_side
from CAM_Stanford_Cars.data.class_names import STANFORD_CARS_CLASS_NAMES
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.runtime import default_num_workers
from CAM_Stanford_Cars.saved_maps import MapFolder, image_ids, open_map_folder, score_map_folder
from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars
from CAM_Stanford_Cars.wsolevaluation import WsolevaluationMeter

INTERVALS = (0.01, 0.001)
IOU_THRESHOLDS = (30, 50, 70)  # MaxBoxAccV2's
BATCH = 64  # score_map_folder's default
NOISE_GRID = 14  # a CAM's side at 224 (AlexNet's 13, ResNet's 14)


def blob_map(box: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 (size, size) map min-max normalised to exactly [0, 1]: a Gaussian blob near ``box`` (x0, y0, x1, y1
    in the map's pixels), a weaker one elsewhere and noise as smooth as a CAM's (bicubic from ``NOISE_GRID``)."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 2.0), max(y1 - y0, 2.0)
    cx, cy = (x0 + x1) / 2 + 0.1 * w * rng.standard_normal(), (y0 + y1) / 2 + 0.1 * h * rng.standard_normal()
    cam = np.exp(-0.5 * (((xx - cx) / (w / 3)) ** 2 + ((yy - cy) / (h / 3)) ** 2))
    ox, oy = rng.uniform(0, size, 2)
    cam += 0.5 * np.exp(-0.5 * ((xx - ox) ** 2 + (yy - oy) ** 2) / (size / 8) ** 2)
    noise = torch.from_numpy(rng.standard_normal((1, 1, NOISE_GRID, NOISE_GRID)))
    cam += 0.1 * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    cam -= cam.min()
    return (cam / cam.max()).astype(np.float32)


def write_maps(folder: Path, dataset: StanfordCarsCAM) -> None:
    """One map per image of ``dataset`` as ``folder/<image_id>.npy``, at the dataset's image size, seeded."""
    rng = np.random.default_rng(0)
    for index, image_id in enumerate(image_ids(dataset)):
        path = folder / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, blob_map(dataset.get_box(index).numpy(), dataset.image_size, rng), allow_pickle=False)


def first_maps(maps: MapFolder, n: int) -> MapFolder:
    """The first ``n`` images of ``maps`` (their ids index the dataset in order)."""
    return replace(maps, ids=maps.ids[:n], predicted=maps.predicted[:n])


# --------------------------------------------------------------------------------------------
# wsolevaluation's code path for one image (inference.py, evaluation.py, util.py), both box modes in one pass


def their_corners(rect: tuple[int, int, int, int], width: int, height: int) -> list[int]:
    x, y, w, h = rect
    return [x, y, min(x + w, width - 1), min(y + h, height - 1)]


def their_boxes(cv2: Any, scoremap: np.ndarray, thresholds: list) -> tuple[list, list, list]:
    """``compute_bboxes_from_scoremaps`` with and without ``multi_contour_eval``: per threshold, every contour's box,
    the largest contour's box, and the number of boxes."""
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    every, largest, number = [], [], []
    for threshold in thresholds:
        _, thr = cv2.threshold(
            src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)), maxval=255, type=cv2.THRESH_BINARY
        )
        contours = cv2.findContours(image=thr, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            every.append(np.asarray([[0, 0, 0, 0]]))
            largest.append([0, 0, 0, 0])
            number.append(1)
            continue
        every.append(np.asarray([their_corners(cv2.boundingRect(c), width, height) for c in contours]))
        largest.append(their_corners(cv2.boundingRect(max(contours, key=cv2.contourArea)), width, height))
        number.append(len(contours))
    return every, largest, number


def their_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    num_a, num_b = box_a.shape[0], box_b.shape[0]
    box_a = np.expand_dims(np.tile(box_a, num_b), axis=1).reshape((num_a, num_b, -1))
    box_b = np.transpose(np.expand_dims(np.tile(box_b, num_a), axis=1).reshape((num_b, num_a, -1)), (1, 0, 2))
    inter = np.maximum(
        0, np.minimum(box_a[:, :, 2], box_b[:, :, 2]) - np.maximum(box_a[:, :, 0], box_b[:, :, 0]) + 1
    ) * np.maximum(0, np.minimum(box_a[:, :, 3], box_b[:, :, 3]) - np.maximum(box_a[:, :, 1], box_b[:, :, 1]) + 1)
    area_a = (box_a[:, :, 2] - box_a[:, :, 0] + 1) * (box_a[:, :, 3] - box_a[:, :, 1] + 1)
    area_b = (box_b[:, :, 2] - box_b[:, :, 0] + 1) * (box_b[:, :, 3] - box_b[:, :, 1] + 1)
    denominator = area_a + area_b - inter
    degenerate = np.where(denominator <= 0)
    denominator[degenerate] = 1
    ious = inter / denominator
    ious[degenerate] = 0
    return ious


def their_loop(paths: list[Path], gt_boxes: list[list[int]], interval: float) -> tuple[np.ndarray, np.ndarray]:
    """``BoxEvaluator.accumulate`` over maps read from ``paths``: per threshold, the images whose largest contour's box
    has IoU >= 0.5 with the true box (T,), and those where any contour's box reaches each of ``IOU_THRESHOLDS``
    (3, T)."""
    import cv2

    thresholds = list(np.arange(0, 1, interval))
    hits = np.zeros(len(thresholds), dtype=np.int64)
    hits_v2 = np.zeros((len(IOU_THRESHOLDS), len(thresholds)), dtype=np.int64)
    for path, gt in zip(paths, gt_boxes):
        scoremap = np.load(path).astype(np.float64)  # as their t2n
        every, largest, number = their_boxes(cv2, scoremap, thresholds)
        hits += their_multiple_iou(np.asarray(largest), np.asarray([gt]))[:, 0] >= 0.5
        multiple_iou = their_multiple_iou(np.concatenate(every, axis=0), np.asarray([gt]))
        idx, sliced = 0, []
        for nr_box in number:
            sliced.append(max(multiple_iou.max(1)[idx : idx + nr_box]))
            idx += nr_box
        for k, iou in enumerate(IOU_THRESHOLDS):
            hits_v2[k][np.where(np.asarray(sliced) >= (iou / 100))[0]] += 1
    return hits, hits_v2


def score_maps(base: Path, sizes: Sizes) -> dict[str, Any]:
    """maps/s of ``score_map_folder`` (protocol cam; wsolevaluation at each of ``INTERVALS``) on one map per test
    image, and of wsolevaluation's per-image loop on the first ``sizes.score_maps_loop`` of them."""
    folder, size = base / "score_maps", sizes.score_maps_size
    start = time.perf_counter()
    root = write_synthetic_stanford_cars(
        folder / "data",
        class_names=spread(STANFORD_CARS_CLASS_NAMES, sizes.score_maps_classes),
        n_train_per_class=0,
        n_test_per_class=sizes.score_maps_test_per_class,
        image_size=sizes.report_image_wh,
        seed=0,
        quality=90,
    )
    dataset = StanfordCarsCAM(root, split="test", image_size=size, return_box=True)
    write_maps(folder / "maps", dataset)
    data_seconds = time.perf_counter() - start
    maps = open_map_folder(folder / "maps", root, "test", image_size=size)
    workers = default_num_workers(DistInfo(), torch.device("cpu"))
    n, n_loop = len(maps.ids), min(sizes.score_maps_loop, len(maps.ids))
    head = first_maps(maps, n_loop)
    paths = [maps.folder / f"{image_id}.npy" for image_id in head.ids]
    gt_boxes = [[int(v) for v in dataset.get_box(i).tolist()] for i in range(n_loop)]  # their resize_bbox's int()

    def run(subset: MapFolder, protocol: str, interval: float = 0.01, meter: Any = None) -> dict[str, Any]:
        return score_map_folder(
            subset, protocol, interval, batch_size=BATCH, num_workers=workers, progress=False, meter=meter
        )

    # The first n_loop maps through both (also the warm-up): the protocol's hit counts against the loop's.
    run(head, "cam")
    check = {}
    for interval in INTERVALS:
        meter = WsolevaluationMeter(interval)
        metrics = run(head, "wsolevaluation", interval, meter)
        hits, hits_v2 = their_loop(paths, gt_boxes, interval)
        check[str(interval)] = {
            "equal_counts": bool(np.array_equal(meter.hits, hits) and np.array_equal(meter.hits_v2, hits_v2)),
            "maxboxacc": metrics["maxboxacc"],
            "maxboxacc_loop": float(hits.max() / n_loop),
            "maxboxacc_v2": metrics["maxboxacc_v2"],
            "maxboxacc_v2_loop": float(np.mean(hits_v2.max(axis=1)) / n_loop),
        }

    fns = {"cam": lambda: run(maps, "cam")}
    for interval in INTERVALS:
        fns[f"wsolevaluation_{interval}"] = lambda interval=interval: run(maps, "wsolevaluation", interval)
    for interval in INTERVALS:
        fns[f"their_loop_{interval}"] = lambda interval=interval: their_loop(paths, gt_boxes, interval)
    times = side_by_side(fns, sizes.score_maps_repeats, torch.device("cpu"), warmup=0)
    rates = {name: [(n_loop if name.startswith("their_loop") else n) / t for t in ts] for name, ts in times.items()}
    loop_01 = f"their_loop_{INTERVALS[0]}"
    return {
        "value": median_ratio(rates["cam"], rates[loop_01]),
        "maps_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "seconds_by_run": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "maps": n,
        "loop_maps": n_loop,
        "map_size": size,
        "intervals": list(INTERVALS),
        "loader_workers": workers,
        "batch": BATCH,
        "data_writing_seconds": round(data_seconds, 2),
        "check_on_loop_maps": check,
        "timing": f"median of {sizes.score_maps_repeats} round(s) side by side, after a pass on the loop's maps",
        "note": (
            f"their loop (np.load, uint8 image, cv2.threshold + findContours per threshold, boundingRect of every "
            f"contour and of the largest by contourArea, multiple_iou; both box modes from one findContours, where "
            f"their tool makes a pass per mode) runs on the first {n_loop} maps only; maps/s of each run over its "
            f"own maps"
        ),
    }
