"""CAM localisation scored exactly as clovaai/wsolevaluation's ``BoxEvaluator`` (``--protocol wsolevaluation``).

:class:`WsolevaluationMeter` has :class:`~.localization.LocalizationMeter`'s interface and metric keys but follows
``evaluation.py`` and ``inference.py`` of https://github.com/clovaai/wsolevaluation (Choe et al., CVPR 2020) step by
step: bicubic ``cv2.resize``, masks ``uint8(255 * map) > int(t * max)``, regions as ``cv2.findContours`` outlines
(largest by ``cv2.contourArea``), inclusive boxes with ``+1`` areas, ground truth truncated to ints (see
:meth:`update`),
thresholds ``np.arange(0, 1, cam_curve_interval)``. docs/metrics.md, "Against clovaai/wsolevaluation", tabulates
how this differs from the default protocol. OpenCV is an optional dependency, imported only when a meter is built.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .localization import LOC_THRESHOLD, HitCounts, check_batch

__all__ = ["IOU_THRESHOLD_LIST", "WsolevaluationMeter", "scoremap"]

IOU_THRESHOLD_LIST: np.ndarray = np.array([30, 50, 70]) / 100  # their iou_threshold_list, compared as `iou >= t / 100`
_NO_CV2 = (
    "--protocol wsolevaluation needs OpenCV: pip install 'CAM_Stanford_Cars[opencv]' "
    "(or: pip install opencv-python-headless)"
)


def _cv2() -> ModuleType:
    """OpenCV, imported on use so that importing this module never needs it."""
    try:
        import cv2
    except ImportError:
        raise ImportError(_NO_CV2) from None
    return cv2


def _iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``calculate_multiple_iou`` of int boxes (K, 4) against one int box (4,): (K,) float64."""
    inter = np.maximum(0, np.minimum(boxes[:, 2], gt[2]) - np.maximum(boxes[:, 0], gt[0]) + 1) * np.maximum(
        0, np.minimum(boxes[:, 3], gt[3]) - np.maximum(boxes[:, 1], gt[1]) + 1
    )
    area_a = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    denominator = area_a + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - inter
    return np.where(denominator > 0, inter / np.where(denominator > 0, denominator, 1), 0.0)


