"""Every backbone behind the one registry: the CAM identity, pretrained files, checkpoints and the command lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision import models

from CAM_Stanford_Cars import visualize
from CAM_Stanford_Cars.checkpoint import CheckpointError
from CAM_Stanford_Cars.main import main
from CAM_Stanford_Cars.model import (
    ARCHS,
    BACKBONES,
    PretrainedWeightsError,
    create_model,
    load_checkpoint,
)

# torchvision's builder of each backbone's ImageNet network, the file name its weights have, and a tensor the file
# must land in (a backbone-side key, and where create_model keeps it).
PLANTED = {
    "alexnet": (models.alexnet, "alexnet-owt-7be5be79.pth", "features.8.weight", "features.8.weight"),
    "vgg16": (None, "vgg16-397923af.pth", "features.28.weight", "features.28.weight"),
    "resnet18": (models.resnet18, "resnet18-f37072fd.pth", "layer4.1.conv2.weight", "features.7.1.conv2.weight"),
    "resnet50": (models.resnet50, "resnet50-0676ba61.pth", "layer4.2.conv3.weight", "features.7.2.conv3.weight"),
}


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """Random weights with the keys and shapes of torchvision's ImageNet file for ``arch``."""
    torch.manual_seed(7)
    if arch in ("alexnet", "vgg16"):  # the convolutions only: the classifier (most of the file) is never read
        features = models.alexnet().features if arch == "alexnet" else models.vgg.make_layers(models.vgg.cfgs["D"])
        return {f"features.{k}": v for k, v in features.state_dict().items()}
    return PLANTED[arch][0]().state_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_logits_are_the_average_of_the_cam_plus_the_bias(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(x)
        logits, cam = model(x, return_cam=True)
        maps = model.class_activation_maps(features)  # (B, C, h, w)
    expected = 13 if arch == "alexnet" else 14
    assert features.shape[-2:] == cam.shape[-2:] == (expected, expected) and cam.shape[0] == 2
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + model.fc.bias, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cam, maps[torch.arange(2), logits.argmax(1)], rtol=1e-4, atol=1e-4)  # two einsum orders


@pytest.mark.parametrize("arch", ARCHS)
def test_a_planted_imagenet_file_loads_into_the_backbone_and_a_wrong_one_is_named(arch: str, tmp_path: Path) -> None:
    _, file_name, file_key, model_key = PLANTED[arch]
    state = imagenet_state(arch)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(state, hub / file_name)
    model = create_model(arch, num_classes=3, pretrained=True)
    assert torch.equal(model.state_dict()[model_key], state[file_key])
    # Another network's weights under this one's name: one sentence naming the file and the backbone.
    other = "resnet18" if arch != "resnet18" else "alexnet"
    torch.save(imagenet_state(other), tmp_path / "wrong.pth")
    with pytest.raises(PretrainedWeightsError, match=rf"wrong\.pth.*do not fit {model.title}'s convolutional layers"):
        create_model(arch, num_classes=3, pretrained=tmp_path / "wrong.pth")


def test_resnet50_takes_either_of_torchvisions_imagenet_files() -> None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    assert [w.url.rsplit("/", 1)[1] for w in create_model("resnet50", 2).weights] == [
        "resnet50-11ad3fa6.pth",
        "resnet50-0676ba61.pth",
    ]
    state = imagenet_state("resnet50")
    torch.save(state, hub / "resnet50-0676ba61.pth")  # V1 only: no download is tried
    assert torch.equal(create_model("resnet50", 2, pretrained=True).features[0].weight, state["conv1.weight"])


def test_an_unknown_architecture_is_one_clear_line(tmp_path: Path) -> None:
    model = create_model("resnet18", 2)
    from CAM_Stanford_Cars.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "x.pt", model)
    checkpoint = torch.load(tmp_path / "x.pt", weights_only=True)
    assert checkpoint["arch"] == "resnet18_gap" and checkpoint["model_args"] == {"num_classes": 2, "depth": 18}
    checkpoint["arch"] = "vit_gap"
    torch.save(checkpoint, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match=r"unknown architecture 'vit_gap'; this version knows .*'resnet50_gap'"):
        load_checkpoint(tmp_path / "y.pt")
    with pytest.raises(ValueError, match="--arch must be one of alexnet, vgg16, resnet18, resnet50"):
        create_model("vit", 2)
    assert len(BACKBONES) == len(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_epoch_from_the_command_line_gives_a_checkpoint_that_loads_and_draws(
    arch: str, synthetic_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    code = main(
        [
            "--arch",
            arch,
            "--root_datasets_dir",
            str(synthetic_root),
            "--checkpoints_dir",
            str(run_dir),
            "--n_epochs",
            "1",
            "--batch_size",
            "4",
            "--image_size",
            "64",
            "--pretrained",
            "false",
            "--device",
            "cpu",
            "--num_workers",
            "0",
            "--progress",
            "false",
            "--car_type",
            "Sedan",
            "--car_brand",
            "BMW",
            "--car_production_year",
            "2012",
        ]
    )
    assert code == 0
    model, checkpoint = load_checkpoint(run_dir / "best.pt")
    assert (
        checkpoint["arch"] == f"{arch}_gap"
        and checkpoint["args"]["arch"] == arch
        and model.title.lower().startswith(arch[:3])
    )
    assert visualize.main([str(run_dir / "best.pt"), "--n", "2", "--out", str(tmp_path / "cams.png")]) == 0
    quiet = ["--device", "cpu", "--num_workers", "0", "--progress", "false"]
    assert main(["--evaluate", str(run_dir / "best.pt"), "--save_maps", str(tmp_path / "maps"), *quiet]) == 0
    assert (tmp_path / "cams.png").stat().st_size > 0
    # The saved maps, scored from their files, give --evaluate's numbers.
    evaluated = json.loads((run_dir / "best_test_metrics.json").read_text())
    maps = ["--score_maps", str(tmp_path / "maps" / "cam"), "--root_datasets_dir", str(synthetic_root)]
    filters = ["--car_type", "Sedan", "--car_brand", "BMW", "--car_production_year", "2012", "--image_size", "64"]
    assert main([*maps, *filters, "--threshold", str(evaluated["cam_threshold"]), *quiet[2:]]) == 0
    scored = json.loads((tmp_path / "maps" / "cam" / "metrics.json").read_text())
    for key in ("gt_known_loc_at_cam_threshold", "maxboxacc", "maxboxacc_v2"):
        assert scored[key] == evaluated[key], key
