"""Boxes from CAMs and the localisation metrics: hand-checked cases, and the fast sweep against
the per-threshold ``scipy.ndimage.label`` reference on many maps."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CAM_Stanford_Cars import localization as L
from CAM_Stanford_Cars.accel import sweep as accel_sweep
from CAM_Stanford_Cars.localization import (
    THRESHOLDS,
    LocalizationMeter,
    box_iou,
    boxes_from_cams,
    format_metrics_table,
    largest_component_box,
    mask_to_box,
    normalize_cams,
    reference_best_iou,
    reference_boxes,
    sweep_best_iou,
    sweep_boxes,
)

NAN4 = [math.nan] * 4


# --------------------------------------------------------------------------------------------
# Map families the sweep must agree with the reference on


def smooth_maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Upsampled small random grids, normalised like CAMs: few, large components."""
    grid = torch.from_numpy(rng.standard_normal((n, int(rng.integers(2, 6)), int(rng.integers(2, 6)))))
    return normalize_cams(grid.float(), shape).numpy()


def noise_maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Independent uniform pixels: many small components, merges at every level."""
    return rng.random((n, *shape)).astype(np.float32)


def quantised_maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Few distinct values: plateaus, and many components of equal size at once (tie rule)."""
    levels = int(rng.integers(2, 5))
    return (rng.integers(0, levels, size=(n, *shape)) / (levels - 1)).astype(np.float32)


def on_threshold_maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Values exactly on thresholds (0.2, 0.29, ...) in float64: ``map >= t`` holds with equality."""
    return rng.choice(THRESHOLDS[::7], size=(n, *shape))


def on_threshold_f32_maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Thresholds rounded to float32: float32(0.29) < 0.29 but float32(0.2) > 0.2."""
    return rng.choice(THRESHOLDS[::3], size=(n, *shape)).astype(np.float32)