def scoremap(cam: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
    """inference.py: bicubic resize of a (h, w) float64 CAM to ``dsize`` ``(W, H)``, then ``normalize_scoremap``
    (a constant or NaN map becomes zeros)."""
    cv2 = _cv2()
    cam = cv2.resize(np.ascontiguousarray(cam), dsize, interpolation=cv2.INTER_CUBIC)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    with np.errstate(invalid="ignore"):  # an infinite value leaves NaN, which is reported below
        cam -= cam.min()
        cam /= cam.max()
    if not np.isfinite(cam).all():  # their check_scoremap_validity rejects the NaN an infinite value leaves
        raise ValueError("cams contain infinite values; check the model's output before scoring it")
    return cam


class WsolevaluationMeter(HitCounts):
    """wsolevaluation's MaxBoxAcc and MaxBoxAccV2, plus GT-known and Top-1 Loc, accumulated batch by batch as counts.

    Keys and the meaning of each are :class:`~.localization.LocalizationMeter`'s; only how a CAM becomes boxes differs
    (the module docstring). MaxBoxAcc: largest contour, IoU >= 0.5; MaxBoxAccV2: any contour, mean over IoU 0.3/0.5/0.7
    of the best rate over thresholds (their ``multi_contour_eval=True``). ``compute(cam_threshold)`` reports the
    threshold it used, the nearest of :attr:`thresholds`.

    Args:
        cam_curve_interval: threshold step; thresholds are ``np.arange(0, 1, cam_curve_interval)``.
        loc_threshold: the threshold for GT-known and Top-1 Loc; must be one of the thresholds (to 1e-9).

    Raises:
        ImportError: if OpenCV is not installed.
    """

    BUILT_FROM = "cam_curve_interval"
    REPORT_NEAREST = True

    def __init__(self, cam_curve_interval: float = 0.01, loc_threshold: float = LOC_THRESHOLD) -> None:
        _cv2()  # fail here, with the install line, rather than at the first batch
        if not 0 < cam_curve_interval < 1:
            raise ValueError(f"cam_curve_interval must lie in (0, 1), got {cam_curve_interval}")
        self.cam_curve_interval = float(cam_curve_interval)
        thresholds = np.arange(0, 1, self.cam_curve_interval)  # exactly their float values
        super().__init__(thresholds, loc_threshold, f"np.arange(0, 1, {cam_curve_interval})")

    @torch.no_grad()
    def update(
        self, logits: Tensor, labels: Tensor, cams: Tensor, gt_boxes: Tensor | None, image_size: tuple[int, int]
    ) -> None:
        """Add a batch; arguments and checks as :meth:`.LocalizationMeter.update`.

        Ground truth: each float half-open box ``[x1, y1, x2, y2]`` (image pixels, as the dataset gives it) becomes
        ``[int(x1), int(y1), int(x2), int(y2)]`` (truncation, as ``resize_bbox`` does after scaling to 224), and those
        ints
        are taken as wsolevaluation's inclusive corners without a ``- 1``: their CUB metadata stores ``x + w`` (the
        half-open right edge) and their IoU then adds ``+ 1``, so this reproduces what they do with CUB's boxes.

        Args:
            logits, labels: (B, C) class scores and (B,) true classes.
            cams: raw CAMs of the TRUE class, (B, h, w) or (B, 1, h, w).
            gt_boxes: (B, 4) boxes as above, a row of NaN where an image has none; ``None`` if none has.
            image_size: ``(H, W)`` of the images; CAMs are resized to ``dsize=(W, H)`` (wsolevaluation passes
                ``images.shape[2:]``, which is the same for their square 224 x 224 images).

        Raises:
            ValueError: on inconsistent shapes, labels out of range, invalid boxes or CAMs with infinite values.
        """
        labels, boxes = check_batch(logits, labels, cams, gt_boxes)
        if not (cams.dim() == 3 or (cams.dim() == 4 and cams.shape[1] == 1)):
            raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
        height, width = (int(v) for v in image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image_size must be (H, W), two positive ints, got {image_size!r}")
        top1_right, has_box = self.count_classes(logits, labels, boxes)
        maps = cams.detach().cpu().double().reshape(cams.shape[0], *cams.shape[-2:]).numpy()  # as their t2n: float64
        for i in np.flatnonzero(has_box):
            largest, best = self._image_ious(scoremap(maps[i], (width, height)), np.trunc(boxes[i]).astype(np.int64))
            self.hits += largest >= 0.5
            self.hits_top1 += (largest >= 0.5) & bool(top1_right[i])
            self.hits_v2 += best[None, :] >= IOU_THRESHOLD_LIST[:, None]

    def _image_ious(self, scoremap: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``compute_bboxes_from_scoremaps`` + IoU: per threshold (T,), the IoU of the largest contour's box and the
        best
        IoU of any contour's box with ``gt`` (4,) int."""
        cv2 = _cv2()
        image = (scoremap * 255).astype(np.uint8)  # truncation, as theirs
        levels = (self.thresholds * int(image.max())).astype(np.int64)  # int(threshold * max) per threshold
        above = image.size - np.cumsum(np.bincount(image.ravel(), minlength=256))  # above[k]: pixels > k
        # Masks are nested, so thresholds whose masks hold as many pixels share one mask: find its contours once.
        _, first, inverse = np.unique(above[levels], return_index=True, return_inverse=True)
        rects, owner, tops = (
            [],
            [],
            [],
        )  # boundingRects (x, y, w, h) of every contour, the mask of each, the largest's row
        for u, level in enumerate(levels[first]):
            contours = cv2.findContours(
                cv2.threshold(image, int(level), 255, cv2.THRESH_BINARY)[1], cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE
            )[-2]  # [-2]: OpenCV 3 returns (image, contours, hierarchy)
            # No contour: their box [0, 0, 0, 0], which still counts as one pixel in the IoU.
            tops.append(
                len(rects) + (int(np.argmax([cv2.contourArea(c) for c in contours])) if contours else 0)
            )  # first of ties
            rects += [cv2.boundingRect(c) for c in contours] if contours else [(0, 0, 0, 0)]
            owner += [u] * max(len(contours), 1)
        r = np.array(rects, dtype=np.int64).reshape(-1, 4)
        height, width = image.shape
        ious = _iou(
            np.stack(
                [r[:, 0], r[:, 1], np.minimum(r[:, 0] + r[:, 2], width - 1), np.minimum(r[:, 1] + r[:, 3], height - 1)],
                axis=1,
            ),
            gt,
        )  # (K,) inclusive x0, y0, x1, y1
        best = np.zeros(first.shape[0])
        np.maximum.at(best, np.array(owner), ious)  # IoUs are >= 0: the zeros start is harmless
        return ious[tops][inverse], best[inverse]

    def box_accuracy_curve(self) -> np.ndarray:
        """(T,) float64 hit rate (largest contour, IoU >= 0.5) per threshold; NaN without images with a box."""
        n_box = int(self.counts[1])
        return self.hits / n_box if n_box else np.full(self.thresholds.shape[0], np.nan)
