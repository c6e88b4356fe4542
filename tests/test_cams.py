"""cams.py: the seven CAM methods against torchcam 0.5 (a test-only oracle) and closed forms, and RISE's
deletion/insertion against a model whose curves are known and against torchcam's metric."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from CAM_Stanford_Cars.cams import METHODS, compute_cams, deletion_insertion
from CAM_Stanford_Cars.model import ARCHS, AlexNetGAP, GAPNet, create_model

try:  # the oracle is a test dependency only: without it, the closed-form tests still run
    import torchcam.methods as tm
    import torchcam.metrics as torchcam_metrics
except ImportError:
    tm = torchcam_metrics = None
needs_torchcam = pytest.mark.skipif(tm is None, reason="torchcam (the test-only oracle) is not installed")


def _normalise(maps: Tensor) -> Tensor:
    """Min-max per map, as torchcam's ``_CAM._normalize`` (eps 1e-8)."""
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-8)


def _alexnet() -> AlexNetGAP:
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=3, cam_channels=32)
    # Head weights of order 1: gradients W / (h w) well above torchcam's eps=1e-8 in its denominators.
    nn.init.normal_(model.fc.weight, std=1.0)
    return model.eval()


def _resnet18() -> GAPNet:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3)
    nn.init.normal_(model.fc.weight, std=1.0)
    return model.eval()


# AlexNet at 105x105 has 5x5 features, an odd scale (21) to the image: bilinear upsampling then samples every feature
# pixel exactly, so Score-CAM's masks are the same whether normalised before (torchcam) or after (the paper) upsampling.
CASES = {"alexnet": (_alexnet, 105, lambda m: m.cam_conv), "resnet18": (_resnet18, 64, lambda m: m.features[-1])}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[GAPNet, Tensor, nn.Module]:
    build, size, layer = CASES[request.param]
    model = build()
    torch.manual_seed(1)
    return model, torch.rand(2, 3, size, size), layer(model)


def _torchcam(
    extractor_cls: type, model: GAPNet, layer: nn.Module, images: Tensor, **kwargs: object
) -> tuple[Tensor, list[int]]:
    """torchcam's normalised maps for the predicted classes; its hooks removed, also on failure."""
    extractor = extractor_cls(model, layer, input_shape=tuple(images.shape[1:]), **kwargs)
    try:
        scores = model(images.clone().requires_grad_(True))  # torchcam differentiates the hooked output
        classes = scores.argmax(dim=1).tolist()
        return extractor(classes, scores)[0].detach(), classes
    finally:
        extractor.remove_hooks()


def _no_hooks(model: nn.Module) -> bool:
    return not any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in model.modules()
    )


@needs_torchcam
@pytest.mark.parametrize(
    "method, extractor_cls, kwargs",
    [
        ("gradcam", "GradCAM", {}),
        ("xgradcam", "XGradCAM", {}),
        ("layercam", "LayerCAM", {}),
        # torchcam's SmoothGrad-CAM++ explains its last noisy copy; with noise of std 1e-6 that is the clean image.
        ("smoothgradcampp", "SmoothGradCAMpp", {"std": 1e-6, "num_samples": 1}),
    ],
)
def test_matches_torchcam(case: tuple, method: str, extractor_cls: str, kwargs: dict) -> None:
    model, images, layer = case
    expected, classes = _torchcam(getattr(tm, extractor_cls), model, layer, images, **kwargs)
    ours = compute_cams(model, images, method, n_samples=1)
    torch.testing.assert_close(_normalise(ours), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        compute_cams(model, images, method, classes, n_samples=1), ours
    )  # explicit classes: same maps
    assert _no_hooks(model)


