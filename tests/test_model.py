"""The GAP-AlexNet, its CAM, pretrained weights and checkpoints."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import alexnet

from CAM_Stanford_Cars.model import (
    AlexNetGAP,
    CheckpointError,
    PretrainedWeightsError,
    load_checkpoint,
    save_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model() -> AlexNetGAP:
    torch.manual_seed(0)
    net = AlexNetGAP(num_classes=5, cam_channels=32)
    # Larger head weights than the init, so classes differ clearly in their maps.
    torch.nn.init.normal_(net.fc.weight, std=0.5)
    torch.nn.init.normal_(net.fc.bias, std=0.5)
    return net.eval()


def loop_cam(model: AlexNetGAP, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The CAM written as the paper's sum over channels, one sample at a time."""
    features = model.forward_features(x)
    maps = []
    for b in range(x.shape[0]):
        total = torch.zeros(features.shape[-2:])
        for k in range(features.shape[1]):
            total = total + model.fc.weight[classes[b], k] * features[b, k]
        maps.append(total)
    return torch.stack(maps)


@pytest.mark.parametrize("size, expected", [((224, 224), (13, 13)), ((64, 64), (3, 3)), ((160, 288), (9, 17))])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(model: AlexNetGAP, size: tuple[int, int], expected: tuple[int, int], batch: int) -> None:
    x = torch.rand(batch, 3, *size)
    with torch.no_grad():
        logits, cam = model(x, True)
        all_maps = model.class_activation_maps(model.forward_features(x))
    assert logits.shape == (batch, 5)
    assert cam.shape == (batch, *expected)
    assert all_maps.shape == (batch, 5, *expected)


def test_cam_is_the_weighted_sum_of_channels_for_predicted_and_chosen_classes(model: AlexNetGAP) -> None:
    x = torch.rand(4, 3, 96, 96)
    with torch.no_grad():
        logits, cam_pred = model(x, return_cam=True)
        predicted = logits.argmax(1)
        torch.testing.assert_close(cam_pred, loop_cam(model, x, predicted), rtol=1e-4, atol=1e-4)
        chosen = torch.tensor([0, 1, 2, 3])
        _, cam_chosen = model(x, return_cam=True, class_idx=chosen)
        torch.testing.assert_close(cam_chosen, loop_cam(model, x, chosen), rtol=1e-4, atol=1e-4)
        _, cam_int = model(x, return_cam=True, class_idx=2)
        torch.testing.assert_close(cam_int, loop_cam(model, x, torch.full((4,), 2)), rtol=1e-4, atol=1e-4)
        _, cam_list = model(x, return_cam=True, class_idx=[0, 1, 2, 3])
        torch.testing.assert_close(cam_list, cam_chosen)


def test_changing_the_class_changes_the_map(model: AlexNetGAP) -> None:
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        _, cam0 = model(x, True, 0)
        _, cam1 = model(x, True, 1)
    assert not torch.allclose(cam0, cam1)


def test_gap_of_the_cam_plus_bias_is_the_logit(model: AlexNetGAP) -> None:
    x = torch.rand(3, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
        maps = model.class_activation_maps(model.forward_features(x))  # (B, C, h, w)
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + model.fc.bias, logits, rtol=1e-4, atol=1e-4)


def test_cam_matches_torchcam(model: AlexNetGAP) -> None:
    torchcam = pytest.importorskip("torchcam.methods")
    x = torch.rand(2, 3, 160, 160)
    extractor = torchcam.CAM(model, target_layer="cam_conv", fc_layer="fc", input_shape=(3, 160, 160))
    try:
        for cls in (1, 4):
            logits = model(x)
            (reference,) = extractor(cls, logits, normalized=False)
            with torch.no_grad():
                _, ours = model(x, True, cls)
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    finally:
        extractor.remove_hooks()


def test_train_and_eval_mode_give_the_same_cam(model: AlexNetGAP) -> None:
    # No dropout or batch norm: the CAM must not depend on the mode.
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        _, cam_eval = model.eval()(x, True, 1)
        _, cam_train = model.train()(x, True, 1)
    torch.testing.assert_close(cam_eval, cam_train)


def test_the_model_normalises_its_input(model: AlexNetGAP) -> None:
    x = torch.rand(1, 3, 64, 64)
    manual = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.cam_conv(model.features(manual))
        torch.testing.assert_close(model.forward_features(x), expected)
    assert {"mean", "std"} <= set(model.state_dict())


