"""Overlays (apply_cam) and figures (visualize_cam)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import matplotlib.legend
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

import CAM_Stanford_Cars.figures as figures
import CAM_Stanford_Cars.overlay as overlay
import CAM_Stanford_Cars.visualize as visualize
from CAM_Stanford_Cars.figures import plot_training_curves
from CAM_Stanford_Cars.overlay import apply_cam, colormap_lut
from CAM_Stanford_Cars.visualize import visualize_cam

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# matplotlib's jet at 0, 1/3, 2/3 and 1, from its segment data: red (0,0) (.35,0) (.66,1) (.89,1)
# (1,.5); green (0,0) (.125,0) (.375,1) (.64,1) (.91,0); blue (0,.5) (.11,1) (.34,1) (.65,0).
# At 1/3: green (1/3 - .125) / .25 = 5/6, blue 1. At 2/3: red 1, green 1 - (2/3 - .64) / .27.
JET_0 = (0.0, 0.0, 0.5)
JET_THIRD = (0.0, 5.0 / 6.0, 1.0)
JET_TWO_THIRDS = (1.0, 1.0 - (2.0 / 3.0 - 0.64) / 0.27, 0.0)
JET_1 = (0.5, 0.0, 0.0)


def reference_apply_cam(images: torch.Tensor, cams: torch.Tensor, alpha: float, colormap: str) -> torch.Tensor:
    """The overlay as one plain chain of whole-batch ops, colours straight from matplotlib."""
    up = F.interpolate(cams[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    low = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - low
    scale = torch.where(span > 0, 256.0 / span, torch.zeros_like(span))
    index = ((up - low) * scale).floor().clamp(max=255).long()[:, 0]  # (B, H, W)
    lut = torch.tensor(matplotlib.colormaps[colormap](np.arange(256))[:, :3], dtype=torch.float32)
    heat = lut[index].permute(0, 3, 1, 2)  # (B, 3, H, W)
    return ((1 - alpha) * images + alpha * heat).clamp(0, 1)


# ------------------------------------------------------------------------------- apply_cam


@pytest.mark.parametrize(
    "colormap, colours",
    [
        ("jet", [JET_0, JET_THIRD, JET_TWO_THIRDS, JET_1]),
        ("gray", [(0.0,) * 3, (1 / 3,) * 3, (2 / 3,) * 3, (1.0,) * 3]),
    ],
)
def test_apply_cam_pixel_values_on_2x2(colormap: str, colours: list[tuple[float, float, float]]) -> None:
    # At equal size bilinear upsampling is the identity; [0, 1, 2, 3] normalises to
    # [0, 1/3, 2/3, 1], i.e. colour-table entries floor(256 x) -> 0, 85, 170, 255 (256 -> 255).
    image = torch.full((1, 3, 2, 2), 0.2)
    image[0, :, 1, 1] = torch.tensor([1.0, 0.4, 0.0])
    cam = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out = apply_cam(image, cam, alpha=0.5, colormap=colormap)

    heat = torch.tensor(colours).T.reshape(3, 2, 2)  # pixels in row-major order
    expected = 0.5 * image[0] + 0.5 * heat
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0)
    # The same colours matplotlib itself gives those normalised values.
    mpl = matplotlib.colormaps[colormap](np.array([0.0, 1 / 3, 2 / 3, 1.0]))[:, :3]
    torch.testing.assert_close(heat, torch.tensor(mpl, dtype=torch.float32).T.reshape(3, 2, 2), atol=1e-6, rtol=0)


def test_apply_cam_alpha_weights_image_and_heat() -> None:
    torch.manual_seed(0)
    images, cams = torch.rand(2, 3, 5, 6), torch.randn(2, 3, 3)
    torch.testing.assert_close(apply_cam(images, cams, alpha=0.0), images, atol=1e-7, rtol=0)
    heat = apply_cam(images, cams, alpha=1.0)
    lut = colormap_lut("jet")
    # Every pixel is exactly one table colour, whatever the image was.
    distance = (heat.permute(0, 2, 3, 1).reshape(-1, 1, 3) - lut[None]).abs().amax(-1).amin(-1)
    assert distance.max() < 1e-6
    torch.testing.assert_close(apply_cam(torch.zeros_like(images), cams, alpha=1.0), heat)


@pytest.mark.parametrize("value", [0.0, 7.5, -3.0])
@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_constant_map_is_zeros_not_nan(value: float, alpha: float) -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 20)
    out = apply_cam(images, torch.full((3, 4, 5), value), alpha=alpha)
    assert not torch.isnan(out).any()
    lut0 = colormap_lut("jet")[0].view(1, 3, 1, 1)
    torch.testing.assert_close(out, (1 - alpha) * images + alpha * lut0, atol=1e-6, rtol=0)


def test_map_with_a_vanishing_range_is_treated_as_flat() -> None:
    # 256 / span overflows to inf for a subnormal span; that must not turn into NaN pixels.
    cams = torch.zeros(1, 3, 3)
    cams[0, 0, 0] = 1e-44
    out = apply_cam(torch.full((1, 3, 4, 4), 0.5), cams)
    assert torch.isfinite(out).all()
    expected = (0.25 + 0.5 * colormap_lut("jet")[0].view(1, 3, 1, 1)).expand(1, 3, 4, 4)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_constant_map_beside_varying_maps_does_not_leak() -> None:
    torch.manual_seed(0)
    images, cams = torch.rand(3, 3, 8, 8), torch.randn(3, 4, 4)
    cams[1] = 2.0
    out = apply_cam(images, cams)
    lut0 = colormap_lut("jet")[0].view(3, 1, 1)
    torch.testing.assert_close(out[1], 0.5 * images[1] + 0.5 * lut0, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[[0, 2]], apply_cam(images[[0, 2]], cams[[0, 2]]))


def test_cam_forms_agree() -> None:
    torch.manual_seed(0)
    images, cams = torch.rand(4, 3, 30, 40), torch.randn(4, 13, 13)
    batched = apply_cam(images, cams)
    torch.testing.assert_close(apply_cam(images, cams[:, None]), batched, atol=0, rtol=0)
    single = apply_cam(images[2], cams[2])
    assert single.shape == (3, 30, 40)
    torch.testing.assert_close(single, batched[2], atol=0, rtol=0)
    torch.testing.assert_close(apply_cam(images[2], cams[2:3]), batched[2], atol=0, rtol=0)


@pytest.mark.parametrize(
    "batch, image_size, cam_size",
    [
        (1, (13, 13), (13, 13)),
        (11, (224, 224), (13, 13)),
        (7, (37, 53), (7, 9)),
        (5, (20, 30), (13, 13)),
        (6, (48, 48), (3, 5)),
    ],
)
@pytest.mark.parametrize("alpha, colormap", [(0.5, "jet"), (0.35, "inferno")])
@pytest.mark.parametrize("torch_path", [False, True])
def test_apply_cam_matches_the_reference(
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
    image_size: tuple[int, int],
    cam_size: tuple[int, int],
    alpha: float,
    colormap: str,
    torch_path: bool,
) -> None:
    if torch_path:  # the plain torch path even where the compiled kernel would take the batch
        monkeypatch.setattr(overlay, "_kernel_applies", lambda images, cams: False)
    generator = torch.Generator().manual_seed(batch)
    images = torch.rand(batch, 3, *image_size, generator=generator)
    # Different scales and offsets per map, so a map normalised against a neighbour shows.
    cams = torch.randn(batch, *cam_size, generator=generator) * torch.linspace(0.1, 50, batch).view(-1, 1, 1)
    cams = cams + torch.linspace(-20, 20, batch).view(-1, 1, 1)
    out = apply_cam(images, cams, alpha=alpha, colormap=colormap)
    expected = reference_apply_cam(images, cams, alpha, colormap)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_range_and_no_autograd(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    images = (torch.rand(2, 3, 12, 12) * 1.4 - 0.2).to(dtype)  # a little outside [0, 1]
    cams = torch.randn(2, 4, 4, dtype=dtype, requires_grad=True)
    out = apply_cam(images, cams)
    assert out.dtype == dtype
    assert out.device == images.device
    assert not out.requires_grad
    assert out.min() >= 0 and out.max() <= 1
    expected = reference_apply_cam(images.float(), cams.detach().float(), 0.5, "jet")
    low_precision = dtype in (torch.float16, torch.bfloat16)
    torch.testing.assert_close(out.float(), expected, atol=2e-2 if low_precision else 1e-6, rtol=0)


def test_model_cam_that_requires_grad_is_accepted() -> None:
    images = torch.rand(2, 3, 16, 16)
    weights = torch.randn(2, 5, 5, requires_grad=True)
    cams = weights * 2  # part of an autograd graph, as a CAM computed without detach() is
    out = apply_cam(images, cams)
    torch.testing.assert_close(out, apply_cam(images, cams.detach()))


def test_empty_batch() -> None:
    out = apply_cam(torch.rand(0, 3, 8, 8), torch.rand(0, 2, 2))
    assert out.shape == (0, 3, 8, 8)


def test_colormap_lut_is_cached_per_name_and_device() -> None:
    lut = colormap_lut("jet")
    assert lut.shape == (256, 3) and lut.dtype == torch.float32 and lut.device.type == "cpu"
    assert colormap_lut("jet", "cpu") is lut
    assert colormap_lut("viridis") is not lut
    jet = matplotlib.colormaps["jet"](np.arange(256))[:, :3]
    torch.testing.assert_close(lut, torch.tensor(jet, dtype=torch.float32))


def test_colormap_object_is_accepted() -> None:
    torch.manual_seed(0)
    images, cams = torch.rand(2, 3, 9, 9), torch.randn(2, 3, 3)
    by_object = apply_cam(images, cams, colormap=matplotlib.colormaps["magma"])
    torch.testing.assert_close(by_object, apply_cam(images, cams, colormap="magma"), atol=0, rtol=0)


@cuda_only
def test_apply_cam_on_cuda_stays_on_cuda() -> None:
    torch.manual_seed(0)
    images, cams = torch.rand(6, 3, 224, 224), torch.randn(6, 13, 13)
    out = apply_cam(images.cuda(), cams.cuda())
    assert out.device.type == "cuda"
    assert out.shape == images.shape
    # Bilinear weights may round differently on the GPU and move a rare pixel across a colour boundary.
    diff = (out.cpu() - apply_cam(images, cams)).abs()
    assert (diff > 1e-5).float().mean() < 1e-3
    assert diff.max() < 0.05
    # Maps computed on the CPU are brought to the images' device.
    assert apply_cam(images.cuda(), cams).device.type == "cuda"
    assert colormap_lut("jet", "cuda").device.type == "cuda"


@pytest.mark.parametrize(
    "images, cams, kwargs, match",
    [
        (torch.rand(2, 3, 8, 8, 1), torch.rand(2, 4, 4), {}, r"images must be \(B, 3, H, W\).*\(2, 3, 8, 8, 1\)"),
        (torch.rand(8, 8), torch.rand(4, 4), {}, r"images must be .*\(8, 8\)"),
        (torch.rand(2, 4, 8, 8), torch.rand(2, 4, 4), {}, r"3 \(RGB\) channels.*\(2, 4, 8, 8\)"),
        (torch.rand(2, 3, 8, 8), torch.rand(3, 4, 4), {}, r"2 images but 3 cams"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 5, 4, 4), {}, r"\(B, 1, h, w\).*\(2, 5, 4, 4\)"),
        (torch.rand(2, 3, 8, 8), torch.rand(4, 4), {}, r"cams must be \(B, h, w\).*\(4, 4\)"),
        (torch.rand(3, 8, 8), torch.rand(2, 4, 4), {}, r"single map .*\(2, 4, 4\)"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4), {"alpha": 1.5}, r"alpha .*\[0, 1\].*1\.5"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4), {"alpha": -0.1}, r"alpha .*-0\.1"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4), {"alpha": "0.5"}, r"alpha .*'0\.5'"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4), {"colormap": "jett"}, r"unknown colormap 'jett'.*'jet'"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), torch.rand(2, 4, 4), {}, r"uint8.*/ 255"),
        (torch.rand(2, 3, 8, 8), torch.randint(0, 3, (2, 4, 4)), {}, r"cams must be a floating point.*int64"),
        (torch.rand(2, 3, 8, 8), torch.tensor([[[0.0, math.nan]]]).expand(2, 2, 2), {}, r"NaN or infinite"),
        (np.zeros((2, 3, 8, 8)), torch.rand(2, 4, 4), {}, r"torch tensors, got ndarray"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 0, 4), {}, r"cams must be .*non-empty.*\(2, 0, 4\)"),
        (torch.rand(2, 3, 0, 8), torch.rand(2, 4, 4), {}, r"images must be .*non-empty.*\(2, 3, 0, 8\)"),
    ],
)
def test_apply_cam_rejects_bad_input(images: object, cams: object, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_cam(images, cams, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- visualize_cam

CLASSES = ["BMW M3 Coupe 2012", "Audi A5 Coupe 2012", "Chevrolet Silverado 2500HD Regular Cab 2012"]


def batch_of(n: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(n)
    images = torch.rand(n, 3, size, size, generator=generator)
    return images, apply_cam(images, torch.randn(n, 5, 5, generator=generator))


def image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_images()]


def title_text(ax: object) -> str:
    return ax.get_title().replace("\n", " ")  # type: ignore[attr-defined]


@pytest.mark.parametrize("n, colorbar", [(1, True), (3, True), (5, False), (9, True)])
def test_figure_has_an_image_and_an_overlay_per_sample(n: int, colorbar: bool) -> None:
    images, blended = batch_of(n)
    fig = visualize_cam(images, blended, [CLASSES[i % 3] for i in range(n)], colorbar=colorbar)
    assert isinstance(fig, Figure)
    panels = image_axes(fig)
    assert len(panels) == 2 * n
    assert len(fig.axes) == 2 * n + (1 if colorbar else 0)
    for i in range(n):
        for panel, shown in ((panels[2 * i], images[i]), (panels[2 * i + 1], blended[i])):
            np.testing.assert_allclose(panel.get_images()[0].get_array(), shown.permute(1, 2, 0).numpy(), atol=1e-6)


def test_titles_name_classes_and_mark_right_and_wrong() -> None:
    images, blended = batch_of(3)
    fig = visualize_cam(images, blended, [CLASSES[0], CLASSES[2], CLASSES[1]], true_classes=CLASSES)
    panels = image_axes(fig)
    for i, (true, pred, right) in enumerate(
        [(CLASSES[0], CLASSES[0], True), (CLASSES[1], CLASSES[2], False), (CLASSES[2], CLASSES[1], False)]
    ):
        image_title, overlay_title = title_text(panels[2 * i]), title_text(panels[2 * i + 1])
        assert true in image_title and "true" in image_title
        assert pred in overlay_title and "pred" in overlay_title
        assert (visualize.RIGHT_MARK in overlay_title) == right
        assert (visualize.WRONG_MARK in overlay_title) == (not right)
        colour = matplotlib.colors.to_hex(panels[2 * i + 1].title.get_color())
        assert colour == (visualize.RIGHT_COLOR if right else visualize.WRONG_COLOR)


def test_titles_without_true_classes_have_no_marks() -> None:
    images, blended = batch_of(2)
    fig = visualize_cam(images, blended, CLASSES[:2])
    for i, ax in enumerate(image_axes(fig)[1::2]):
        title = title_text(ax)
        assert CLASSES[i] in title
        assert visualize.RIGHT_MARK not in title and visualize.WRONG_MARK not in title


@pytest.mark.parametrize(
    "predicted, true, class_names, expected",
    [
        ([2, 0], [2, 1], CLASSES, [CLASSES[2], CLASSES[0]]),
        (torch.tensor([1, 1]), torch.tensor([1, 0]), {0: "a", 1: "b"}, ["b", "b"]),
        ([3, 4], None, None, ["class 3", "class 4"]),
    ],
)
def test_integer_classes_are_named(predicted: object, true: object, class_names: object, expected: list[str]) -> None:
    images, blended = batch_of(2)
    fig = visualize_cam(images, blended, predicted, true, class_names=class_names)  # type: ignore[arg-type]
    overlays = image_axes(fig)[1::2]
    for ax, name in zip(overlays, expected):
        assert name in title_text(ax)
    if true is not None:
        assert visualize.RIGHT_MARK in title_text(overlays[0]) and visualize.WRONG_MARK in title_text(overlays[1])


def test_scores_are_shown_as_percentages() -> None:
    images, blended = batch_of(2)
    fig = visualize_cam(images, blended, CLASSES[:2], scores=torch.tensor([0.873, 0.05]))
    overlays = image_axes(fig)[1::2]
    assert "(87%)" in title_text(overlays[0]) and "(5%)" in title_text(overlays[1])


def box_patches(ax: object, label: str) -> list[Rectangle]:
    patches = ax.patches  # type: ignore[attr-defined]
    return [p for p in patches if isinstance(p, Rectangle) and p.get_label() == label]


@pytest.mark.parametrize("as_pair", [False, True])
def test_boxes_are_drawn_on_both_panels_and_nan_boxes_skipped(as_pair: bool) -> None:
    images, blended = batch_of(3, size=32)
    predicted = torch.tensor([[2.0, 3.0, 20.0, 30.0], [0.0, 0.0, 32.0, 32.0], [5.0, 5.0, 6.0, 6.0]])
    true = torch.tensor([[4.0, 4.0, 28.0, 31.0], [math.nan] * 4, [1.0, 2.0, 3.0, 4.0]])
    boxes = (predicted, true) if as_pair else {"predicted": predicted, "true": true}
    fig = visualize_cam(images, blended, CLASSES, true_classes=CLASSES, boxes=boxes)
    panels = image_axes(fig)
    for i in range(3):
        for ax in panels[2 * i : 2 * i + 2]:
            (pred_patch,) = box_patches(ax, "predicted box")
            # Pixel-edge boxes on pixel-centred imshow: the box's x1 = c is drawn at c - 0.5.
            x1, y1, x2, y2 = predicted[i].tolist()
            assert pred_patch.get_xy() == pytest.approx((x1 - 0.5, y1 - 0.5))
            assert (pred_patch.get_width(), pred_patch.get_height()) == pytest.approx((x2 - x1, y2 - y1))
            assert len(box_patches(ax, "true box")) == (0 if i == 1 else 1)
            # The view stays on the image even where a box touches its border.
            assert ax.get_xlim() == pytest.approx((-0.5, 31.5))
    (legend,) = fig.findobj(matplotlib.legend.Legend)
    assert [t.get_text() for t in legend.get_texts()] == ["predicted box", "true box"]


def test_only_true_boxes() -> None:
    images, blended = batch_of(1)
    fig = visualize_cam(images, blended, CLASSES[:1], boxes={"true": torch.tensor([1.0, 1.0, 5.0, 5.0])})
    for ax in image_axes(fig):
        assert len(box_patches(ax, "true box")) == 1 and not box_patches(ax, "predicted box")


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".JPG", b"\xff\xd8")])
def test_save_writes_a_readable_file_atomically(tmp_path: Path, suffix: str, magic: bytes) -> None:
    images, blended = batch_of(2)
    path = tmp_path / "new" / "dir" / f"cams{suffix}"
    fig = visualize_cam(images, blended, CLASSES[:2], true_classes=CLASSES[:2], save_path=path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[: len(magic)] == magic
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    if suffix == ".png":
        with Image.open(path) as img:
            img.load()
            assert img.width > 100 and img.height > 50


def test_failed_save_leaves_neither_temp_nor_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cams.png"
    path.write_bytes(b"old figure")

    def broken_savefig(self: Figure, fname: object, **kwargs: object) -> None:
        if hasattr(fname, "write"):
            fname.write(b"half a fig")
        else:
            Path(str(fname)).write_bytes(b"half a fig")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    images, blended = batch_of(1)
    with pytest.raises(OSError, match="disk full"):
        visualize_cam(images, blended, CLASSES[:1], save_path=path)
    assert path.read_bytes() == b"old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["cams.png"]


def test_unknown_suffix_is_rejected_before_writing(tmp_path: Path) -> None:
    images, blended = batch_of(1)
    with pytest.raises(ValueError, match=r"cams\.xyz.*\.png"):
        visualize_cam(images, blended, CLASSES[:1], save_path=tmp_path / "cams.xyz")
    assert list(tmp_path.iterdir()) == []


def test_file_only_backend_keeps_no_figures_open() -> None:
    assert matplotlib.get_backend().lower() == "agg"
    before = plt.get_fignums()
    images, blended = batch_of(2)
    for _ in range(3):
        visualize_cam(images, blended, CLASSES[:2])
    assert plt.get_fignums() == before


def test_displayable_backend_gets_a_pyplot_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a notebook sees: the inline backend shows every pyplot figure made in the cell.
    monkeypatch.setattr(figures.matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    images, blended = batch_of(1)
    fig = visualize_cam(images, blended, CLASSES[:1])
    try:
        assert fig.number in plt.get_fignums()
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"predicted_classes": CLASSES[:1]}, r"predicted_classes has 1 entries for 2 images"),
        ({"true_classes": CLASSES}, r"true_classes has 3 entries for 2 images"),
        ({"predicted_classes": [0, 7], "class_names": CLASSES}, r"class index 7"),
        ({"predicted_classes": [0.5, 1.5]}, r"names or integer indices, got 0\.5"),
        ({"boxes": {"predicted": torch.zeros(2, 5)}}, r"predicted boxes must be \(2, 4\).*\(2, 5\)"),
        ({"boxes": {"gt": torch.zeros(2, 4)}}, r"unexpected \['gt'\]"),
        ({"boxes": torch.zeros(2, 4)}, r"boxes must be"),
        ({"blended_images": torch.rand(2, 3, 12, 12)}, r"same shape.*\(2, 3, 24, 24\) and \(2, 3, 12, 12\)"),
        ({"samples_per_row": 0}, r"samples_per_row must be a positive integer, got 0"),
        ({"scores": [0.5]}, r"scores has 1 entries"),
        (
            {"images": torch.rand(0, 3, 24, 24), "blended_images": torch.rand(0, 3, 24, 24), "predicted_classes": []},
            r"empty batch",
        ),
        # -1 would name the last class, and a wrong label would be marked right.
        (
            {"predicted_classes": [0, -1], "true_classes": [0, 2], "class_names": CLASSES},
            r"predicted_classes holds class index -1; class indices are 0 or more",
        ),
        ({"true_classes": torch.tensor([0, -1])}, r"true_classes holds class index -1"),
        ({"predicted_classes": [0, -2]}, r"class index -2"),
        ({"dpi": 0}, r"dpi must be a positive number .* got 0"),
        ({"dpi": -72}, r"dpi must be a positive number .* got -72"),
        ({"dpi": math.nan}, r"dpi must be a positive number .* got nan"),
        ({"dpi": "100"}, r"dpi must be a positive number .* got '100'"),
    ],
)
def test_visualize_cam_rejects_bad_input(kwargs: dict, match: str) -> None:
    images, blended = batch_of(2)
    arguments = {"images": images, "blended_images": blended, "predicted_classes": CLASSES[:2], **kwargs}
    with pytest.raises(ValueError, match=match):
        visualize_cam(**arguments)


def test_bad_dpi_or_folder_fails_before_drawing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[object] = []
    for module in (visualize, figures):
        monkeypatch.setattr(module, "new_figure", lambda *args, **kwargs: drawn.append(args))
    images, blended = batch_of(1)
    with pytest.raises(ValueError, match="dpi"):
        visualize_cam(images, blended, CLASSES[:1], dpi=0, save_path=tmp_path / "cams.png")
    with pytest.raises(ValueError, match="dpi"):
        plot_training_curves([{"epoch": 1, "train_loss": 1.0}], dpi=-1)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError) as caught:
        visualize_cam(images, blended, CLASSES[:1], save_path=out)
    assert (
        str(caught.value) == f"save_path {str(out)!r} is a folder; give a file name such as {str(out / 'cams.png')!r}"
    )
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"file\.txt' is a file, not a folder; choose another path"):
        plot_training_curves([{"epoch": 1, "train_loss": 1.0}], save_path=blocker / "curves.png")
    assert drawn == [] and list(out.iterdir()) == [] and blocker.read_text() == "x"


def test_seed_readme_snippet_on_model_output(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Visualizing cams" loop body, with a batch of one from a DataLoader."""
    from CAM_Stanford_Cars.model import AlexNetGAP

    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=3).eval()
    class_to_idx = dict(enumerate(CLASSES))
    image_visualize = torch.rand(1, 3, 224, 224)

    output, cam = model(image_visualize, True)
    predicted_classes = [class_to_idx[element] for element in torch.argmax(output, 1).tolist()]
    cam = cam.detach()
    blended_images = apply_cam(image_visualize, cam)
    visualize_cam(image_visualize, blended_images, predicted_classes)

    fig = visualize_cam(image_visualize, blended_images, predicted_classes)
    assert blended_images.shape == image_visualize.shape
    assert len(image_axes(fig)) == 2
    assert predicted_classes[0] in title_text(image_axes(fig)[1])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_cam_structure_script_draws_the_same_png_twice(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "tools" / "draw_cam_structure.py"
    spec = importlib.util.spec_from_file_location("draw_cam_structure", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    first, second = module.draw(tmp_path / "a.png"), module.draw(tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as img:
        assert img.format == "PNG" and img.size == (1950, 1140)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


# ------------------------------------------------------------------------------- plot_training_curves

HISTORY = [
    {
        "epoch": 1,
        "train_loss": 2.0,
        "train_top1": 0.2,
        "val_loss": 1.8,
        "val_top1": 0.3,
        "val_top5": 0.7,
        "val_gt_known_loc": 0.4,
        "val_maxboxacc": 0.5,
        "best": True,
        "lr": 0.01,
    },
    {
        "epoch": 2,
        "train_loss": 1.5,
        "train_top1": 0.4,
        "val_loss": 1.9,
        "val_top1": 0.25,
        "val_top5": 0.6,
        "val_gt_known_loc": 0.45,
        "val_maxboxacc": 0.55,
        "best": False,
        "lr": 0.01,
    },
    {"epoch": 3, "train_loss": 1.2, "train_top1": 0.5, "best": False, "lr": 0.001},  # no validation this epoch
]


def test_training_curves_plot_each_metric_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    fig = plot_training_curves(list(reversed(HISTORY)), save_path=path)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "classification", "localisation"]
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["train loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines["train loss"].get_ydata(), [2.0, 1.5, 1.2])
    np.testing.assert_array_equal(lines["val top-1"].get_ydata(), [0.3, 0.25, math.nan])
    assert {"val top-5", "val GT-known Loc", "val MaxBoxAcc", "best (epoch 1)"} <= set(lines)
    assert "val Top-1 Loc" not in lines and "test loss" not in lines
    with Image.open(path) as img:
        assert img.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_training_curves_never_register_with_pyplot(monkeypatch: pytest.MonkeyPatch) -> None:
    # Called once per epoch by the training loop: even in a notebook nothing may pile up.
    monkeypatch.setattr(figures.matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    before = plt.get_fignums()
    fig = plot_training_curves(HISTORY[:1])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "classification", "localisation"]
    assert plt.get_fignums() == before


@pytest.mark.parametrize(
    "history, match",
    [
        ([], r"history is empty"),
        ([{"train_loss": 1.0}], r"'epoch'"),
        ([{"epoch": 1, "lr": 0.1}], r"no '<split>_<metric>'"),
    ],
)
def test_training_curves_reject_unusable_history(history: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_training_curves(history)


# ------------------------------------------------------------------------------- the command line


def test_render_cam_grid_resolves_the_device_by_name(
    cam_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    check_save_path = visualize.check_save_path
    monkeypatch.setattr(visualize, "check_save_path", lambda path, name: checked.append(name) or check_save_path(path))
    out = visualize.render_cam_grid(cam_checkpoint, n=2, out=tmp_path / "cams.png", device="auto")
    with Image.open(out) as image:
        assert image.format == "PNG"
    assert checked == ["out"]  # once, before any work; the drawing and the save trust it


@pytest.mark.parametrize(
    "device, message",
    [
        ("bogus", r"--device must be auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
        pytest.param(
            "cuda",
            r"--device cuda was asked for but is not available here; use --device auto or cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_cli_device_problems_are_not_a_bad_checkpoint(
    cam_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    status = visualize.main([str(cam_checkpoint), "--device", device, "--out", str(tmp_path / "cams.png")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert re.search(message, err) and "checkpoint" not in err


def test_cli_out_that_is_a_folder_names_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    status = visualize.main([str(tmp_path / "never_read.pt"), "--out", str(outdir)])
    err = capsys.readouterr().err
    assert status == 2
    hint = f"give a file name such as {str(outdir / 'cams.png')!r}"
    assert err == f"visualize.py: error: --out {str(outdir)!r} is a folder; {hint}\n"
    status = visualize.main([str(tmp_path / "never_read.pt"), "--out", str(tmp_path / "cams.xyz")])
    assert status == 2 and "of --out " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["best.pt", "--n", "0"], "argument --n: expected a positive whole number, got '0'"),
        (["best.pt", "--threshold", "1.5"], "argument --threshold: expected a number in [0, 1)"),
        (["best.pt", "--split", "val"], "argument --split: invalid choice: 'val'"),
        ([], "the following arguments are required: checkpoint"),
    ],
)
def test_cli_argument_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        visualize.main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.startswith("visualize.py: error: ") and message in err and err.count("\n") == 1 and "usage:" not in err


def test_missing_data_points_at_the_visualize_root_flag(
    cam_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from CAM_Stanford_Cars.checkpoint import save_checkpoint
    from CAM_Stanford_Cars.model import load_checkpoint

    model, saved = load_checkpoint(cam_checkpoint)
    extra = {key: saved[key] for key in ("class_names", "image_size", "car_type", "car_brand", "car_production_year")}
    moved = save_checkpoint(tmp_path / "moved.pt", model, args={"root": "stanford_cars_dataset"}, **extra)
    monkeypatch.chdir(tmp_path)
    status = visualize.main([str(moved), "--out", str(tmp_path / "cams.png")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "No Stanford Cars found under 'stanford_cars_dataset'" in err
    assert "is the data folder recorded in" in err and "relative to the folder training ran in" in err
    assert "--root DIR" in err and "--download_datasets" not in err
    # A folder given on the command line gets the same advice, without the note on recorded paths.
    status = visualize.main([str(moved), "--root", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "cams.png")])
    err = capsys.readouterr().err
    assert status == 2 and "--root DIR" in err and "recorded" not in err and "--download_datasets" not in err


def test_apply_cam_leaves_torchs_thread_count_as_it_was() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = apply_cam(torch.rand(3, 3, 32, 32), torch.rand(3, 4, 4))
        assert out.shape == (3, 3, 32, 32)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
