"""CAM localisation scored exactly as clovaai/wsolevaluation's ``BoxEvaluator`` (``--protocol wsolevaluation``).

:class:`WsolevaluationMeter` has :class:`~.localization.LocalizationMeter`'s interface and metric keys but follows
``evaluation.py`` and ``inference.py`` of https://github.com/clovaai/wsolevaluation (Choe et al., CVPR 2020) step by
step. Its differences from this project's default protocol (docs/metrics.md):

- upsampling ``cv2.resize(..., INTER_CUBIC)`` in float64, then ``normalize_scoremap`` (NaN map -> zeros), not bilinear;
- masks ``uint8(255 * map) > int(t * max)`` (``cv2.threshold``), not ``map >= t`` on the float map;
- regions are ``cv2.findContours`` (RETR_TREE, CHAIN_APPROX_SIMPLE) outlines: "largest" is the largest
  ``cv2.contourArea``, and MaxBoxAccV2 also boxes hole outlines;
- boxes are inclusive ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` from ``cv2.boundingRect``, IoU with ``+1`` areas,
  an empty mask's box ``[0, 0, 0, 0]`` (one pixel for that IoU); ground truth truncated to ints (see :meth:`update`);
- thresholds ``np.arange(0, 1, cam_curve_interval)`` (wsolevaluation trains with 0.001).

OpenCV is an optional dependency, imported only when a meter is built.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .localization import LOC_THRESHOLD, _check_batch

__all__ = ["WsolevaluationMeter", "V2_IOU_THRESHOLDS"]

V2_IOU_THRESHOLDS: np.ndarray = np.array([30, 50, 70]) / 100  # their iou_threshold_list, compared as `iou >= t / 100`
_NO_CV2 = ("--protocol wsolevaluation needs OpenCV: pip install 'CAM_Stanford_Cars[opencv]' "
           "(or: pip install opencv-python-headless)")


def _cv2() -> ModuleType:
    """OpenCV, imported on use so that importing this module never needs it."""
    try:
        import cv2
    except ImportError:
        raise ImportError(_NO_CV2) from None
    return cv2


def _iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``calculate_multiple_iou`` of int boxes (K, 4) against one int box (4,): (K,) float64."""
    inter = (np.maximum(0, np.minimum(boxes[:, 2], gt[2]) - np.maximum(boxes[:, 0], gt[0]) + 1)
             * np.maximum(0, np.minimum(boxes[:, 3], gt[3]) - np.maximum(boxes[:, 1], gt[1]) + 1))
    area_a = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    denominator = area_a + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - inter
    return np.where(denominator > 0, inter / np.where(denominator > 0, denominator, 1), 0.0)