@pytest.mark.parametrize(
    "class_idx, message",
    [(7, r"\[0, 4\]"), (-1, r"\[0, 4\]"), ([0, 1, 2], "one class per sample"), (torch.tensor([0.5, 1.0]), "integers")],
)
def test_bad_class_idx_is_refused(model: AlexNetGAP, class_idx: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(torch.rand(2, 3, 64, 64), True, class_idx)


def test_bad_inputs_are_refused(model: AlexNetGAP) -> None:
    with pytest.raises(ValueError, match="at least 64x64"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="num_classes"):
        AlexNetGAP(num_classes=0)


def test_pretrained_from_a_local_file(fake_alexnet_weights: Path) -> None:
    net = AlexNetGAP(num_classes=3, pretrained=fake_alexnet_weights)
    reference = alexnet()
    reference.load_state_dict(torch.load(fake_alexnet_weights, weights_only=True))
    for index in (0, 3, 6, 8, 10):
        torch.testing.assert_close(net.features[index].weight, reference.features[index].weight)


def test_pretrained_from_the_hub_cache_needs_no_network(fake_alexnet_weights: Path) -> None:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "alexnet-owt-7be5be79.pth").write_bytes(fake_alexnet_weights.read_bytes())
    net = AlexNetGAP(num_classes=3, pretrained=True)
    expected = torch.load(fake_alexnet_weights, weights_only=True)["features.0.weight"]
    torch.testing.assert_close(net.features[0].weight, expected)


def test_pretrained_without_weights_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="--pretrained false"):
        AlexNetGAP(num_classes=3, pretrained=True)  # the network is blocked in tests
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        AlexNetGAP(num_classes=3, pretrained=tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(PretrainedWeightsError, match="do not fit"):
        AlexNetGAP(num_classes=3, pretrained=wrong)


FILTERS = {"car_type": "Sedan", "car_brand": ["BMW", "Audi"], "car_production_year": 2012}


def test_checkpoint_round_trip(model: AlexNetGAP, tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "run" / "last.pt", model, class_names=list("abcde"), image_size=224, epoch=3,
        metrics={"val_top1": 0.5}, args={"root": tmp_path}, **FILTERS,
    )
    x = torch.rand(2, 3, 96, 96)
    restored, checkpoint = load_checkpoint(path)
    assert not restored.training
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    for key, value in FILTERS.items():
        assert checkpoint[key] == value
    assert checkpoint["class_names"] == list("abcde")
    assert checkpoint["args"] == {"root": str(tmp_path)}
    assert checkpoint["epoch"] == 3 and checkpoint["format_version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not 0600


def test_checkpoint_of_a_wrapped_model_has_no_module_prefix(model: AlexNetGAP, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", torch.nn.DataParallel(model))
    state = torch.load(path, weights_only=True)["model"]
    assert not any(key.startswith("module.") for key in state)


def test_checkpoint_refuses_non_plain_state(model: AlexNetGAP, tmp_path: Path) -> None:
    import argparse

    with pytest.raises(TypeError, match="vars\\(args\\)"):
        save_checkpoint(tmp_path / "c.pt", model, args=argparse.Namespace(a=1))
    assert not any(tmp_path.iterdir())


def test_failed_save_keeps_the_previous_checkpoint(model: AlexNetGAP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "c.pt", model, epoch=1)
    good = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, epoch=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch " + os.environ.get("EXPLOIT_MARK", "/tmp/never"),))


def test_bad_checkpoint_files_get_clear_errors(model: AlexNetGAP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")

    good = save_checkpoint(tmp_path / "good.pt", model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*not a readable checkpoint"):
        load_checkpoint(truncated)

    noise = tmp_path / "noise.pt"
    noise.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="noise.pt"):
        load_checkpoint(noise)

    mark = tmp_path / "exploited"
    monkeypatch.setenv("EXPLOIT_MARK", str(mark))
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Exploit()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt.*Nothing in it was run"):
        load_checkpoint(evil)
    assert not mark.exists()

    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a CAM_Stanford_Cars checkpoint"):
        load_checkpoint(plain)

    newer = tmp_path / "newer.pt"
    payload = torch.load(good, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, newer)
    with pytest.raises(CheckpointError, match="newer.*upgrade"):
        load_checkpoint(newer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_checkpoint_loads_on_cpu(model: AlexNetGAP, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "gpu.pt", model.cuda())
    restored, _ = load_checkpoint(path)
    assert next(restored.parameters()).device.type == "cpu"


IMPORT_CHECK = (
    "from CAM_Stanford_Cars.model import load_checkpoint, AlexNetGAP; "
    "import CAM_Stanford_Cars, pathlib; print(pathlib.Path(CAM_Stanford_Cars.__file__).parent)"
)


def test_package_imports_from_another_directory(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == REPO_ROOT


def test_package_imports_from_a_clone_beside_a_notebook(tmp_path: Path) -> None:
    """A clone named CAM_Stanford_Cars whose parent is on sys.path imports without installing."""
    clone = tmp_path / "CAM_Stanford_Cars"
    clone.symlink_to(REPO_ROOT, target_is_directory=True)
    # The path entry comes before the editable install's finder, so the clone is what imports.
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); " + IMPORT_CHECK.replace(".parent)", ".parent.absolute())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == clone