def sparse_maps(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Mostly zero with a few isolated pixels: one-pixel components and empty masks."""
    maps = np.zeros((n, *shape), dtype=np.float32)
    maps[rng.random((n, *shape)) < 0.08] = 1.0
    maps[rng.random((n, *shape)) < 0.05] = 0.5
    return maps


FAMILIES = [smooth_maps, noise_maps, quantised_maps, on_threshold_maps, on_threshold_f32_maps, sparse_maps]
SHAPES = [(1, 1), (1, 9), (7, 1), (9, 11), (16, 16), (23, 31)]


def random_gt(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    x = np.sort(rng.integers(0, width + 1, size=(n, 2)), axis=1)
    y = np.sort(rng.integers(0, height + 1, size=(n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float64)


# --------------------------------------------------------------------------------------------
# IoU and boxes by hand


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # identical
        ([0, 0, 2, 2], [2, 0, 4, 2], 0.0),  # touching edges share no pixel
        ([0, 0, 2, 2], [2, 2, 4, 4], 0.0),  # touching corners
        ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),  # contained
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # one shared pixel of 4 + 4 - 1
        ([3, 4, 4, 5], [3, 4, 4, 5], 1.0),  # one-pixel boxes
        ([0, 0, 0, 0], [1, 1, 3, 3], 0.0),  # empty box against a real one
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # zero-area union
        ([1, 1, 1, 5], [0, 0, 4, 4], 0.0),  # zero-width box inside another
    ],
)
def test_box_iou_by_hand(a: list[float], b: list[float], expected: float) -> None:
    assert box_iou(np.array([a], float), np.array([b], float))[0] == pytest.approx(expected, abs=1e-15)
    assert box_iou(np.array([b], float), np.array([a], float))[0] == pytest.approx(expected, abs=1e-15)


def test_box_iou_missing_box_is_nan_and_never_a_hit() -> None:
    iou = box_iou(np.array([[0, 0, 2, 2], NAN4, [0, 0, 2, 2]]), np.array([NAN4, [0, 0, 2, 2], [0, 0, 2, 2]]))
    assert np.isnan(iou[:2]).all() and iou[2] == 1.0
    assert not (iou[:2] >= 0.0).any()


def test_box_iou_broadcasts_and_keeps_tensors() -> None:
    gt = torch.tensor([0.0, 0.0, 4.0, 4.0])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0]])
    iou = box_iou(boxes, gt)
    assert isinstance(iou, torch.Tensor) and iou.dtype == torch.float32
    assert iou.tolist() == [1.0, 0.25]


@pytest.mark.parametrize("bad", [[2, 0, 1, 1], [0, 3, 1, 1], [0, math.nan, 1, 1], [0, 0, math.inf, 1]])
def test_box_iou_rejects_invalid_boxes(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="box"):
        box_iou(np.array([bad]), np.array([[0, 0, 1, 1]]))


def test_mask_to_box_pixel_edges() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    assert mask_to_box(mask).tolist() == [0, 0, 0, 0]
    mask[3, 5] = True
    assert mask_to_box(mask).tolist() == [5, 3, 6, 4]  # one pixel has area 1
    mask[1, 2] = True
    assert mask_to_box(mask).tolist() == [2, 1, 6, 4]
    assert mask_to_box(np.ones((6, 8), dtype=bool)).tolist() == [0, 0, 8, 6]


def test_largest_component_is_eight_connected() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[[0, 1, 2], [0, 1, 2]] = True  # a diagonal: one component under 8-connectivity
    mask[4, 4] = True
    assert largest_component_box(mask).tolist() == [0, 0, 3, 3]


def test_equal_components_go_to_the_first_in_raster_order() -> None:
    # Two 3-pixel components; the right one starts on an earlier row, the left one further left.
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, 4:6] = mask[1, 5] = True
    mask[1:4, 0] = True
    assert largest_component_box(mask).tolist() == [4, 0, 6, 2]
    cam = mask.astype(np.float32)
    assert sweep_boxes(cam)[50].tolist() == [4, 0, 6, 2]
    # Same row: the leftmost first pixel wins.
    mask = np.zeros((3, 7), dtype=bool)
    mask[0, 4:6] = True
    mask[0, 0:2] = True
    assert largest_component_box(mask).tolist() == [0, 0, 2, 1]
    assert sweep_boxes(mask.astype(np.float64))[99].tolist() == [0, 0, 2, 1]


def test_empty_mask_gives_zero_box_with_zero_iou() -> None:
    cam = np.full((4, 4), 0.1)
    boxes = sweep_boxes(cam)
    assert boxes[10].tolist() == [0, 0, 4, 4]
    assert (boxes[11:] == 0).all()
    assert (sweep_best_iou(cam[None], np.array([[0.0, 0.0, 2.0, 2.0]]))[0, 11:] == 0).all()


def test_threshold_comparison_is_exact_in_float64() -> None:
    # float32(0.29) is just below 0.29, float32(0.2) just above 0.2; float64 values sit on them.
    cam32 = np.zeros((1, 3), dtype=np.float32)
    cam32[0, 0], cam32[0, 2] = 0.29, 0.2
    boxes = sweep_boxes(cam32)
    assert boxes[20].tolist() == [0, 0, 1, 1]  # 0.29f >= 0.2 and is first in raster order
    assert boxes[28].tolist() == [0, 0, 1, 1] and boxes[29].tolist() == [0, 0, 0, 0]
    cam64 = np.array([[0.29, 0.0, 0.2]])
    boxes = sweep_boxes(cam64)
    assert boxes[29].tolist() == [0, 0, 1, 1] and boxes[30].tolist() == [0, 0, 0, 0]
    assert np.array_equal(boxes, reference_boxes(cam64))
    assert np.array_equal(sweep_boxes(cam32), reference_boxes(cam32))


# --------------------------------------------------------------------------------------------
# The sweep equals the per-threshold reference


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_sweep_boxes_equal_reference(family) -> None:
    rng = np.random.default_rng(sum(map(ord, family.__name__)))
    for shape in SHAPES:
        maps = family(rng, 6, shape)
        boxes = sweep_boxes(maps)
        assert boxes.shape == (6, 100, 4)
        for cam, got in zip(maps, boxes):
            assert np.array_equal(got, reference_boxes(cam))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_sweep_best_iou_equals_reference(family) -> None:
    rng = np.random.default_rng(1 + sum(map(ord, family.__name__)))
    for shape in SHAPES:
        maps = family(rng, 5, shape)
        gt = random_gt(rng, 5, shape)
        best = sweep_best_iou(maps, gt)
        largest = box_iou(sweep_boxes(maps), gt[:, None, :])
        assert (best >= largest).all()  # the largest component is one of the candidates
        for cam, box, got in zip(maps, gt, best):
            assert np.array_equal(got, reference_best_iou(cam, box))


def test_sweep_on_constant_and_out_of_range_maps() -> None:
    for value in (0.0, 0.5, 1.0):
        cam = np.full((5, 6), value, dtype=np.float32)
        assert np.array_equal(sweep_boxes(cam), reference_boxes(cam))
    cam = np.random.default_rng(3).normal(size=(12, 9)) * 3  # below 0 and above 1
    assert np.array_equal(sweep_boxes(cam), reference_boxes(cam))


def test_sweep_with_custom_thresholds_and_integer_maps() -> None:
    rng = np.random.default_rng(4)
    cam = rng.integers(0, 6, size=(14, 17))
    thresholds = np.array([-1.0, 0.5, 2.0, 2.5, 5.0, 7.0])
    assert np.array_equal(sweep_boxes(cam, thresholds), reference_boxes(cam, thresholds))
    gt = np.array([[2.0, 3.0, 9.0, 12.0]])
    assert np.array_equal(sweep_best_iou(cam[None], gt, thresholds)[0], reference_best_iou(cam, gt[0], thresholds))


def test_sweep_threads_give_the_same_answer() -> None:
    maps = smooth_maps(np.random.default_rng(5), 7, (20, 24))
    gt = random_gt(np.random.default_rng(6), 7, (20, 24))
    one = accel_sweep.run_sweep(maps, THRESHOLDS, gt, num_threads=1)
    three = accel_sweep.run_sweep(maps, THRESHOLDS, gt, num_threads=3)
    assert np.array_equal(one[0], three[0]) and np.array_equal(one[1], three[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda m: torch.from_numpy(m).bfloat16(),
        lambda m: torch.from_numpy(m).half(),
        lambda m: torch.from_numpy(m).requires_grad_(),
    ],
    ids=["bf16", "fp16", "requires_grad"],
)
def test_sweeps_take_tensors_as_the_float32_numpy_path(make) -> None:
    rng = np.random.default_rng(8)
    maps = smooth_maps(rng, 4, (14, 15)).astype(np.float32)
    gt = torch.from_numpy(random_gt(rng, 4, (14, 15)))
    tensor = make(maps)
    # What the float32 numpy path sees: the tensor's own values, widened.
    expected_maps = tensor.detach().float().numpy()
    assert np.array_equal(sweep_boxes(tensor), sweep_boxes(expected_maps))
    assert np.array_equal(sweep_boxes(tensor[0]), sweep_boxes(expected_maps[0]))
    assert np.array_equal(sweep_best_iou(tensor, gt), sweep_best_iou(expected_maps, gt.numpy()))
    assert np.array_equal(
        accel_sweep.run_sweep(L._check_maps(L._as_maps(tensor)), THRESHOLDS, None)[0], sweep_boxes(expected_maps)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sweeps_take_cuda_tensors() -> None:
    maps = smooth_maps(np.random.default_rng(9), 3, (10, 12)).astype(np.float32)
    assert np.array_equal(sweep_boxes(torch.from_numpy(maps).cuda()), sweep_boxes(maps))


def test_sweep_best_iou_missing_gt_rows_are_nan() -> None:
    maps = noise_maps(np.random.default_rng(7), 3, (6, 6))
    gt = np.array([[0.0, 0.0, 3.0, 3.0], NAN4, [1.0, 1.0, 6.0, 4.0]])
    best = sweep_best_iou(maps, gt)
    assert np.isnan(best[1]).all() and np.isfinite(best[[0, 2]]).all()
    assert np.array_equal(best[2], reference_best_iou(maps[2], gt[2]))


@pytest.mark.parametrize(
    ("maps", "match"),
    [(np.zeros((2, 3, 4, 5)), "B, H, W"), (np.array([[[0.0, math.nan]]]), "NaN")],
)
def test_sweep_rejects_bad_maps(maps: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sweep_boxes(maps)


def test_sweep_rejects_unsorted_thresholds() -> None:
    with pytest.raises(ValueError, match="increasing"):
        sweep_boxes(np.zeros((3, 3)), np.array([0.5, 0.2]))


def test_pure_python_kernel_agrees_with_compiled() -> None:
    kernel = accel_sweep.sweep_kernel
    if not hasattr(kernel, "py_func"):
        pytest.skip("numba is not installed: the kernel is plain Python already")
    rng = np.random.default_rng(8)
    maps = np.concatenate([quantised_maps(rng, 2, (5, 6)), noise_maps(rng, 2, (5, 6))])
    gt = random_gt(rng, 4, (5, 6))
    want_boxes, want_iou = accel_sweep.run_sweep(maps, THRESHOLDS, gt)
    boxes = np.zeros_like(want_boxes)
    iou = np.zeros_like(want_iou)
    kernel.py_func(maps, THRESHOLDS, gt, True, accel_sweep.GROUPS, boxes, iou)
    assert np.array_equal(boxes, want_boxes) and np.array_equal(iou, want_iou)


def test_module_without_numba_falls_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` raise ImportError
    # Fresh copies of accel/jit.py, accel/sweep.py and localization.py, the package's own left as they are.
    package = Path(L.__file__).parent
    for name, path in (
        ("accel.jit", "accel/jit.py"),
        ("accel.sweep", "accel/sweep.py"),
        ("localization", "localization.py"),
    ):
        spec = importlib.util.spec_from_file_location(f"CAM_Stanford_Cars.{name}", package / path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
    assert not sys.modules["CAM_Stanford_Cars.accel.jit"].HAVE_NUMBA
    plain = sys.modules["CAM_Stanford_Cars.accel.sweep"]
    assert not module.HAVE_NUMBA and not hasattr(plain.sweep_kernel, "py_func")
    rng = np.random.default_rng(9)
    maps = np.concatenate([quantised_maps(rng, 2, (4, 5)), smooth_maps(rng, 1, (4, 5))])
    gt = random_gt(rng, 3, (4, 5))
    assert np.array_equal(module.sweep_boxes(maps), sweep_boxes(maps))
    assert np.array_equal(module.sweep_best_iou(maps, gt), sweep_best_iou(maps, gt))
    # The kernel itself, run as plain Python, still agrees with its compiled self.
    for got, want in zip(plain.run_sweep(maps, THRESHOLDS, gt), accel_sweep.run_sweep(maps, THRESHOLDS, gt)):
        assert np.array_equal(got, want)


def test_neighbour_groups_table() -> None:
    groups = accel_sweep.GROUPS
    assert groups[0, 0] == 0 and groups[255, 0] == 1
    corners = 1 | 4 | 32 | 128  # the four diagonal neighbours alone touch no other
    assert groups[corners, 0] == 4
    assert groups[1 | 4, 0] == 2  # NW and NE are two columns apart
    assert groups[1 | 2 | 4, 0] == 1  # N joins them


# --------------------------------------------------------------------------------------------
# normalize_cams


def test_normalize_cams_range_shape_and_constant_map() -> None:
    cams = torch.randn(3, 1, 5, 7)
    cams[1] = 2.5  # constant map
    out = normalize_cams(cams, (20, 28))
    assert out.shape == (3, 20, 28) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()
    for i in (0, 2):
        assert out[i].min() == 0 and out[i].max() == 1
    up = F.interpolate(cams[[0]], size=(20, 28), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(out[0], (up - up.min()) / (up.max() - up.min()))


def test_normalize_cams_same_size_is_the_identity_on_unit_range_maps() -> None:
    cam = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    assert torch.equal(normalize_cams(cam, (2, 2)), cam)
    assert normalize_cams(cam.double(), (2, 2)).dtype == torch.float64


@pytest.mark.parametrize(
    ("cams", "size", "match"),
    [
        (torch.zeros(2, 3), (4, 4), "B, h, w"),
        (torch.zeros(1, 2, 3, 3), (4, 4), "B, h, w"),
        (torch.zeros(1, 3, 3), (0, 4), "size"),
        (torch.full((1, 3, 3), math.nan), (4, 4), "NaN"),
    ],
)
def test_normalize_cams_rejects_bad_input(cams: torch.Tensor, size: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalize_cams(cams, size)


def test_boxes_from_cams_block() -> None:
    cams = torch.zeros(2, 8, 8)
    cams[0, 2:5, 1:7] = 1.0
    cams[1] = 3.0  # constant: every pixel is 0 after normalisation, nothing reaches t = 0.2
    boxes = boxes_from_cams(cams, (8, 8))
    assert boxes.tolist() == [[1, 2, 7, 5], [0, 0, 0, 0]]


# --------------------------------------------------------------------------------------------
# The meter on a hand-made set (cams at image size, so upsampling is the identity)


def hand_made_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four 8x8 images, 6 classes; see the comments for what each one scores."""
    cams = torch.zeros(4, 8, 8)
    # A: a 4x4 block; GT is that block. Hit for every t > 0 (at t = 0 the box is the whole image).
    cams[0, 2:6, 2:6] = 1.0
    # B: a 2x8 strip (largest) and a 2x2 blob at 0.5 under a 3x3 GT: the largest never hits;
    # the blob (t in (0, 0.5]) has IoU 4/9: a V2 hit at IoU 0.3 only.
    cams[1, 0:2, :] = 1.0
    cams[1, 5:7, 5:7] = 0.5
    # C: no GT box: classified, not scored.
    cams[2] = torch.rand(8, 8)
    # D: a 4x4 block at 1 in a 5x5 block at 0.3 (float32(0.3) > 0.3); GT is the 5x5 block.
    # t <= 0.3: IoU 1; t > 0.3: IoU 16/25 = 0.64 (a hit at 0.5, not at 0.7); t = 0: 25/64.
    cams[3, 0:5, 0:5] = 0.3
    cams[3, 0:4, 0:4] = 1.0
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [5.0, 5.0, 8.0, 8.0], NAN4, [0.0, 0.0, 5.0, 5.0]])
    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # right
            [9.0, 0.0, 8.0, 3.0, 4.0, 5.0],  # wrong, and label 1 is the lowest: not in the top 5
            [0.0, 1.0, 9.0, 3.0, 4.0, 5.0],  # right
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # right
        ]
    )
    return logits, labels, cams, boxes