@needs_torchcam
def test_gradcampp_paper_and_torchcam(case: tuple) -> None:
    """The paper's alpha = g^2 / (2 g^2 + sum_ab f g^3); torchcam's in-place division hits a copy, leaving alpha = g^2.
    With a GAP-linear head g = W[c] / (h w) is constant per channel, so both have closed forms."""
    model, images, layer = case
    expected, classes = _torchcam(tm.GradCAMpp, model, layer, images)
    features = model.forward_features(images).detach()
    h, w = features.shape[-2:]
    g = (model.fc.weight[classes] / (h * w)).detach()[:, :, None, None]  # (B, K, 1, 1)
    torchcam_weights = (g**2 * g.relu()).flatten(1) * h * w
    torchcam_maps = torch.einsum("bk,bkhw->bhw", torchcam_weights, features).relu()
    torch.testing.assert_close(_normalise(torchcam_maps), expected, atol=1e-4, rtol=0)

    paper_weights = (g.relu() / (2 + features.sum(dim=(2, 3), keepdim=True) * g)).flatten(1) * h * w
    ours = compute_cams(model, images, "gradcampp")
    torch.testing.assert_close(ours, torch.einsum("bk,bkhw->bhw", paper_weights, features).relu(), rtol=1e-4, atol=1e-6)
    # torchcam's SmoothGrad-CAM++ does divide: at (almost) no noise it is the paper's Grad-CAM++.
    smooth, _ = _torchcam(tm.SmoothGradCAMpp, model, layer, images, std=1e-6, num_samples=1)
    torch.testing.assert_close(_normalise(ours), smooth, atol=1e-4, rtol=0)


