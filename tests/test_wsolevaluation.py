"""The wsolevaluation protocol: a hand-computed case, equality with a step-by-step transcription of
clovaai/wsolevaluation's ``BoxEvaluator`` (evaluation.py, inference.py), count bookkeeping, and the optional OpenCV
dependency."""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch

from CAM_Stanford_Cars.wsolevaluation import WsolevaluationMeter

NAN4 = [math.nan] * 4


@pytest.fixture
def cv2():
    return pytest.importorskip("cv2")


def two_blob_cam() -> torch.Tensor:
    """(8, 8) map: blob A = 1.0 at rows/cols 1..3, blob B = 0.5 at rows 5..7, cols 2..7, background 0."""
    cam = torch.zeros(8, 8)
    cam[1:4, 1:4] = 1.0
    cam[5:8, 2:8] = 0.5
    return cam


def test_hand_computed_two_blobs(cv2) -> None:
    # image_size == CAM size: cv2.resize copies, no interpolation. min 0, max 1: normalising changes nothing.
    # uint8(255 * map): A -> 255, B -> uint8(127.5) = 127 (truncated), background 0.
    # mask = uint8 > int(t * 255): t <= 0.49 gives level <= int(124.95) = 124, so A and B; t >= 0.50 gives level >= 127:
    # A only (0.50 * 255 = 127.5 -> 127, and 127 > 127 is false). So thresholds 0..49 see A+B, 50..99 see A.
    # Contours (CHAIN_APPROX_SIMPLE keeps the corners): A's corners (1,1)-(3,3) -> contourArea 2 * 2 = 4;
    # B's (2,5)-(7,7) -> contourArea 5 * 2 = 10, so B is the largest while it is there.
    # boundingRect A = (1, 1, 3, 3) -> [1, 1, 4, 4]; B = (2, 5, 6, 3) -> [2, 5, min(8, 7), min(8, 7)] = [2, 5, 7, 7].
    # Image 1, GT [1.6, 0.9, 4.2, 4.7] -> int [1, 0, 4, 4] (area 4 * 5 = 20). IoU(A) = 4 * 4 / (16 + 20 - 16) = 0.8;
    #   IoU(B) = 0 (rows 5..7 vs 0..4). Largest: miss at t <= 0.49 (B), hit at t >= 0.5 (A);
    #   any contour: 0.8 everywhere.
    # Image 2, GT [2, 5, 8, 8] -> [2, 5, 8, 8] (area 7 * 4 = 28). IoU(B) = 6 * 3 / (18 + 28 - 18) = 18 / 28 = 0.643;
    #   IoU(A) = 0. Largest: hit at t <= 0.49, miss after;
    #   any contour: 0.643 at t <= 0.49 (>= 0.3, >= 0.5, < 0.7), else 0.
    # Image 3, a constant CAM -> zeros -> empty masks -> box [0, 0, 0, 0], one pixel with the +1 areas;
    #   GT [0.2, 0.3, 0.9, 0.6] -> int [0, 0, 0, 0]: IoU 1 at every threshold.
    # Image 4 has no box: classified only.
    cams = torch.stack([two_blob_cam(), two_blob_cam(), torch.full((8, 8), 3.0), two_blob_cam()])
    boxes = torch.tensor([[1.6, 0.9, 4.2, 4.7], [2.0, 5.0, 8.0, 8.0], [0.2, 0.3, 0.9, 0.6], NAN4], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.eye(3)[[0, 0, 2, 1]]  # top-1 right for images 1 and 3 only
    meter = WsolevaluationMeter()
    meter.update(logits, labels, cams, boxes, (8, 8))
    # Largest-contour hits per threshold: images 1 + 3 at t >= 0.5, images 2 + 3 at t <= 0.49: always 2.
    np.testing.assert_array_equal(meter.hits, np.full(100, 2))
    np.testing.assert_array_equal(meter.hits_top1, np.r_[np.full(50, 1), np.full(50, 2)])  # image 3, then 1 + 3
    np.testing.assert_array_equal(meter.hits_v2[0], np.r_[np.full(50, 3), np.full(50, 2)])
    np.testing.assert_array_equal(meter.hits_v2[1], np.r_[np.full(50, 3), np.full(50, 2)])
    np.testing.assert_array_equal(meter.hits_v2[2], np.full(100, 2))  # image 2's 0.643 < 0.7
    m = meter.compute(cam_threshold=0.6)
    assert (m["n_images"], m["n_with_box"], m["n_without_box"]) == (4, 3, 1)
    assert m["top1"] == 0.5 and m["top5"] == 1.0
    assert m["maxboxacc"] == pytest.approx(2 / 3) and m["maxboxacc_threshold"] == 0.0  # the first best threshold
    assert m["gt_known_loc"] == pytest.approx(2 / 3) and m["top1_loc"] == pytest.approx(1 / 3)  # t = 0.2: images 2, 3
    assert (
        m["maxboxacc_v2_iou30"] == 1.0
        and m["maxboxacc_v2_iou50"] == 1.0
        and m["maxboxacc_v2_iou70"] == pytest.approx(2 / 3)
    )
    assert m["maxboxacc_v2"] == pytest.approx(8 / 9)
    assert m["cam_threshold"] == pytest.approx(0.6)
    assert m["gt_known_loc_at_cam_threshold"] == pytest.approx(2 / 3) and m[
        "top1_loc_at_cam_threshold"
    ] == pytest.approx(2 / 3)
    np.testing.assert_allclose(meter.box_accuracy_curve(), np.full(100, 2 / 3))

    # cam_curve_interval 0.001: level int(t * 255) <= 126 iff t <= 0.498 (499 thresholds; 0.499 * 255 = 127.245 -> 127).
    fine = WsolevaluationMeter(cam_curve_interval=0.001)
    fine.update(logits, labels, cams, boxes, (8, 8))
    assert fine.thresholds.shape == (1000,)
    np.testing.assert_array_equal(fine.hits_top1, np.r_[np.full(499, 1), np.full(501, 2)])


def test_largest_is_by_contour_area_not_pixels(cv2) -> None:
    # A line of 8 pixels (row 6) has contourArea 0; a 2 x 2 square (rows/cols 1..2) has 4 pixels but contourArea
    # 1 * 1 = 1, so the square is "largest": boundingRect (1, 1, 2, 2) -> box [1, 1, 3, 3] against GT
    # [1.0, 1.0, 3.9, 3.5] -> int [1, 1, 3, 3] is IoU 1 at every threshold (both regions are 255 after normalising).
    # By pixel count the line would win:
    # boundingRect (0, 6, 8, 1) -> [0, 6, min(8, 7), 7] = [0, 6, 7, 7], IoU 0 with the GT (rows 6..7 vs 1..3): a miss.
    cam = torch.zeros(1, 8, 8)
    cam[0, 6, :] = 1.0
    cam[0, 1:3, 1:3] = 1.0
    meter = WsolevaluationMeter()
    meter.update(torch.ones(1, 2), torch.tensor([0]), cam, torch.tensor([[1.0, 1.0, 3.9, 3.5]]), (8, 8))
    np.testing.assert_array_equal(meter.hits, np.ones(100))
    assert meter.compute()["maxboxacc"] == 1.0


# --------------------------------------------------------------------------------------------
# A transcription of wsolevaluation, step by step, one image and one threshold at a time


def ref_normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    if np.isnan(cam).any():
        return np.zeros_like(cam)
    if cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def ref_boxes(cv2, scoremap: np.ndarray, threshold_list: list, multi_contour_eval: bool) -> tuple[list, list]:
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    boxes_at_thr, number_of_box = [], []
    for threshold in threshold_list:
        _, thr = cv2.threshold(
            src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)), maxval=255, type=cv2.THRESH_BINARY
        )
        contours = cv2.findContours(image=thr, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
        if len(contours) == 0:
            boxes_at_thr.append(np.asarray([[0, 0, 0, 0]]))
            number_of_box.append(1)
            continue
        if not multi_contour_eval:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        boxes_at_thr.append(np.asarray(boxes))
        number_of_box.append(len(contours))
    return boxes_at_thr, number_of_box


def ref_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
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


def ref_num_correct(
    cv2,
    cams: np.ndarray,
    gt: list,
    image_size: tuple[int, int],
    interval: float,
    multi: bool,
    iou_thresholds: list[int],
) -> dict[int, np.ndarray]:
    """BoxEvaluator.accumulate over CAMComputer's loop; ``gt`` holds each image's resize_bbox-style int box."""
    cam_threshold_list = list(np.arange(0, 1, interval))
    num_correct = {iou: np.zeros(len(cam_threshold_list)) for iou in iou_thresholds}
    for cam, box in zip(cams.astype(float), gt):
        scoremap = ref_normalize_scoremap(
            cv2.resize(cam, (image_size[1], image_size[0]), interpolation=cv2.INTER_CUBIC)
        )
        boxes_at_thr, number_of_box = ref_boxes(cv2, scoremap, cam_threshold_list, multi)
        multiple_iou = ref_multiple_iou(np.concatenate(boxes_at_thr, axis=0), np.array([box]))
        idx, sliced = 0, []
        for nr_box in number_of_box:
            sliced.append(max(multiple_iou.max(1)[idx : idx + nr_box]))
            idx += nr_box
        for iou in iou_thresholds:
            num_correct[iou][np.where(np.asarray(sliced) >= (iou / 100))[0]] += 1
    return num_correct


def random_cams(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Smooth blobs with noise, rings (hole outlines for RETR_TREE), coarse plateaus (ties) and one constant map."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] / max(shape)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            blobs = [
                rng.uniform(0.3, 1)
                * np.exp(-((xx - rng.uniform()) ** 2 + (yy - rng.uniform()) ** 2) / rng.uniform(0.01, 0.1))
                for _ in range(3)
            ]
            cam = sum(blobs) + 0.2 * rng.standard_normal(shape)
        elif kind == 1:
            cam = -np.abs(np.hypot(xx - 0.5, yy - 0.5) - rng.uniform(0.2, 0.35)) + 0.05 * rng.standard_normal(shape)
        elif kind == 2:
            cam = rng.integers(0, 4, shape).astype(float) * 2.5 - 3
        else:
            cam = np.full(shape, rng.uniform(-1, 1)) if i == 3 else rng.standard_normal(shape)
        out.append(cam)
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_equals_wsolevaluation_transcription(cv2, interval: float) -> None:
    rng = np.random.default_rng(7)
    image_size = (36, 44)  # (H, W), not square: the resize must get dsize (W, H)
    cams = random_cams(rng, 8, (7, 9))
    cams[7, 2, 3] = np.nan  # normalize_scoremap: a map with NaN scores as zeros
    x = np.sort(rng.uniform(0, image_size[1], (8, 2)), axis=1)
    y = np.sort(rng.uniform(0, image_size[0], (8, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    boxes[5] = [0.0, 0.0, image_size[1], image_size[0]]  # the whole image: edges at W, H beyond the clipped predictions
    gt = [tuple(int(v) for v in box) for box in boxes]  # resize_bbox's int()
    meter = WsolevaluationMeter(cam_curve_interval=interval)
    logits = torch.from_numpy(rng.standard_normal((8, 5))).float()
    labels = torch.from_numpy(rng.integers(0, 5, 8))
    for part in (slice(0, 3), slice(3, 8)):
        meter.update(
            logits[part], labels[part], torch.from_numpy(cams[part]), torch.from_numpy(boxes[part]), image_size
        )
    single = ref_num_correct(cv2, cams, gt, image_size, interval, multi=False, iou_thresholds=[50])
    multi = ref_num_correct(cv2, cams, gt, image_size, interval, multi=True, iou_thresholds=[30, 50, 70])
    np.testing.assert_array_equal(meter.thresholds, np.arange(0, 1, interval))
    np.testing.assert_array_equal(meter.hits, single[50])
    np.testing.assert_array_equal(meter.hits_v2, np.stack([multi[30], multi[50], multi[70]]))
    assert meter.hits.max() > 0 and meter.hits.min() < 8  # the maps do discriminate
    m = meter.compute()
    # BoxEvaluator.compute: the best of num_correct * 100 / cnt per IoU threshold.
    assert 100 * m["maxboxacc"] == pytest.approx((single[50] * 100.0 / 8).max(), abs=1e-12)
    v2 = [(multi[iou] * 100.0 / 8).max() for iou in (30, 50, 70)]
    assert [100 * m[f"maxboxacc_v2_iou{iou}"] for iou in (30, 50, 70)] == pytest.approx(v2, abs=1e-12)
    assert 100 * m["maxboxacc_v2"] == pytest.approx(np.mean(v2), abs=1e-12)


# --------------------------------------------------------------------------------------------
# Counts: cam_threshold keys, ranks, merge


def test_cam_threshold_state_and_merge(cv2) -> None:
    rng = np.random.default_rng(3)
    batches = []
    for n in (3, 4, 2):
        boxes = torch.tensor([[2.0, 3.0, 20.5, 15.0]] * n, dtype=torch.float64)
        boxes[0] = math.nan  # one image per batch without a box
        cams = torch.from_numpy(random_cams(rng, n, (5, 5)))
        batches.append((torch.randn(n, 4), torch.from_numpy(rng.integers(0, 4, n)), cams, boxes))
    whole, parts = WsolevaluationMeter(), [WsolevaluationMeter() for _ in batches]
    for part, batch in zip(parts, batches):
        whole.update(*batch, (24, 24))
        part.update(*batch, (24, 24))
    merged = WsolevaluationMeter().merge(parts[0]).merge(parts[1]).merge(parts[2])
    assert torch.equal(merged.state_tensor(), whole.state_tensor())
    loaded = WsolevaluationMeter()
    loaded.load_state_tensor(sum(p.state_tensor() for p in parts))  # as an all-reduce would
    assert loaded.state_tensor().dtype == torch.int64 and loaded.state_tensor().shape == (4 + 5 * 100,)
    expected = whole.compute(cam_threshold=0.333)
    assert loaded.compute(cam_threshold=0.333) == pytest.approx(expected, nan_ok=True)
    assert expected["n_without_box"] == 3 and expected["cam_threshold"] == pytest.approx(0.33)
    j = 33
    assert expected["gt_known_loc_at_cam_threshold"] == whole.hits[j] / 6
    assert expected["top1_loc_at_cam_threshold"] == whole.hits_top1[j] / 6
    assert "cam_threshold" not in whole.compute()
    with pytest.raises(ValueError, match="different"):
        whole.merge(WsolevaluationMeter(cam_curve_interval=0.001))
    with pytest.raises(ValueError, match="counts"):
        loaded.load_state_tensor(torch.zeros(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="infinite"):
        whole.update(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([[[0.0, math.inf]]]), torch.zeros(1, 4), (1, 2))
    whole.reset()
    assert whole.compute()["n_images"] == 0 and math.isnan(whole.compute()["maxboxacc"])


# --------------------------------------------------------------------------------------------
# OpenCV is optional


def test_without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    # The re-import below rebinds the package's attribute too: put both back afterwards.
    monkeypatch.setattr(
        importlib.import_module("CAM_Stanford_Cars"), "wsolevaluation", sys.modules["CAM_Stanford_Cars.wsolevaluation"]
    )
    monkeypatch.delitem(sys.modules, "CAM_Stanford_Cars.wsolevaluation", raising=False)
    module = importlib.import_module("CAM_Stanford_Cars.wsolevaluation")  # importing never needs cv2
    with pytest.raises(ImportError, match=r"pip install 'CAM_Stanford_Cars\[opencv\]'"):
        module.WsolevaluationMeter()