EXPECTED = {
    "top1": 3 / 4,
    "top5": 3 / 4,
    "gt_known_loc": 2 / 3,  # A and D hit at t = 0.2
    "top1_loc": 2 / 3,  # both are classified right
    "maxboxacc": 2 / 3,
    "maxboxacc_threshold": 0.01,  # the first t reaching 2/3 (t = 0 gives the whole image)
    "maxboxacc_v2_iou30": 3 / 3,  # A, B's blob, D for t in (0, 0.5]
    "maxboxacc_v2_iou50": 2 / 3,
    "maxboxacc_v2_iou70": 2 / 3,  # A and D for t in (0, 0.3]
    "maxboxacc_v2": (1 + 2 / 3 + 2 / 3) / 3,
    "n_images": 4,
    "n_with_box": 3,
    "n_without_box": 1,
}


def test_meter_on_hand_made_set() -> None:
    logits, labels, cams, boxes = hand_made_batch()
    assert torch.equal(normalize_cams(cams[[0, 1, 3]], (8, 8)), cams[[0, 1, 3]])  # identity, as assumed
    meter = LocalizationMeter()
    meter.update(logits, labels, cams, boxes, (8, 8))
    metrics = meter.compute()
    assert set(metrics) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert isinstance(metrics["n_images"], int) and isinstance(metrics["top1"], float)
    # Per-threshold counts, by hand: nothing at t = 0, A and D from t = 0.01 on.
    assert meter.hits.tolist() == [0] + [2] * 99
    assert meter.hits_v2[0].tolist() == [1] + [3] * 50 + [2] * 49  # IoU 0.3: D's 25/64 at t = 0
    assert meter.hits_v2[2].tolist() == [0] + [2] * 30 + [1] * 69  # IoU 0.7: D only up to 0.3


