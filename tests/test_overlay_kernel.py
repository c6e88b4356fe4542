"""The fused CPU overlay kernel: torch's upsample bit for bit, and apply_cam's torch path's colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from CAM_Stanford_Cars import overlay
from CAM_Stanford_Cars.accel import overlay_kernel
from CAM_Stanford_Cars.accel.jit import HAVE_NUMBA
from CAM_Stanford_Cars.overlay import apply_cam

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="the overlay kernel needs numba")

# (map size, image size) pairs whose outputs are large enough for torch's generic bilinear kernel.
UPSAMPLES = [
    ((13, 13), (224, 224)),
    ((7, 9), (100, 333)),
    ((14, 14), (227, 227)),
    ((3, 2), (1000, 50)),
    ((1, 1), (96, 96)),
]


@pytest.fixture(autouse=True)
def fresh_probe() -> None:
    overlay_kernel.matches_torch.cache_clear()
    yield
    overlay_kernel.matches_torch.cache_clear()


def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlay, "_kernel_applies", lambda images, cams: False)


def count_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    blend = overlay_kernel.blend_overlays

    def counted(images, cams, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(images.shape[0])
        return blend(images, cams, *args, **kwargs)

    monkeypatch.setattr(overlay_kernel, "blend_overlays", counted)
    return calls


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="torch's fused multiply-add rounding is that of its x86-64 AVX2/AVX512 kernels",
)
def test_the_usual_overlay_shape_takes_the_kernel_here() -> None:
    assert overlay_kernel.matches_torch((13, 13), (224, 224))


@pytest.mark.parametrize("map_size, image_size", UPSAMPLES)
def test_upsample_equals_interpolate_bit_for_bit(map_size: tuple[int, int], image_size: tuple[int, int]) -> None:
    if not overlay_kernel.matches_torch(map_size, image_size):
        pytest.skip(f"this torch build's bilinear kernel rounds differently for {map_size} -> {image_size}")
    # Many maps with very different scales, not just the probe.
    generator = torch.Generator().manual_seed(1)
    cams = torch.randn(24, *map_size, generator=generator) * torch.logspace(-3, 4, 24).view(-1, 1, 1)
    expected = F.interpolate(cams[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_array_equal(overlay_kernel.upsample(cams.numpy(), image_size), expected.numpy())


def test_probe_refuses_other_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same taps with the source coordinate rounded twice (no fused multiply-add).
    def twice_rounded(in_size: int, out_size: int) -> overlay_kernel.Taps:
        scale = np.float32(in_size) / np.float32(out_size)
        source = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
        i0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        w1 = np.clip(source - i0, 0, 1).astype(np.float32)
        return i0, i0 + (i0 < in_size - 1), (1 - w1).astype(np.float32), w1

    monkeypatch.setattr(overlay_kernel, "bilinear_taps", twice_rounded)
    assert not overlay_kernel.matches_torch((13, 13), (224, 224))


def overlay_inputs(
    batch: int, image_size: tuple[int, int], map_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    images = torch.rand(batch, 3, *image_size, generator=generator) * 1.2 - 0.1  # a little outside [0, 1]
    cams = torch.randn(batch, *map_size, generator=generator) * torch.logspace(-2, 3, batch).view(-1, 1, 1)
    cams[0] = 3.0  # flat: the colour of the minimum everywhere
    cams[1] = cams[1] * 1e-40 + 5.0  # a range so small 256 / range overflows
    return images, cams


@pytest.mark.parametrize("map_size, image_size", UPSAMPLES)
@pytest.mark.parametrize("alpha, colormap", [(0.5, "jet"), (0.3, "inferno"), (1.0, "viridis"), (0.0, "jet")])
def test_kernel_gives_the_torch_paths_overlay(
    monkeypatch: pytest.MonkeyPatch, map_size: tuple[int, int], image_size: tuple[int, int], alpha: float, colormap: str
) -> None:
    if not overlay_kernel.matches_torch(map_size, image_size):
        pytest.skip(f"this torch build's bilinear kernel rounds differently for {map_size} -> {image_size}")
    images, cams = overlay_inputs(6, image_size, map_size)
    calls = count_kernel_calls(monkeypatch)
    out = apply_cam(images, cams, alpha=alpha, colormap=colormap)
    assert calls == [6]
    torch_path(monkeypatch)
    expected = apply_cam(images, cams, alpha=alpha, colormap=colormap)
    # The same colour-table entry for every pixel, and the blend rounded as torch rounds it.
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("threads", [1, 2, 3, 64])
def test_threads_and_batch_split_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    if not overlay_kernel.matches_torch((13, 13), (224, 224)):
        pytest.skip("this torch build's bilinear kernel rounds differently")
    images, cams = overlay_inputs(7, (224, 224), (13, 13))
    monkeypatch.setattr(overlay_kernel, "MIN_PIXELS_PER_THREAD", 1)  # split even this small batch
    calls = count_kernel_calls(monkeypatch)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one_thread = apply_cam(images, cams)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    torch.testing.assert_close(apply_cam(images, cams), one_thread, atol=0, rtol=0)
    assert calls == [7, 7]


def test_single_image_strided_input_and_half_precision_maps_take_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    if not overlay_kernel.matches_torch((13, 13), (224, 224)):
        pytest.skip("this torch build's bilinear kernel rounds differently")
    images, cams = overlay_inputs(3, (224, 224), (13, 13))
    calls = count_kernel_calls(monkeypatch)
    single = apply_cam(images[2], cams[2].half())
    transposed = apply_cam(images.transpose(2, 3), cams.transpose(1, 2))
    assert calls == [1, 3]
    torch_path(monkeypatch)
    torch.testing.assert_close(single, apply_cam(images[2], cams[2].half()), atol=0, rtol=0)
    torch.testing.assert_close(transposed, apply_cam(images.transpose(2, 3), cams.transpose(1, 2)), atol=0, rtol=0)


@pytest.mark.parametrize(
    "images_dtype, cams_dtype",
    [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float16, torch.float32)],
)
def test_other_dtypes_keep_the_torch_path(
    monkeypatch: pytest.MonkeyPatch, images_dtype: torch.dtype, cams_dtype: torch.dtype
) -> None:
    images, cams = overlay_inputs(2, (224, 224), (13, 13))
    calls = count_kernel_calls(monkeypatch)
    out = apply_cam(images.to(images_dtype), cams.to(cams_dtype))
    assert calls == [] and out.dtype == images_dtype


def test_without_numba_apply_cam_runs_its_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    images, cams = overlay_inputs(2, (224, 224), (13, 13))
    expected = apply_cam(images, cams)
    monkeypatch.setattr(overlay_kernel, "HAVE_NUMBA", False)
    calls = count_kernel_calls(monkeypatch)
    torch.testing.assert_close(apply_cam(images, cams), expected, atol=1e-6, rtol=0)
    assert calls == []
    with pytest.raises(RuntimeError, match="pip install numba"):
        overlay_kernel.upsample(cams.numpy(), (224, 224))


def test_a_map_whose_span_overflows_is_refused_not_read_out_of_bounds() -> None:
    images, cams = overlay_inputs(3, (224, 224), (13, 13))
    cams[2, 0, 0], cams[2, 12, 12] = -3e38, 3e38  # finite, but max - min overflows float32
    with pytest.raises(ValueError, match=r"cams\[2\] spans more than torch.float32"):
        apply_cam(images, cams)
    # Handed to the kernel anyway, every pixel still reads a colour from the table.
    table = np.linspace(0, 1, 3 * 257, dtype=np.float32).reshape(3, 257)
    out = np.full(images.shape, np.nan, dtype=np.float32)
    overlay_kernel.blend_overlays(images.numpy(), cams.numpy(), table, 0.5, out, threads=1)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(cams=a["cams"].astype(np.float64)), "cams must be a C-contiguous float32"),
        (lambda a: a.update(images=np.asfortranarray(a["images"])), "images must be a C-contiguous float32"),
        (lambda a: a.update(out=a["out"][:1]), "out"),
        (lambda a: a.update(cams=a["cams"][:1]), "cams"),
        (lambda a: a.update(table=a["table"][:, :256].copy()), "table"),
    ],
)
def test_blend_overlays_refuses_arrays_it_would_misread(change: object, match: str) -> None:
    images, cams = overlay_inputs(2, (150, 150), (13, 13))
    arrays = {
        "images": images.numpy(),
        "cams": cams.numpy(),
        "table": np.zeros((3, 257), np.float32),
        "out": np.zeros(images.shape, np.float32),
    }
    change(arrays)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match):
        overlay_kernel.blend_overlays(arrays["images"], arrays["cams"], arrays["table"], 0.5, arrays["out"], threads=1)
