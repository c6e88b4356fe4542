"""CAM methods side by side: one pass, the same metrics, one JSON, CSV and figure; the command lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from CAM_Stanford_Cars import main as main_module
from CAM_Stanford_Cars.cams import METHODS
from CAM_Stanford_Cars.compare import COLUMNS, compare_methods
from CAM_Stanford_Cars.evaluation import evaluate_checkpoint
from CAM_Stanford_Cars.main import main
from CAM_Stanford_Cars.saved_maps import score_maps
from CAM_Stanford_Cars.visualize import main as visualize_main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_method_is_scored_on_the_same_images_into_one_json(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    checkpoint = cam_checkpoint
    result = compare_methods(
        checkpoint,
        synthetic_root,
        methods=["cam", "gradcam", "layercam"],
        device="cpu",
        num_workers=0,
        progress=False,
        figure_images=2,
        steps=2,
        save_maps=tmp_path / "maps",
    )
    saved = json.loads(Path(result["files"]["json"]).read_text())
    assert list(saved["methods"]) == ["cam", "gradcam", "layercam"] and saved["n_images"] == result["n_images"] > 0
    for row in saved["methods"].values():
        assert set(COLUMNS) <= row.keys() and row["n_with_box"] == result["n_images"]
        assert 0.0 <= row["deletion_auc"] <= 1.0 and 0.0 <= row["insertion_auc"] <= 1.0 and row["ms_per_image"] > 0
    # The model's own CAM scores exactly as --evaluate scores it.
    plain = evaluate_checkpoint(checkpoint, synthetic_root, device="cpu", num_workers=0, progress=False)
    for key in ("top1", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "top1_loc_at_cam_threshold"):
        assert saved["methods"]["cam"][key] == plain[key], key
    with open(result["files"]["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["cam", "gradcam", "layercam"]
    assert float(rows[0]["maxboxacc"]) == plain["maxboxacc"]
    assert Path(result["files"]["png"]).stat().st_size > 0
    # Each method's maps, saved and scored from their files, score as in the table.
    filters = {"car_type": "Sedan", "car_brand": "BMW", "car_production_year": 2012}
    for method in ("gradcam", "layercam"):
        files = score_maps(
            tmp_path / "maps" / method, synthetic_root, image_size=64, num_workers=0, progress=False, **filters
        )
        assert files["maxboxacc_v2"] == saved["methods"][method]["maxboxacc_v2"], method


def test_the_methods_flag_prints_a_table_and_names_bad_input(
    cam_checkpoint: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    common = [
        "--evaluate",
        str(cam_checkpoint),
        "--root_datasets_dir",
        str(synthetic_root),
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--progress",
        "false",
    ]
    assert main([*common, "--methods", "cam,scorecam"]) == 0  # in this process: main.py as a script is test_cli's
    out = capsys.readouterr().out
    assert "scorecam" in out and "deletion AUC" in out and "best_test_methods.json" in out
    assert main([*common, "--methods", "cam,magic"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["--methods", "cam"]) == 2
    assert "--methods is an option of --evaluate" in capsys.readouterr().err
    # "all" asks for every method (each is scored by tests/test_scoring.py); one method's pass is enough here.
    asked = []

    def first_method_only(path, root, split, methods, *rest, **options):
        asked.append(list(methods))
        return compare_methods(path, root, split, methods[:1], *rest, steps=1, **options)

    monkeypatch.setattr(main_module, "compare_methods", first_method_only)
    assert main([*common, "--methods", "all"]) == 0
    assert asked == [list(METHODS)] and "best_test_methods.json" in capsys.readouterr().out


def test_visualize_draws_another_methods_map(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """visualize.py --method (in process: visualize.py as a script is run by tests/test_cli.py)."""
    out = tmp_path / "gradcam.png"
    args = [str(cam_checkpoint), "--root", str(synthetic_root), "--n", "2", "--method", "gradcam", "--out", str(out)]
    assert visualize_main(args) == 0
    assert "Boxes at CAM threshold" in capsys.readouterr().out
    assert out.stat().st_size > 0


def test_the_package_exports_compute_cams() -> None:
    import CAM_Stanford_Cars
    from CAM_Stanford_Cars import cams

    assert CAM_Stanford_Cars.compute_cams is cams.compute_cams and CAM_Stanford_Cars.METHODS == cams.METHODS
    with pytest.raises(AttributeError):
        CAM_Stanford_Cars.no_such_name  # noqa: B018