def test_meter_top1_loc_needs_the_right_class() -> None:
    logits, labels, cams, boxes = hand_made_batch()
    logits[0] = torch.tensor([0.0, 9.0, 2.0, 3.0, 4.0, 5.0])  # A now classified wrong
    meter = LocalizationMeter()
    meter.update(logits, labels, cams, boxes, (8, 8))
    metrics = meter.compute()
    assert metrics["gt_known_loc"] == pytest.approx(2 / 3) and metrics["top1_loc"] == pytest.approx(1 / 3)
    assert metrics["top1"] == pytest.approx(2 / 4)


def test_meter_batches_merge_and_state_round_trip() -> None:
    logits, labels, cams, boxes = hand_made_batch()
    whole = LocalizationMeter()
    whole.update(logits, labels, cams, boxes, (8, 8))
    first, second = LocalizationMeter(), LocalizationMeter()
    first.update(logits[:1], labels[:1], cams[:1], boxes[:1], (8, 8))
    second.update(logits[1:], labels[1:], cams[1:], boxes[1:], (8, 8))
    summed = first.state_tensor() + second.state_tensor()  # what all_reduce(SUM) does
    assert summed.dtype == torch.int64 and summed.shape == (4 + 5 * 100,)
    reduced = LocalizationMeter()
    reduced.load_state_tensor(summed)
    assert reduced.compute() == whole.compute()
    assert first.merge(second).compute() == whole.compute()
    with pytest.raises(ValueError, match="counts"):
        reduced.load_state_tensor(summed[:-1])


