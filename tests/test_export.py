"""export.py: every backbone's checkpoint as one ONNX graph with its CAM, onnxruntime against PyTorch, model.json, and
every bad input in one line before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.main import main
from CAM_Stanford_Cars.model import ARCHS, create_model, load_checkpoint

ort = pytest.importorskip("onnxruntime")


def tiny_checkpoint(folder: Path, arch: str) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3)
    names = ["BMW M3 Coupe 2012", "BMW X3 SUV 2012", "BMW Z4 Convertible 2012"]
    return save_checkpoint(
        folder / f"{arch}.pt", model, class_names=names, image_size=64, cam_threshold=0.42, cam_threshold_source="val"
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_every_backbone_exports_with_its_cam_and_onnxruntime_agrees(
    arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """main.py's --export (in this process) on every backbone; batches of 1 and 5 against ``model(images, True)``."""
    checkpoint = tiny_checkpoint(tmp_path, arch)
    target = tmp_path / "model.onnx"
    assert main(["--export", str(checkpoint), "--to", str(target)]) == 0
    assert f"ONNX graph: {target}" in capsys.readouterr().out
    about = json.loads(target.with_suffix(".json").read_text())
    assert about["image_size"] == 64 and about["class_names"][0] == "BMW M3 Coupe 2012"
    assert about["cam_threshold"] == 0.42 and about["cam_threshold_source"] == "validation"
    assert about["input"]["shape"] == ["N", 3, 64, 64] and list(about["outputs"]) == ["logits", "cam"]
    model, _ = load_checkpoint(checkpoint)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        logits, cam = session.run(["logits", "cam"], {"images": images.numpy()})
        with torch.no_grad():
            want_logits, want_cam = model(images, True)
        assert logits.shape == (batch, 3) and cam.shape == tuple(want_cam.shape)
        np.testing.assert_allclose(logits, want_logits.numpy(), rtol=1e-4, atol=1e-4 * want_logits.abs().max().item())
        np.testing.assert_allclose(cam, want_cam.numpy(), rtol=1e-4, atol=1e-4 * want_cam.abs().max().item())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.name, "model.onnx", "model.json"])


def test_bad_exports_are_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tiny_checkpoint(tmp_path, "alexnet")

    def fails(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    assert "notes.pt" in fails("--export", str(not_a_checkpoint), "--to", str(tmp_path / "a.onnx"))
    assert "does not exist" in fails("--export", str(checkpoint), "--to", str(tmp_path / "missing" / "a.onnx"))
    assert "is a folder" in fails("--export", str(checkpoint), "--to", str(tmp_path))
    assert "does not end in .onnx" in fails("--export", str(checkpoint), "--to", str(tmp_path / "a.onx"))
    assert "--export needs --to" in fails("--export", str(checkpoint))
    assert "--to is an option of --export" in fails("--to", str(tmp_path / "a.onnx"))
    from CAM_Stanford_Cars import export

    with monkeypatch.context() as patch:  # a read-only folder (root writes anywhere, so its answer is stood in for)
        patch.setattr(export, "unwritable_reason", lambda folder: "Read-only file system")
        assert "is not writable (Read-only file system)" in fails("--export", str(checkpoint), "--to", "a.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert "pip install -e '.[onnx]'" in fails("--export", str(checkpoint), "--to", str(tmp_path / "a.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.name, not_a_checkpoint.name])


def test_a_mismatch_is_an_error_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from CAM_Stanford_Cars import export

    checkpoint = tiny_checkpoint(tmp_path, "alexnet")
    monkeypatch.setattr(export, "RTOL", -1.0)  # no graph can pass
    with pytest.raises(ValueError, match="differ from PyTorch's .* nothing was written"):
        export.export_onnx(checkpoint, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]
