"""torchvision's ImageNet ResNet classifier as it is, behind the GAPNet interface: its logits, its exact CAM, its
class names and its weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.transforms.functional import normalize

from CAM_Stanford_Cars.model import (
    IMAGENET_ARCHS,
    GAPNet,
    ImageNetResNet,
    PretrainedWeightsError,
    imagenet_model,
)

FILE_NAME = "resnet18-f37072fd.pth"  # torchvision's name for ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def resnet18_state() -> dict[str, torch.Tensor]:
    """A seeded random torchvision ResNet-18 whose batch norms have non-trivial running statistics, so the eval-mode
    forward pass differs from a freshly initialised one."""
    torch.manual_seed(0)
    reference = models.resnet18()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return reference.state_dict()


@pytest.fixture
def hub_weights(resnet18_state: dict[str, torch.Tensor]) -> Path:
    """``resnet18_state`` saved where torchvision keeps its ImageNet weights (the test's own torch hub dir)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME
    path.parent.mkdir(parents=True)
    torch.save(resnet18_state, path)
    return path


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs a test asked torch.hub to download; each fails as it would with no network."""
    asked: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        asked.append(url)
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return asked


def test_the_logits_are_torchvisions_and_the_cam_is_exact(
    resnet18_state: dict[str, torch.Tensor], hub_weights: Path, no_download: list[str]
) -> None:
    model, classes = imagenet_model("resnet18")
    assert no_download == []  # the cached file was used: nothing was fetched
    assert isinstance(model, GAPNet) and not model.training
    reference = models.resnet18().eval()
    reference.load_state_dict(resnet18_state)
    transform = models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(normalize(x, transform.mean, transform.std))
        logits, cam = model(x, return_cam=True)
        features = model.forward_features(x)
        maps = model.class_activation_maps(features)  # (B, 1000, h, w)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert features.shape == (2, 512, 2, 2)  # layer4 at torchvision's stride: 64 / 32
    # GAP is linear: each class's map averaged over positions is its logit less fc's bias.
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits - model.fc.bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cam, maps[torch.arange(2), logits.argmax(dim=1)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.forward_head(features), logits)
    assert model.cam(features, torch.tensor([3, 999])).shape == (2, 2, 2)
    assert model.class_index(999, 2, torch.device("cpu")).tolist() == [999, 999]
    assert len(classes) == 1000 and classes[0] == "tench" and classes[-1] == "toilet tissue"


def test_a_local_file_with_torchvisions_name_needs_no_hub_cache(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path, no_download: list[str]
) -> None:
    local = tmp_path / FILE_NAME
    torch.save(resnet18_state, local)
    model, _ = imagenet_model("resnet18", local)
    assert no_download == [] and not (Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME).exists()
    assert torch.equal(model.fc.weight, resnet18_state["fc.weight"])
    assert torch.equal(model.features[0].weight, resnet18_state["conv1.weight"])


def test_missing_weights_are_one_line_naming_the_file_and_where_to_put_it(
    tmp_path: Path, no_download: list[str]
) -> None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    with pytest.raises(PretrainedWeightsError) as caught:
        imagenet_model("resnet18")
    message = str(caught.value)
    assert no_download == [models.ResNet18_Weights.IMAGENET1K_V1.url] and no_download[0].endswith(FILE_NAME)
    assert "\n" not in message and FILE_NAME in message and f"put it in {hub}" in message
    assert "Temporary failure in name resolution" in message and "--pretrained" not in message
    with pytest.raises(PretrainedWeightsError, match=rf"'{tmp_path / FILE_NAME}' does not exist") as caught:
        imagenet_model("resnet18", tmp_path / FILE_NAME)
    assert "\n" not in str(caught.value) and len(no_download) == 1  # a file given is never downloaded


def test_weights_without_the_classifier_do_not_fit(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path, no_download: list[str]
) -> None:
    backbone_only = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in resnet18_state.items() if not k.startswith("fc.")}, backbone_only)
    with pytest.raises(PretrainedWeightsError) as caught:
        imagenet_model("resnet18", backbone_only)
    message = str(caught.value)
    fit = "backbone.pth' do not fit ResNet-18's layers: fc.weight and fc.bias are not those of a Linear(512, 1000)"
    assert fit in message
    assert "\n" not in message and "train from scratch" not in message


def test_only_the_known_classifiers_and_resnet50_keeps_its_own_stride() -> None:
    with pytest.raises(ValueError, match="must be one of resnet18, resnet50, got 'vgg16'"):
        imagenet_model("vgg16")
    assert IMAGENET_ARCHS == ("resnet18", "resnet50")
    model = ImageNetResNet(depth=50)
    assert model.features[7][0].conv2.stride == (2, 2) and model.features[7][0].downsample[0].stride == (2, 2)
    assert (model.cam_channels, model.fc.out_features, model.new_layers()) == (2048, 1000, [])
    assert model.weights[0].url.endswith("resnet50-11ad3fa6.pth")