class WsolevaluationMeter:
    """wsolevaluation's MaxBoxAcc and MaxBoxAccV2, plus GT-known and Top-1 Loc, accumulated batch by batch as counts.

    Keys and the meaning of each are :class:`~.localization.LocalizationMeter`'s; only how a CAM becomes boxes differs
    (the module docstring). MaxBoxAcc: largest contour, IoU >= 0.5; MaxBoxAccV2: any contour, mean over IoU 0.3/0.5/0.7
    of the best rate over thresholds (their ``multi_contour_eval=True``).

    Args:
        cam_curve_interval: threshold step; thresholds are ``np.arange(0, 1, cam_curve_interval)``.
        loc_threshold: the threshold for GT-known and Top-1 Loc; must be one of the thresholds (to 1e-9).

    Raises:
        ImportError: if OpenCV is not installed.
    """

    _HEAD = 4  # n_images, n_with_box, top1, top5

    def __init__(self, cam_curve_interval: float = 0.01, loc_threshold: float = LOC_THRESHOLD) -> None:
        _cv2()  # fail here, with the install line, rather than at the first batch
        if not 0 < cam_curve_interval < 1:
            raise ValueError(f"cam_curve_interval must lie in (0, 1), got {cam_curve_interval}")
        self.cam_curve_interval = float(cam_curve_interval)
        self.thresholds: np.ndarray = np.arange(0, 1, self.cam_curve_interval)  # exactly their float values
        matches = np.flatnonzero(np.isclose(self.thresholds, loc_threshold, rtol=0.0, atol=1e-9))
        if matches.size == 0:
            raise ValueError(f"loc_threshold={loc_threshold} is not one of np.arange(0, 1, {cam_curve_interval})")
        self.loc_threshold, self._loc_index = float(loc_threshold), int(matches[0])
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        n = self.thresholds.shape[0]
        self._counts = np.zeros(self._HEAD, dtype=np.int64)
        self._hits = np.zeros(n, dtype=np.int64)  # (T,) largest contour, IoU >= 0.5
        self._hits_top1 = np.zeros(n, dtype=np.int64)  # (T,) the same, of images right at top-1
        self._hits_v2 = np.zeros((V2_IOU_THRESHOLDS.shape[0], n), dtype=np.int64)  # (3, T) any contour

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, cams: Tensor, gt_boxes: Tensor | None, image_size: tuple[int, int]) -> None:
        """Add a batch; arguments and checks as :meth:`.LocalizationMeter.update`.

        Ground truth: each float half-open box ``[x1, y1, x2, y2]`` (image pixels, as the dataset gives it) becomes
        ``[int(x1), int(y1), int(x2), int(y2)]`` (truncation, as ``resize_bbox`` does after scaling to 224), and those ints
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
        labels, boxes = _check_batch(logits, labels, cams, gt_boxes)
        if not (cams.dim() == 3 or (cams.dim() == 4 and cams.shape[1] == 1)):
            raise ValueError(f"cams must be (B, h, w) or (B, 1, h, w), got shape {tuple(cams.shape)}")
        height, width = (int(v) for v in image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image_size must be (H, W), two positive ints, got {image_size!r}")
        topk = logits.detach().cpu().float().topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        top1_right, top5_right = (topk[:, 0] == labels).numpy(), (topk == labels[:, None]).any(dim=1).numpy()
        has_box = ~np.isnan(boxes[:, 0])
        self._counts += np.array([logits.shape[0], has_box.sum(), top1_right.sum(), top5_right.sum()], dtype=np.int64)
        maps = cams.detach().cpu().double().reshape(cams.shape[0], *cams.shape[-2:]).numpy()  # as their t2n: float64
        for i in np.flatnonzero(has_box):
            largest, best = self._image_ious(self._scoremap(maps[i], (width, height)), np.trunc(boxes[i]).astype(np.int64))
            self._hits += largest >= 0.5
            self._hits_top1 += (largest >= 0.5) & bool(top1_right[i])
            self._hits_v2 += best[None, :] >= V2_IOU_THRESHOLDS[:, None]

    @staticmethod
    def _scoremap(cam: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
        """inference.py: bicubic resize of a (h, w) float64 CAM to ``dsize`` ``(W, H)``, then ``normalize_scoremap``."""
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

    def _image_ious(self, scoremap: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``compute_bboxes_from_scoremaps`` + IoU: per threshold (T,), the IoU of the largest contour's box and the best
        IoU of any contour's box with ``gt`` (4,) int."""
        cv2 = _cv2()
        image = (scoremap * 255).astype(np.uint8)  # truncation, as theirs
        levels = (self.thresholds * int(image.max())).astype(np.int64)  # int(threshold * max) per threshold
        above = image.size - np.cumsum(np.bincount(image.ravel(), minlength=256))  # above[k]: pixels > k
        # Masks are nested, so thresholds whose masks hold as many pixels share one mask: find its contours once.
        _, first, inverse = np.unique(above[levels], return_index=True, return_inverse=True)
        rects, owner, tops = [], [], []  # boundingRects (x, y, w, h) of every contour, the mask of each, the largest's row
        for u, level in enumerate(levels[first]):
            contours = cv2.findContours(cv2.threshold(image, int(level), 255, cv2.THRESH_BINARY)[1], cv2.RETR_TREE,
                                        cv2.CHAIN_APPROX_SIMPLE)[-2]  # [-2]: OpenCV 3 returns (image, contours, hierarchy)
            # No contour: their box [0, 0, 0, 0], which still counts as one pixel in the IoU.
            tops.append(len(rects) + (int(np.argmax([cv2.contourArea(c) for c in contours])) if contours else 0))  # first of ties
            rects += [cv2.boundingRect(c) for c in contours] if contours else [(0, 0, 0, 0)]
            owner += [u] * max(len(contours), 1)
        r = np.array(rects, dtype=np.int64).reshape(-1, 4)
        height, width = image.shape
        ious = _iou(np.stack([r[:, 0], r[:, 1], np.minimum(r[:, 0] + r[:, 2], width - 1),
                              np.minimum(r[:, 1] + r[:, 3], height - 1)], axis=1), gt)  # (K,) inclusive x0, y0, x1, y1
        best = np.zeros(first.shape[0])
        np.maximum.at(best, np.array(owner), ious)  # IoUs are >= 0: the zeros start is harmless
        return ious[tops][inverse], best[inverse]

    def compute(self, cam_threshold: float | None = None) -> dict[str, float | int]:
        """The metrics so far as plain Python numbers (fractions in [0, 1]; NaN with nothing to count).

        Args:
            cam_threshold: also report GT-known and Top-1 Loc at the threshold of :attr:`thresholds` nearest to it.
        """
        n_images, n_box, top1, top5 = (int(v) for v in self._counts)

        def rate(count: float, total: int) -> float:
            return float(count) / total if total else math.nan

        best_t = int(np.argmax(self._hits))
        v2 = {f"maxboxacc_v2_iou{round(100 * iou)}": rate(hits.max(), n_box)
              for iou, hits in zip(V2_IOU_THRESHOLDS, self._hits_v2)}
        out: dict[str, float | int] = {
            "top1": rate(top1, n_images), "top5": rate(top5, n_images),
            "gt_known_loc": rate(self._hits[self._loc_index], n_box),
            "top1_loc": rate(self._hits_top1[self._loc_index], n_box),
            "maxboxacc": rate(self._hits[best_t], n_box),
            "maxboxacc_threshold": float(self.thresholds[best_t]) if n_box else math.nan,
            "maxboxacc_v2": float(np.mean(list(v2.values()))) if n_box else math.nan, **v2,
            "n_images": n_images, "n_with_box": n_box, "n_without_box": n_images - n_box,
        }
        if cam_threshold is not None:
            j = int(np.argmin(np.abs(self.thresholds - float(cam_threshold))))
            out.update(cam_threshold=float(self.thresholds[j]), gt_known_loc_at_cam_threshold=rate(self._hits[j], n_box),
                       top1_loc_at_cam_threshold=rate(self._hits_top1[j], n_box))
        return out

    def box_accuracy_curve(self) -> np.ndarray:
        """(T,) float64 hit rate (largest contour, IoU >= 0.5) per threshold; NaN without images with a box."""
        n_box = int(self._counts[1])
        return self._hits / n_box if n_box else np.full(self.thresholds.shape[0], np.nan)

    def state_tensor(self) -> Tensor:
        """All counts as one int64 tensor (4 + 5T,), to be summed across ranks."""
        return torch.from_numpy(np.concatenate([self._counts, self._hits, self._hits_top1, self._hits_v2.ravel()]))

    def load_state_tensor(self, state: Tensor) -> None:
        """Replace the counts by ``state`` (e.g. the all-reduced :meth:`state_tensor`)."""
        values, n = state.detach().cpu().reshape(-1), self.thresholds.shape[0]
        if values.numel() != self._HEAD + 5 * n:
            raise ValueError(f"state has {values.numel()} counts, a meter with {n} thresholds has {self._HEAD + 5 * n}")
        arr = (values.round() if values.is_floating_point() else values).long().numpy().copy()
        self._counts, rows = arr[: self._HEAD], arr[self._HEAD :].reshape(2 + V2_IOU_THRESHOLDS.shape[0], n)
        self._hits, self._hits_top1, self._hits_v2 = rows[0], rows[1], rows[2:]

    def merge(self, other: WsolevaluationMeter) -> WsolevaluationMeter:
        """Add ``other``'s counts to this meter's; returns ``self``."""
        if not np.array_equal(self.thresholds, other.thresholds) or self._loc_index != other._loc_index:
            raise ValueError("cannot merge meters built with different cam_curve_interval or loc_threshold")
        self.load_state_tensor(self.state_tensor() + other.state_tensor())
        return self