@needs_torchcam
def test_scorecam_masked_scores_match_torchcam(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same masked images as torchcam (one forward pass per channel); the weights differ by definition: the paper's
    class probability (softmax over classes) here, a softmax over channels of the class logit in torchcam."""
    model = _alexnet()
    images = torch.rand(2, 3, 105, 105, generator=torch.Generator().manual_seed(1))
    expected, classes = _torchcam(tm.ScoreCAM, model, model.cam_conv, images, batch_size=16)
    features = model.forward_features(images).detach()
    batches: list[Tensor] = []
    forward = model.forward

    def spy(x: Tensor, *args: object, **kwargs: object) -> Tensor:
        out = forward(x, *args, **kwargs)
        batches.append(out)
        return out

    monkeypatch.setattr(model, "forward", spy)
    ours = compute_cams(model, images, "scorecam", batch_size=24)
    n, k = features.shape[:2]
    assert [len(b) for b in batches] == [24, 24, 16]  # B * K = 64 masked images, batch_size at a time
    logits = torch.cat(batches).view(n, k, -1)
    target = logits[torch.arange(n), :, classes]  # (B, K): the class logit of each masked image
    probs = logits.softmax(dim=2)[torch.arange(n), :, classes]
    torch.testing.assert_close(ours, torch.einsum("bk,bkhw->bhw", probs, features).relu())
    torchcam_def = torch.einsum("bk,bkhw->bhw", target.softmax(dim=1), features).relu()
    torch.testing.assert_close(_normalise(torchcam_def), expected, atol=1e-4, rtol=0)


def test_cam_is_the_models_own(case: tuple) -> None:
    model, images, _ = case
    _, cam = model(images, True)
    assert torch.equal(compute_cams(model, images), cam)
    assert torch.equal(compute_cams(model, images, "cam", [2, 0]), model(images, True, [2, 0])[1])


def test_gap_head_identities(case: tuple) -> None:
    """dy_c/df_k = W[c, k] / (h w) for a GAP-linear head: Grad-CAM = XGrad-CAM = ReLU(CAM) / (h w), and the noise
    of SmoothGrad-CAM++ changes nothing (its gradients are those of the clean image)."""
    model, images, _ = case
    cam = compute_cams(model, images, "cam", 1)
    h, w = cam.shape[-2:]
    gradcam = compute_cams(model, images, "gradcam", 1)
    torch.testing.assert_close(gradcam, cam.relu() / (h * w), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(compute_cams(model, images, "xgradcam", 1), gradcam, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        compute_cams(model, images, "smoothgradcampp", 1, std=0.3, n_samples=2),
        compute_cams(model, images, "gradcampp", 1),
        rtol=1e-5,
        atol=1e-7,
    )


class KeptMass(nn.Module):
    """P(class 1) = mean of channel 0 / 2 (values in [0, 1]): deletion/insertion curves follow from the ranking."""

    num_classes = 2
    class_index = GAPNet.class_index

    def forward(self, x: Tensor) -> Tensor:
        p = x[:, 0].mean(dim=(1, 2)) / 2
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


@pytest.mark.parametrize("baseline", ["zeros", "blur"])
@pytest.mark.parametrize("steps", [16, 20])  # 16 divides the 256 pixels; 20 does not (the last points repeat 256)
def test_deletion_insertion_known_curves(baseline: str, steps: int) -> None:
    torch.manual_seed(0)
    images, maps = torch.rand(2, 3, 16, 16) * 0.9 + 0.05, torch.rand(2, 16, 16)  # maps at image size: no resampling
    model = KeptMass().train()
    result = deletion_insertion(model, images, maps, class_idx=1, steps=steps, baseline=baseline)
    assert model.training
    base = torch.zeros_like(images) if baseline == "zeros" else gaussian_blur(images, [11, 11], [5.0, 5.0])
    order = maps.flatten(1).argsort(dim=1, descending=True)
    top_x = torch.cat([torch.zeros(2, 1), images[:, 0].flatten(1).gather(1, order).cumsum(1)], dim=1)  # (B, N + 1)
    top_b = torch.cat([torch.zeros(2, 1), base[:, 0].flatten(1).gather(1, order).cumsum(1)], dim=1)
    stride = -(-256 // steps)
    counts = torch.tensor([min(i * stride, 256) for i in range(steps + 1)])
    deletion = (top_x[:, -1:] - top_x[:, counts] + top_b[:, counts]) / 512
    insertion = (top_b[:, -1:] - top_b[:, counts] + top_x[:, counts]) / 512
    torch.testing.assert_close(result["deletion_curve"], deletion)
    torch.testing.assert_close(result["insertion_curve"], insertion)
    torch.testing.assert_close(result["fractions"], counts / 256)
    torch.testing.assert_close(result["deletion_auc"], torch.trapezoid(deletion, counts / 256, dim=1))
    torch.testing.assert_close(result["insertion_auc"], torch.trapezoid(insertion, counts / 256, dim=1))


@needs_torchcam
@pytest.mark.parametrize("baseline", ["zeros", "blur"])
def test_deletion_insertion_matches_torchcam(baseline: str) -> None:
    model = _alexnet()
    images = torch.rand(
        2, 3, 64, 80, generator=torch.Generator().manual_seed(2)
    )  # 5120 pixels: 20 does not divide evenly
    extractor = tm.CAM(model, model.cam_conv, fc_layer=model.fc, input_shape=(3, 64, 80))
    try:
        scores = model(images)
        maps = extractor(scores.argmax(dim=1).tolist(), scores)[0]  # torchcam's own ranking, normalised maps
        blur = None if baseline == "zeros" else partial(gaussian_blur, kernel_size=[11, 11], sigma=[5.0, 5.0])
        metric = torchcam_metrics.DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1), baseline=blur)
        metric.update(images)
        expected = metric.summary()
    finally:
        extractor.remove_hooks()
    ours = deletion_insertion(model, images, maps, baseline=baseline)
    assert ours["deletion_curve"].shape == ours["insertion_curve"].shape == (2, 21)
    assert ours["deletion_auc"].mean().item() == pytest.approx(expected["deletion_auc"], abs=1e-5)
    assert ours["insertion_auc"].mean().item() == pytest.approx(expected["insertion_auc"], abs=1e-5)


def _narrowed(model: GAPNet, channels: int = 4) -> GAPNet:
    """The backbone's first ``channels`` feature maps and a new head: Score-CAM in a few forward passes, not K."""
    full = model.forward_features
    model.forward_features = lambda x, **kwargs: full(x, **kwargs)[:, :channels]
    model.fc, model.cam_channels = nn.Linear(channels, model.num_classes), channels
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_on_every_backbone(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3).train()
    model.features[0].eval()  # modes are restored module by module, not by model.train()
    images = torch.rand(1, 3, 64, 64)
    h = {"alexnet": 3}.get(arch, 4)
    with torch.inference_mode():  # gradients of the head still work under inference mode
        assert compute_cams(model, images, "gradcampp").shape == (1, h, h)
    for method in sorted(METHODS, key=lambda name: name == "scorecam"):  # Score-CAM last, on 4 of the K channels
        model = _narrowed(model) if method == "scorecam" else model
        maps = compute_cams(model, images, method, batch_size=2, n_samples=2)
        assert maps.shape == (1, h, h) and maps.dtype == torch.float32 and maps.isfinite().all(), method
        assert method == "cam" or (maps >= 0).all(), method
        assert model.training and _no_hooks(model) and all(p.grad is None for p in model.parameters()), method
        assert not model.features[0].training


def test_state_restored_after_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _alexnet().train()
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="class_idx"):
        compute_cams(model, images, "gradcam", [0, 3])  # refused after the forward pass, in eval mode
    assert model.training and all(m.training for m in model.modules()) and _no_hooks(model)
    calls = 0
    forward = model.forward

    def failing(x: Tensor, *args: object, **kwargs: object) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("out of memory, say")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        compute_cams(model, images, "scorecam", batch_size=8)  # fails on its second batch of masked images
    assert model.training and _no_hooks(model) and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="method"):
        compute_cams(model, images, "gradcam++")
    with pytest.raises(ValueError, match="batch_size"):
        compute_cams(model, images, "scorecam", batch_size=0)
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion(model, images, torch.rand(2, 3, 3), baseline="noise")


