"""The seed's visualisation snippet and the commands: visualize.py, --evaluate, --list_filters, --demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_the_seeds_visualisation_snippet_runs_as_written(
    trained_run: Path,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # The snippet's relative data folder, next to where it runs.
    (tmp_path / "stanford_cars_dataset").symlink_to(synthetic_root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    from CAM_Stanford_Cars import visualize

    figures: list[Figure] = []
    real_visualize_cam = visualize.visualize_cam

    def recording_visualize_cam(*args: object, **kwargs: object) -> Figure:
        figures.append(real_visualize_cam(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(visualize, "visualize_cam", recording_visualize_cam)
    checkpoint_path_value = str(trained_run / "best.pt")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # ---- the README's snippet, verbatim but for the checkpoint's path ----
        from torch.utils.data import DataLoader

        from CAM_Stanford_Cars.dataset import StanfordCarsCAM
        from CAM_Stanford_Cars.model import load_checkpoint
        from CAM_Stanford_Cars.visualize import apply_cam, visualize_cam

        checkpoint_path = checkpoint_path_value
        model, checkpoint = load_checkpoint(checkpoint_path)

        cars_dataset = StanfordCarsCAM(
            "stanford_cars_dataset",
            car_type=checkpoint["car_type"],
            car_production_year=checkpoint["car_production_year"],
            car_brand=checkpoint["car_brand"],
            download_datasets=True,
            generate_img_for_cam=True,
            split="test",
        )

        cars_dataloader = DataLoader(cars_dataset, batch_size=1, shuffle=True)

        for id, batch in enumerate(cars_dataloader):  # noqa: B007 (the seed's snippet as written)
            # extract original image, transformed image and labels
            image_predict, image_visualize, labels = batch  # noqa: RUF059

            # generate classification output and cam
            output, cam = model(image_visualize, True)

            # decode output
            predicted_classes = [cars_dataset.class_to_idx[element] for element in torch.argmax(output, 1).tolist()]

            # detach cam for visualization purpose
            cam = cam.detach()

            # apply cam on image and visualize it
            blended_images = apply_cam(image_visualize, cam)
            visualize_cam(image_visualize, blended_images, predicted_classes)

            break
        # ---- end of the snippet ----

    assert capsys.readouterr().out == ""
    ours = [w for w in caught if "CAM_Stanford_Cars" in str(w.filename) or "CAM_Stanford_Cars" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]
    assert predicted_classes[0] in checkpoint["class_names"]
    assert blended_images.shape == image_visualize.shape == (1, 3, 224, 224)
    assert len(figures) == 1 and isinstance(figures[0], Figure)
    assert any(predicted_classes[0][:10] in ax.get_title() for ax in figures[0].axes)


@pytest.mark.slow
def test_visualize_command_draws_a_grid_with_boxes(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "cams.png"
    result = run_script(
        "visualize.py",
        [str(trained_run / "best.pt"), "--split", "test", "--n", "4", "--out", str(out), "--seed", "1"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 400


def test_visualize_command_bad_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: visualize.py as a real process is test_visualize_command_draws_a_grid_with_boxes.
    monkeypatch.chdir(tmp_path)
    from CAM_Stanford_Cars import visualize

    assert visualize.main([str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "Traceback" not in err


def test_evaluate_command_prints_a_table_and_writes_json(
    trained_run: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: main.py as a real process is test_the_seeds_command_runs_one_epoch and the demo's test.
    from CAM_Stanford_Cars.main import main

    checkpoint = trained_run / "best.pt"
    argv = ["--evaluate", str(checkpoint), "--root_datasets_dir", str(synthetic_root), "--split", "test"]
    assert main([*argv, "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "MaxBoxAcc" in out and "GT-known" in out
    metrics = json.loads((trained_run / "best_test_metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == 6  # 2 classes x 3 test images
    for key in ("top1", "top5", "gt_known_loc", "top1_loc", "maxboxacc", "maxboxacc_threshold", "maxboxacc_v2"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_list_filters_command(synthetic_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from CAM_Stanford_Cars.main import main  # main.py's command, in this process

    assert main(["--list_filters", "--root_datasets_dir", str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert "BMW" in out and "Sedan" in out and "2012" in out


@pytest.mark.slow
def test_demo_command_leaves_a_checkpoint_and_a_figure_and_a_second_demo_replaces_them(tmp_path: Path) -> None:
    """The README's demo as a process; then a smaller ``run_demo`` in the same folder, another seed, replaces it."""
    from CAM_Stanford_Cars.demo import run_demo
    from CAM_Stanford_Cars.model import load_checkpoint

    demo_dir = tmp_path / "demo"
    result = run_script(
        "main.py", ["--demo", "--n_epochs", "1", "--demo_dir", str(demo_dir), "--progress", "false"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    checkpoint = demo_dir / "run" / "best.pt"
    figure = demo_dir / "cam_demo.png"
    assert f"Checkpoint: {checkpoint}" in result.stdout and f"CAM figure: {figure}" in result.stdout
    assert figure.stat().st_size > 10_000
    _, saved = load_checkpoint(checkpoint)
    assert saved["car_brand"] == "BMW" and len(saved["class_names"]) == 9 and saved["arch"] == "alexnet_gap"
    before = checkpoint.read_bytes()
    second = run_demo(
        demo_dir, seed=1, progress=False, n_train_per_class=2, n_test_per_class=1, n_epochs=1, arch="alexnet"
    )
    assert second.checkpoint == checkpoint and checkpoint.read_bytes() != before
    assert len((second.run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(checkpoint)[1]["args"]["seed"] == 1 and second.figure.stat().st_size > 0


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--evaluate", ""], "--evaluate is empty"),
        (["--demo", "--evaluate", "best.pt"], "--demo and --evaluate are separate commands"),
        (["--list_filters", "--demo"], "--demo and --list_filters are separate commands"),
        (["--split", "train"], "--split is an option of --evaluate"),
        (["--demo", "--demo_dir", " "], "--demo_dir is empty"),
    ],
)
def test_commands_that_contradict_or_name_nothing_are_refused(
    argv: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    from CAM_Stanford_Cars.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_demo_dir_problems_name_the_flag(tmp_path: Path) -> None:
    from CAM_Stanford_Cars.demo import run_demo

    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(ValueError, match="--demo_dir .*file.txt/demo' is not writable"):
        run_demo(tmp_path / "file.txt" / "demo", progress=False)