def test_meter_upsamples_small_cams() -> None:
    cams = torch.zeros(1, 13, 13)
    cams[0, 3:8, 4:9] = 1.0
    meter = LocalizationMeter()
    box = boxes_from_cams(cams, (224, 224))
    meter.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), cams, box, (224, 224))
    metrics = meter.compute()
    assert metrics["gt_known_loc"] == 1.0 and metrics["top1_loc"] == 1.0 and metrics["maxboxacc_v2_iou70"] == 1.0
    assert 60 < box[0, 0] < box[0, 2] < 170  # the block's columns 4..8 of 13, in 224 pixels


def test_meter_without_boxes_and_empty() -> None:
    meter = LocalizationMeter()
    metrics = meter.compute()
    assert metrics["n_images"] == 0 and math.isnan(metrics["top1"]) and math.isnan(metrics["maxboxacc"])
    meter.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), torch.rand(2, 3, 3), None, (6, 6))
    metrics = meter.compute()
    assert metrics["top1"] == 0.5 and metrics["n_without_box"] == 2 and metrics["n_with_box"] == 0
    assert math.isnan(metrics["gt_known_loc"]) and math.isnan(metrics["maxboxacc_v2"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda b: {**b, "labels": torch.tensor([0, 1, 2, 6])}, "labels"),
        (lambda b: {**b, "cams": b["cams"][:3]}, "cams"),
        (lambda b: {**b, "gt_boxes": b["gt_boxes"][:, :3]}, "gt_boxes"),
        (lambda b: {**b, "gt_boxes": b["gt_boxes"][[1, 0, 3, 3]].flip(1)}, "x2 < x1"),
        (lambda b: {**b, "logits": b["logits"][0]}, "logits"),
    ],
)
def test_meter_rejects_bad_input(change, match: str) -> None:
    logits, labels, cams, boxes = hand_made_batch()
    batch = change({"logits": logits, "labels": labels, "cams": cams, "gt_boxes": boxes})
    with pytest.raises(ValueError, match=match):
        LocalizationMeter().update(**batch, image_size=(8, 8))


def test_meter_custom_thresholds_need_the_loc_threshold() -> None:
    with pytest.raises(ValueError, match="loc_threshold"):
        LocalizationMeter(thresholds=np.array([0.1, 0.3]))
    meter = LocalizationMeter(thresholds=np.array([0.1, 0.2, 0.6]))
    logits, labels, cams, boxes = hand_made_batch()
    meter.update(logits, labels, cams, boxes, (8, 8))
    assert meter.compute()["maxboxacc_v2_iou70"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="thresholds"):
        LocalizationMeter().merge(meter)


def test_format_metrics_table() -> None:
    logits, labels, cams, boxes = hand_made_batch()
    meter = LocalizationMeter()
    meter.update(logits, labels, cams, boxes, (8, 8))
    table = format_metrics_table({**meter.compute(), "split": "test", "loss": 1.25})
    assert "GT-known Loc" in table and "66.67%" in table and "MaxBoxAccV2" in table
    assert "t=0.01" in table and "1 without" in table
    assert "split: test" in table and "loss: 1.2500" in table
    assert "n/a" in format_metrics_table(LocalizationMeter().compute())