def test_eval_mode_maps_in_train_mode() -> None:
    """Batch norm in train mode would explain a different model: every method runs in eval mode."""
    model = create_model("resnet18", num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64)
    expected = compute_cams(model, images, "layercam")
    assert torch.equal(compute_cams(model.train(), images, "layercam"), expected) and model.training


def test_images_are_checked_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The masked, noisy and perturbed copies of checked images run unchecked: one check per public call."""
    model = _alexnet()
    images = torch.rand(2, 3, 64, 64)
    checked: list[tuple[int, ...]] = []
    check_images = model.check_images

    def counting(x: Tensor) -> None:
        checked.append(tuple(x.shape))
        check_images(x)

    monkeypatch.setattr(model, "check_images", counting)
    compute_cams(model, images, "scorecam", batch_size=16)  # 4 passes of masked images
    compute_cams(model, images, "smoothgradcampp", n_samples=3)  # 3 passes of noisy images
    deletion_insertion(model, images, torch.rand(2, 3, 3), steps=4)  # 6 passes
    assert checked == [(2, 3, 64, 64)] * 3
    with pytest.raises(TypeError, match="from_numpy"):
        deletion_insertion(model, images.numpy(), torch.rand(2, 3, 3))


# ------------------------------------------------------------------------------------------ Finer-CAM


def _resized(maps: Tensor, size: int) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: min-max (eps 1e-7), then ``cv2.resize`` (bilinear)."""
    cv2 = pytest.importorskip("cv2")
    out = []
    for cam in maps.detach().numpy():
        cam = cam - cam.min()
        out.append(cv2.resize(cam / (1e-7 + cam.max()), (size, size)))
    return np.stack(out)


@pytest.mark.parametrize(
    ("classes", "options"),
    [(10, {}), (10, {"class_idx": 2, "finer_k": 2, "finer_alpha": 0.5}), (3, {"class_idx": [0, 1, 2]})],
)
def test_finercam_agrees_with_pytorch_grad_cam(classes: int, options: dict) -> None:
    """The authors' reference (pytorch-grad-cam's FinerCAM over GradCAM): a backward pass through the whole network
    with hooks, against the head's gradient alone; with 3 classes, fewer look-alikes than K."""
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=classes, cam_channels=16).eval()
    nn.init.normal_(model.fc.weight, std=1.0)
    images = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    ours = compute_cams(model, images, "finercam", **options)
    assert all(p.grad is None for p in model.parameters())  # the head's gradient only, no backward pass
    assert not torch.allclose(ours, compute_cams(model, images, "gradcam", class_idx=options.get("class_idx")))
    finer = grad_cam.FinerCAM(model, [model.cam_conv])
    if isinstance(options.get("class_idx"), list):  # theirs takes one class for all: one call per image
        theirs = np.concatenate([finer(images[i : i + 1], target_idx=c) for i, c in enumerate(options["class_idx"])])
    else:
        kwargs = {"target_idx": options.get("class_idx"), "alpha": options.get("finer_alpha", 1.0)}
        if "finer_k" in options:
            kwargs["comparison_categories"] = list(range(1, 1 + options["finer_k"]))
        theirs = finer(images, **kwargs)
    assert np.abs(_resized(ours, 96) - theirs).max() < 0.02


def test_finercam_with_no_look_alike_weight_is_gradcam() -> None:
    """alpha = 0 leaves ``y_c`` times the weights' share (1 - eps): Grad-CAM, to float precision."""
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=5, cam_channels=8).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    finer = compute_cams(model, images, "finercam", finer_alpha=0.0)
    torch.testing.assert_close(finer, compute_cams(model, images, "gradcam"), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="finer_k must be a positive"):
        compute_cams(model, images, "finercam", finer_k=0)
    with pytest.raises(ValueError, match="finer_alpha must be a finite number"):
        compute_cams(model, images, "finercam", finer_alpha=float("nan"))
