"""The GAP-AlexNet, its CAM, pretrained weights and checkpoints."""

from __future__ import annotations

import ast
import errno
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import alexnet

from CAM_Stanford_Cars.atomic_files import atomic_file
from CAM_Stanford_Cars.checkpoint import CheckpointError, save_checkpoint
from CAM_Stanford_Cars.model import AlexNetGAP, PretrainedWeightsError, load_checkpoint

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
    manual = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
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


@pytest.mark.parametrize(
    "images, error, message",
    [
        (
            np.zeros((1, 3, 64, 64), np.float32),
            TypeError,
            r"torch\.Tensor of shape \(B, 3, H, W\), got ndarray; use torch\.from_numpy",
        ),
        ([[[[0.0] * 64] * 64] * 3], TypeError, r"got list; use torch\.as_tensor"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ValueError, r"torch\.uint8.*images\.float\(\) / 255"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int64), ValueError, r"torch\.int64.*images\.float\(\) / 255"),
        (
            torch.zeros(1, 3, 64, 64, dtype=torch.float64),
            ValueError,
            r"float64.*weights are torch\.float32.*images\.float\(\)",
        ),
    ],
)
def test_images_of_the_wrong_type_get_a_hint(model: AlexNetGAP, images: object, error: type, message: str) -> None:
    for call in (model, model.forward_features):
        with pytest.raises(error, match=message):
            call(images)


def test_half_precision_images_run_on_a_float32_model(model: AlexNetGAP) -> None:
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x.bfloat16()), model(x.bfloat16().float()))


@pytest.mark.parametrize(
    "class_idx, message",
    [
        ("2", "string '2'.*class_to_idx"),
        (2**70, r"\[0, 4\], got 1180591620717411303424"),
        ([0, 2**70], r"\[0, 4\] per sample"),
    ],
)
def test_class_idx_of_the_wrong_kind_is_refused(model: AlexNetGAP, class_idx: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(torch.rand(2, 3, 64, 64), True, class_idx)


def test_cam_under_bf16_autocast_is_float32(model: AlexNetGAP) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cam = model(x, True)
        features = model.forward_features(x)
        all_maps = model.class_activation_maps(features)
    assert logits.dtype == torch.bfloat16 and features.dtype == torch.bfloat16
    assert cam.dtype == torch.float32 and all_maps.dtype == torch.float32
    assert cam.numpy().shape == (2, 3, 3)
    # The same bf16 features, contracted in float32.
    expected = torch.einsum("bk,bkhw->bhw", model.fc.weight[logits.argmax(1)].detach(), features.float())
    torch.testing.assert_close(cam, expected)


def test_class_activation_maps_checks_its_arguments(model: AlexNetGAP) -> None:
    with torch.no_grad():
        features = model.forward_features(torch.rand(2, 3, 64, 64))  # (2, 32, 3, 3)
        torch.testing.assert_close(
            model.class_activation_maps(features, 3), model.class_activation_maps(features)[:, 3]
        )
    with pytest.raises(ValueError, match=r"\[0, 4\], got 5"):
        model.class_activation_maps(features, 5)
    with pytest.raises(ValueError, match=r"\[0, 4\], got \[0, -1\]"):
        model.class_activation_maps(features, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"features must be \(B, 32, h, w\).*got \(2, 16, 3, 3\)"):
        model.class_activation_maps(features[:, :16])


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


def test_pretrained_file_that_is_not_torch_gets_one_line(tmp_path: Path) -> None:
    png = tmp_path / "car.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(PretrainedWeightsError) as caught:
        AlexNetGAP(num_classes=3, pretrained=png)
    message = str(caught.value)
    assert "'" + str(png) + "' is not a torch weights file" in message
    assert "\n" not in message and "file an issue" not in message
    with pytest.raises(PretrainedWeightsError, match="is a folder; pass the weights file"):
        AlexNetGAP(num_classes=3, pretrained=tmp_path)


def test_damaged_weights_in_the_hub_cache_get_one_line() -> None:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "alexnet-owt-7be5be79.pth").write_bytes(b"\x80\x02)R.")  # a legacy header, then junk
    with pytest.raises(PretrainedWeightsError, match="alexnet-owt-7be5be79.pth.*damaged.*Delete it") as caught:
        AlexNetGAP(num_classes=3, pretrained=True)
    assert "\n" not in str(caught.value)


