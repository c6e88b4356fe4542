"""The CAM threshold chosen on validation, used for every box, reported beside the paper's; the wsolevaluation
protocol as an option; --evaluate finding its data; extending a finished run."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from CAM_Stanford_Cars import visualize
from CAM_Stanford_Cars.config import TrainConfig
from CAM_Stanford_Cars.evaluation import evaluate_checkpoint
from CAM_Stanford_Cars.localization import THRESHOLDS, LocalizationMeter, choose_cam_threshold, format_metrics_table
from CAM_Stanford_Cars.main import main
from CAM_Stanford_Cars.model import load_checkpoint
from CAM_Stanford_Cars.train import build_scheduler, fit

SEED_FILTERS = {"car_type": "Sedan", "car_brand": "BMW", "car_production_year": 2012}
VAL_RUN = {"n_epochs": 2, "image_size": 96}  # long enough for the validation boxes to be hit at some threshold


def tiny_config(root: Path, run_dir: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "root": str(root),
        "checkpoints_dir": str(run_dir),
        "n_epochs": 1,
        "batch_size": 4,
        "image_size": 64,
        "pretrained": False,
        "device": "cpu",
        "num_workers": 0,
        "progress": False,
        "seed": 3,
        "lr": 0.01,
        "val_fraction": 0.3,
        **SEED_FILTERS,
    }
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def val_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data with every train box the whole image: the validation images are hit at low thresholds
    whatever a short training learns, so a threshold is always chosen on validation."""
    root = tmp_path_factory.mktemp("val_data") / "data"
    shutil.copytree(synthetic_root, root)
    mat = root / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    annotations = sio.loadmat(mat)["annotations"]
    for j in range(annotations.shape[1]):
        with Image.open(root / "stanford_cars" / "cars_train" / str(annotations[0, j]["fname"][0])) as image:
            width, height = image.size
        for name, value in (("bbox_x1", 1), ("bbox_y1", 1), ("bbox_x2", width), ("bbox_y2", height)):
            annotations[0, j][name] = np.array([[value]])
    sio.savemat(mat, {"annotations": annotations})
    return root