FILTERS = {"car_type": "Sedan", "car_brand": ["BMW", "Audi"], "car_production_year": 2012}


def test_checkpoint_round_trip(model: AlexNetGAP, tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "run" / "last.pt",
        model,
        class_names=list("abcde"),
        image_size=224,
        epoch=3,
        metrics={"val_top1": 0.5},
        args={"root": tmp_path},
        **FILTERS,
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


def test_failed_save_keeps_the_previous_checkpoint(
    model: AlexNetGAP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_bad_checkpoint_files_get_clear_errors(
    model: AlexNetGAP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_unknown_architecture_gets_one_clear_line(model: AlexNetGAP, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["arch"] = "resnet_gap"
    torch.save(payload, path)
    with pytest.raises(
        CheckpointError, match="unknown architecture 'resnet_gap'; this version knows 'alexnet_gap'"
    ) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def _defined_names(body: list[ast.stmt]) -> set[str]:
    """The names a module's top-level statements (and the branches of its top-level ``if``/``try``) define."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
        elif isinstance(node, ast.If | ast.Try):
            branches = [node.body, node.orelse, *(handler.body for handler in getattr(node, "handlers", []))]
            names |= set().union(*(_defined_names(branch) for branch in branches))
    return names


def test_each_module_advertises_only_the_names_it_defines() -> None:
    """One home per name: ``__all__`` lists what a module defines, never what it imports (the package's face,
    ``__init__.py``, aside, and ``apply_cam``, which the seed imports from ``visualize``)."""
    modules = [
        path
        for path in (*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("*/*.py"))
        if path.name != "__init__.py" and (path.parent == REPO_ROOT or (path.parent / "__init__.py").is_file())
    ]
    assert REPO_ROOT / "model.py" in modules and REPO_ROOT / "data" / "names.py" in modules
    borrowed = {}
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        listed = next(
            (
                [element.value for element in node.value.elts]
                for node in tree.body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            ),
            [],
        )
        if names := sorted(set(listed) - _defined_names(tree.body)):
            borrowed[str(path.relative_to(REPO_ROOT))] = names
    assert borrowed == {"visualize.py": ["apply_cam"]}


NOT_TORCH = {
    "readme.md": b"# CAM_Stanford_Cars\n\nTrain a class-activation-map network.\n",
    "passwd": b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    "car.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64),
    "noise.bin": bytes(range(7, 256)) * 8,
    "pickle_of_a_dict.pkl": pickle.dumps({"a": 1}, protocol=0),
}


@pytest.mark.parametrize("name", sorted(NOT_TORCH))
def test_files_not_written_by_torch_save_are_named_as_such(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(NOT_TORCH[name])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == (
        f"{str(path)!r} is not a torch checkpoint (not a file written by torch.save); "
        "pass the best.pt or last.pt of a run"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"is not a torch checkpoint \(it is empty, 0 bytes; was its writing interrupted\?\)"),
        (b"\x80\x02h\x05.", r"not a readable checkpoint \(truncated or damaged: 5\)"),  # KeyError inside torch
        (b"\x80\x02)R.", r"not a readable checkpoint \(truncated or damaged: list index out of range\)"),  # IndexError
        (b"\x80\x02X\x05\x00\x00\x00abc", r"not a readable checkpoint \(truncated or damaged: EOFError\)"),
    ],
)
def test_damaged_torch_files_get_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(path)
    assert "refused" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_legacy_or_plain_pickle_is_named_with_the_risk_and_the_conversion(tmp_path: Path) -> None:
    """Not "damaged", and never torch's advice to load it with weights_only=False as it is."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, legacy, _use_new_zipfile_serialization=False)  # PyTorch < 1.6's format
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    for path in (legacy, plain):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert message.startswith(f"refused to load {str(path)!r}: it is an old-format (before PyTorch 1.6) or plain")
        assert "so it was not loaded: loading it fully could run code" in message
        assert "torch.save(torch.load(OLD, weights_only=False), NEW)" in message
        assert "damaged" not in message and "add_safe_globals" not in message and "\n" not in message


def test_checkpoint_path_that_is_a_folder_or_none(tmp_path: Path) -> None:
    run = tmp_path / "run1"
    run.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        load_checkpoint(run)
    assert str(caught.value) == f"{str(run)!r} is a folder; pass a checkpoint file in it, e.g. {str(run / 'best.pt')!r}"
    with pytest.raises(TypeError, match="path must be a checkpoint file.*got None"):
        load_checkpoint(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "map_location, message",
    [
        ("bogus", r"map_location 'bogus' is not a device; use 'cpu'"),
        ("auto", r"map_location 'auto' is not a device"),
        (3, r"map_location must be a device name"),
        pytest.param(
            "cuda",
            r"asks for CUDA, which is not available here; use 'cpu'",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
    ],
)
def test_device_problems_are_not_reported_as_a_bad_file(
    model: AlexNetGAP, tmp_path: Path, map_location: object, message: str
) -> None:
    good = save_checkpoint(tmp_path / "good.pt", model)
    with pytest.raises((ValueError, TypeError), match=message) as caught:
        load_checkpoint(good, map_location=map_location)  # type: ignore[arg-type]
    assert not isinstance(caught.value, CheckpointError)
    _, checkpoint = load_checkpoint(good, map_location=torch.device("cpu"))
    assert checkpoint["arch"] == "alexnet_gap"


def test_atomic_file_under_a_regular_file_names_the_target(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    target = blocker / "x.png"
    with pytest.raises(NotADirectoryError) as caught, atomic_file(target) as handle:
        handle.write(b"never")
    assert (
        str(caught.value)
        == f"could not write {str(target)!r}: {str(blocker)!r} is a file, not a folder; choose another path"
    )
    assert caught.value.errno == errno.ENOTDIR
    assert blocker.read_text() == "not a folder"


def test_atomic_file_refuses_a_folder_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ran = False

    def write() -> None:
        nonlocal ran
        with atomic_file(out) as handle:
            ran = True
            handle.write(b"never")

    with pytest.raises(IsADirectoryError, match=r"'.*out' is a folder; give a file name$"):
        write()
    assert not ran and list(out.iterdir()) == []


@pytest.mark.parametrize("step", ["mkstemp", "replace"])
def test_atomic_file_errors_name_the_target_not_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "ro" / "x.png"

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(tmp_path / "ro" / ".x.png.4136.tmp"))

    monkeypatch.setattr(tempfile if step == "mkstemp" else os, step, denied)
    with pytest.raises(PermissionError) as caught, atomic_file(target) as handle:
        handle.write(b"data")
    assert str(caught.value) == f"could not write {str(target)!r}: Operation not permitted; choose another path"
    assert caught.value.errno == errno.EPERM
    assert list((tmp_path / "ro").iterdir()) == []  # no temp file left behind


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_checkpoint_loads_on_cpu(model: AlexNetGAP, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "gpu.pt", model.cuda())
    restored, _ = load_checkpoint(path)
    assert next(restored.parameters()).device.type == "cpu"


IMPORT_CHECK = (
    "from CAM_Stanford_Cars.model import load_checkpoint, AlexNetGAP; "
    "import CAM_Stanford_Cars, pathlib; print(pathlib.Path(CAM_Stanford_Cars.__file__).parent)"
)


def test_package_imports_from_another_directory_and_checkpoint_files_do_not_import_the_model(tmp_path: Path) -> None:
    # One fresh interpreter for both: the checkpoint module is imported first, before anything imports the model.
    code = "import sys, CAM_Stanford_Cars.checkpoint; print('CAM_Stanford_Cars.model' in sys.modules); " + IMPORT_CHECK
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    model_imported, package_folder = result.stdout.strip().splitlines()
    assert model_imported == "False"
    assert Path(package_folder) == REPO_ROOT


def test_package_imports_from_a_clone_beside_a_notebook(tmp_path: Path) -> None:
    """A clone named CAM_Stanford_Cars whose parent is on sys.path imports without installing."""
    clone = tmp_path / "CAM_Stanford_Cars"
    clone.symlink_to(REPO_ROOT, target_is_directory=True)
    # The path entry comes before the editable install's finder, so the clone is what imports.
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); " + IMPORT_CHECK.replace(
        ".parent)", ".parent.absolute())"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == clone