@pytest.fixture(scope="module")
def val_run(val_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run with a validation split; returns its folder."""
    run_dir = tmp_path_factory.mktemp("val_run")
    fit(tiny_config(val_root, run_dir, **VAL_RUN))
    return run_dir


@pytest.mark.parametrize(
    "curve, expected",
    [
        ([0.1, 0.5, 0.5, 0.5, 0.2], 0.02),  # the centre of the plateau, not its loosest end
        ([0.5, 0.5, 0.1, 0.5, 0.5, 0.5], 0.04),  # the widest of two plateaus
        ([0.1, 0.5, 0.5, 0.2], 0.01),  # an even plateau: its lower middle
        ([0.3, 0.2, 0.1], 0.0),
    ],
)
def test_the_threshold_is_the_centre_of_the_best_plateau(curve: list[float], expected: float) -> None:
    assert choose_cam_threshold(np.array(curve), THRESHOLDS[: len(curve)]) == expected


def test_the_threshold_is_chosen_on_validation_and_no_test_box_changes_it(
    val_run: Path, val_root: Path, tmp_path: Path
) -> None:
    _, best = load_checkpoint(val_run / "best.pt")
    assert best["cam_threshold_source"] == "val"
    curve = best["cam_threshold_curve"]
    assert len(curve["accuracy"]) == len(curve["threshold"]) == 100
    assert best["cam_threshold"] == choose_cam_threshold(np.array(curve["accuracy"]))
    # Poison every test box: training again gives the same threshold and curve.
    poisoned = tmp_path / "poisoned"
    shutil.copytree(val_root, poisoned)
    mat = poisoned / "stanford_cars" / "cars_test_annos_withlabels.mat"
    annotations = sio.loadmat(mat)["annotations"]
    for j in range(annotations.shape[1]):
        for name, value in (("bbox_x1", 1), ("bbox_y1", 1), ("bbox_x2", 9), ("bbox_y2", 7)):
            annotations[0, j][name] = np.array([[value]])
    sio.savemat(mat, {"annotations": annotations})
    fit(tiny_config(poisoned, tmp_path / "run", **VAL_RUN))
    _, again = load_checkpoint(tmp_path / "run" / "best.pt")
    assert again["cam_threshold"] == best["cam_threshold"] and again["cam_threshold_curve"] == curve
    tested = json.loads((val_run / "test_metrics.json").read_text())
    assert tested["cam_threshold"] == best["cam_threshold"] and tested["cam_threshold_source"] == "val"
    assert {"gt_known_loc_at_cam_threshold", "top1_loc_at_cam_threshold", "gt_known_loc", "top1_loc"} <= tested.keys()


def test_without_validation_the_threshold_is_the_papers_and_says_so(synthetic_root: Path, tmp_path: Path) -> None:
    result = fit(tiny_config(synthetic_root, tmp_path / "run", val_fraction=0.0))
    _, best = load_checkpoint(result.best_checkpoint)
    assert (best["cam_threshold"], best["cam_threshold_source"], best["cam_threshold_curve"]) == (0.2, "paper", None)
    assert result.test_metrics["gt_known_loc_at_cam_threshold"] == result.test_metrics["gt_known_loc"]
    assert result.test_metrics["top1_loc_at_cam_threshold"] == result.test_metrics["top1_loc"]
    assert "Top-1 Loc*" in format_metrics_table(result.test_metrics) and "paper" in format_metrics_table(
        result.test_metrics
    )


def test_the_meter_scores_at_any_threshold_as_at_the_papers() -> None:
    meter = LocalizationMeter()
    cams = torch.zeros(3, 8, 8)
    cams[:, 2:6, 2:6] = 1.0
    cams[:, 0, 0] = 0.5
    boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0]] * 3)
    meter.update(torch.tensor([[2.0, 1.0], [1.0, 2.0], [2.0, 1.0]]), torch.tensor([0, 0, 0]), cams, boxes, (64, 64))
    paper, chosen = meter.compute(cam_threshold=0.2), meter.compute(cam_threshold=0.7)
    assert paper["gt_known_loc_at_cam_threshold"] == paper["gt_known_loc"]
    assert chosen["gt_known_loc_at_cam_threshold"] == 1.0 and chosen["top1_loc_at_cam_threshold"] == pytest.approx(
        2 / 3
    )
    assert meter.box_accuracy_curve()[70] == 1.0


def test_every_drawn_box_uses_the_checkpoints_threshold(
    val_run: Path,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, best = load_checkpoint(val_run / "best.pt")
    used: list[float] = []
    real = visualize.boxes_from_cams
    monkeypatch.setattr(
        visualize,
        "boxes_from_cams",
        lambda cams, size, threshold: used.append(threshold) or real(cams, size, threshold),
    )
    assert (
        visualize.main(
            [str(val_run / "best.pt"), "--root", str(synthetic_root), "--n", "2", "--out", str(tmp_path / "a.png")]
        )
        == 0
    )
    assert used == [best["cam_threshold"]]
    assert (
        f"Boxes at CAM threshold {best['cam_threshold']:.2f} (chosen on the validation split)"
        in capsys.readouterr().out
    )
    assert (
        visualize.main(
            [
                str(val_run / "best.pt"),
                "--root",
                str(synthetic_root),
                "--n",
                "2",
                "--out",
                str(tmp_path / "b.png"),
                "--threshold",
                "0.2",
            ]
        )
        == 0
    )
    assert used[-1] == 0.2 and "(given)" in capsys.readouterr().out


def test_evaluate_chooses_a_missing_threshold_on_validation_and_finds_the_recorded_data(
    val_run: Path,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "old.pt"
    checkpoint = torch.load(val_run / "best.pt", weights_only=True)
    chosen = checkpoint["cam_threshold"]
    for key in ("cam_threshold", "cam_threshold_source", "cam_threshold_curve"):
        del checkpoint[key]  # as a checkpoint from before thresholds were chosen
    torch.save(checkpoint, copy)
    monkeypatch.chdir(tmp_path)  # not where training ran: the recorded root is absolute
    assert main(["--evaluate", str(copy), "--device", "cpu", "--num_workers", "0", "--progress", "false"]) == 0
    assert "Top-1 Loc*" in capsys.readouterr().out
    _, rewritten = load_checkpoint(copy)
    assert (rewritten["cam_threshold"], rewritten["cam_threshold_source"]) == (chosen, "val")
    assert json.loads((tmp_path / "old_test_metrics.json").read_text())["cam_threshold"] == chosen
    # A recorded folder that is gone: one line naming it and the flag.
    moved = torch.load(val_run / "best.pt", weights_only=True)
    moved["data_root"] = str(tmp_path / "gone")
    torch.save(moved, tmp_path / "moved.pt")
    assert main(["--evaluate", str(tmp_path / "moved.pt"), "--device", "cpu", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and f"{str(tmp_path / 'gone')!r} is the data folder recorded in" in err
        and "--root_datasets_dir" in err
    )


def test_the_wsolevaluation_protocol_needs_opencv_only_when_chosen(
    val_run: Path,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copy(val_run / "best.pt", tmp_path / "best.pt")
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    default = evaluate_checkpoint(tmp_path / "best.pt", synthetic_root, device="cpu", num_workers=0, progress=False)
    assert default["protocol"] == "cam"
    code = main(
        [
            "--evaluate",
            str(tmp_path / "best.pt"),
            "--protocol",
            "wsolevaluation",
            "--device",
            "cpu",
            "--progress",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "pip install 'CAM_Stanford_Cars[opencv]'" in err


def test_the_wsolevaluation_protocol_scores_the_same_images(
    val_run: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("cv2")
    shutil.copy(val_run / "best.pt", tmp_path / "best.pt")
    ours = evaluate_checkpoint(tmp_path / "best.pt", synthetic_root, device="cpu", num_workers=0, progress=False)
    theirs = evaluate_checkpoint(
        tmp_path / "best.pt",
        synthetic_root,
        device="cpu",
        num_workers=0,
        progress=False,
        protocol="wsolevaluation",
        cam_curve_interval=0.001,
    )
    assert theirs["protocol"] == "wsolevaluation" and theirs["n_with_box"] == ours["n_with_box"] > 0
    assert theirs["top1"] == ours["top1"] and 0.0 <= theirs["maxboxacc_v2"] <= 1.0


def test_a_finished_run_extends_to_more_epochs_on_the_longer_schedule(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    first = fit(tiny_config(synthetic_root, run_dir, warmup_epochs=0.5))
    unfinished = fit(tiny_config(synthetic_root, tmp_path / "other", n_epochs=2), stop_after_steps=1)
    assert unfinished.interrupted
    with pytest.raises(ValueError, match="n_epochs=2 but this run has n_epochs=3.*only a finished run"):
        fit(tiny_config(synthetic_root, tmp_path / "other", n_epochs=3, resume=str(unfinished.last_checkpoint)))
    with caplog.at_level(logging.INFO):
        longer = fit(
            tiny_config(synthetic_root, run_dir, n_epochs=3, warmup_epochs=0.5, resume=str(run_dir / "last.pt"))
        )
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]
    assert longer.history[0] == first.history[0]  # epoch 1 is not trained again
    start = "\n".join(r.getMessage() for r in caplog.records)
    assert all(part in start for part in ("Data:", "Model:", "Device:", "Run:", "epochs 2..3")) and '"amp"' not in start
    steps = first.history[0]["train_images"] // 4 + (first.history[0]["train_images"] % 4 > 0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    schedule = build_scheduler(optimizer, 3 * steps, round(0.5 * steps))
    rates = []
    for _ in range(3 * steps):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert longer.history[1]["lr"] == pytest.approx(rates[2 * steps - 1], rel=1e-12) and rates[2 * steps - 1] > 0.001
    assert longer.history[2]["lr"] == pytest.approx(0.0, abs=1e-12)
