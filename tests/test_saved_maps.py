"""Maps as files: --evaluate --save_maps writes wsolevaluation's layout, --score_maps scores any tool's maps on the
dataset's boxes; the round trip repeats --evaluate exactly under both protocols, and wsolevaluation's own box code
gives the same numbers on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_wsolevaluation import ref_boxes, ref_multiple_iou

from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.evaluation import evaluate_checkpoint
from CAM_Stanford_Cars.main import main
from CAM_Stanford_Cars.model import load_checkpoint
from CAM_Stanford_Cars.saved_maps import score_maps

FILTERS = {"car_type": "Sedan", "car_brand": "BMW", "car_production_year": 2012}
SAME_KEYS = (
    "top1",
    "gt_known_loc",
    "top1_loc",
    "gt_known_loc_at_cam_threshold",
    "top1_loc_at_cam_threshold",
    "maxboxacc",
    "maxboxacc_threshold",
    "maxboxacc_v2",
    "maxboxacc_v2_iou30",
    "maxboxacc_v2_iou50",
    "maxboxacc_v2_iou70",
    "n_images",
    "n_with_box",
)


def score_saved(folder: Path, root: Path, **kwargs) -> dict:
    return score_maps(folder, root, "test", **FILTERS, image_size=64, num_workers=0, progress=False, **kwargs)


@pytest.mark.parametrize("protocol", ["cam", "wsolevaluation"])
def test_saved_maps_score_as_evaluate_did(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """main.py's --evaluate --save_maps, then --score_maps on the folder (in this process)."""
    if protocol == "wsolevaluation":
        pytest.importorskip("cv2")
    out = tmp_path / "maps"
    common = ["--root_datasets_dir", str(synthetic_root), "--protocol", protocol, "--num_workers", "0"]
    common += ["--progress", "false"]
    assert main(["--evaluate", str(cam_checkpoint), "--save_maps", str(out), "--device", "cpu", *common]) == 0
    evaluated = json.loads(cam_checkpoint.with_name("best_test_metrics.json").read_text())
    ids = (out / "metadata" / "test" / "image_ids.txt").read_text().split()
    assert len(ids) == evaluated["n_images"] == 6 and all(i.startswith("cars_test/") for i in ids)
    for image_id in ids:
        scoremap = np.load(out / "cam" / f"{image_id}.npy", allow_pickle=False)
        assert scoremap.dtype == np.float32 and scoremap.shape == (64, 64)
        assert scoremap.min() == 0.0 and scoremap.max() == 1.0
    rows = [line.split(",") for line in (out / "metadata" / "test" / "localization.txt").read_text().splitlines()]
    dataset = StanfordCarsCAM(synthetic_root, split="test", **FILTERS)
    assert [row[0] for row in rows] == ids
    np.testing.assert_array_equal(np.array([row[1:] for row in rows], dtype=float), dataset.boxes)
    sizes = (out / "metadata" / "test" / "image_sizes.txt").read_text().splitlines()
    assert sizes[0] == f"{ids[0]},{','.join(map(str, dataset.original_size(0)))}"
    capsys.readouterr()

    argv = ["--score_maps", str(out / "cam"), "--image_size", "64", "--car_type", "Sedan", "--car_brand", "BMW"]
    argv += ["--car_production_year", "2012", "--predictions", str(out / "predictions.csv")]
    assert main([*argv, "--threshold", str(evaluated["cam_threshold"]), *common]) == 0
    assert "MaxBoxAcc" in capsys.readouterr().out
    scored = json.loads((out / "cam" / "metrics.json").read_text())
    assert {key: scored[key] for key in SAME_KEYS} == {key: evaluated[key] for key in SAME_KEYS}
    assert scored["maxboxacc_v2_iou30"] > 0  # the maps do find some cars
    assert scored["top5"] is None and scored["n_maps_ignored"] == 0


def test_wsolevaluation_scores_the_saved_files_as_we_do(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """Their evaluation.py on our files: metadata read as their ``get_bounding_boxes``/``get_image_sizes`` read it,
    boxes resized by ``resize_bbox`` (to the maps' 64 pixels, where they use 224), scoremaps scored as loaded."""
    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "maps"
    evaluate_checkpoint(
        cam_checkpoint,
        synthetic_root,
        device="cpu",
        num_workers=0,
        progress=False,
        protocol="wsolevaluation",
        save_maps=out,
    )
    meta = out / "metadata" / "test"
    sizes = {
        i: (float(w), float(h)) for i, w, h in (r.split(",") for r in (meta / "image_sizes.txt").read_text().split())
    }
    thresholds = list(np.arange(0, 1, 0.01))
    correct = {iou: np.zeros(len(thresholds)) for iou in (30, 50, 70)}
    largest = np.zeros(len(thresholds))
    for row in (meta / "localization.txt").read_text().split():
        image_id, *box = row.split(",")
        w, h = sizes[image_id]
        x0, y0, x1, y1 = (float(v) for v in box)
        gt = np.array([[int(x0 * 64 / w), int(y0 * 64 / h), int(x1 * 64 / w), int(y1 * 64 / h)]])
        scoremap = np.load(out / "cam" / f"{image_id}.npy")
        for multi, counts in ((True, correct), (False, {50: largest})):
            boxes_at_thr, number_of_box = ref_boxes(cv2, scoremap, thresholds, multi)
            ious = ref_multiple_iou(np.concatenate(boxes_at_thr, axis=0), gt).max(1)
            best = np.array([ious[sum(number_of_box[:t]) : sum(number_of_box[: t + 1])].max() for t in range(100)])
            for iou, count in counts.items():
                count[best >= iou / 100] += 1
    scored = score_saved(out / "cam", synthetic_root, protocol="wsolevaluation")
    n = scored["n_with_box"]
    assert scored["maxboxacc"] == largest.max() / n
    assert [scored[f"maxboxacc_v2_iou{iou}"] for iou in (30, 50, 70)] == [correct[i].max() / n for i in (30, 50, 70)]


def test_raw_maps_of_another_size_and_another_tools_maps(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """Raw (h, w) CAMs scored under wsolevaluation are resized and normalised as their inference does, so they score
    as --evaluate; torchcam's maps (its own ReLU and normalisation) score too."""
    pytest.importorskip("cv2")
    torchcam = pytest.importorskip("torchcam.methods")
    model, _ = load_checkpoint(cam_checkpoint)
    model.eval()
    dataset = StanfordCarsCAM(synthetic_root, split="test", image_size=64, return_box=True, **FILTERS)
    from CAM_Stanford_Cars.saved_maps import image_ids

    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(dataset.targets)
    raw = model.class_activation_maps(model.forward_features(images), labels).detach()
    extractor = torchcam.CAM(model, model.cam_conv, fc_layer=model.fc, input_shape=(3, 64, 64))
    logits = model(images)
    theirs = extractor(labels.tolist(), logits)[0].detach()
    extractor.remove_hooks()
    for name, maps in (("raw", raw), ("torchcam", theirs)):
        for image_id, cam in zip(image_ids(dataset), maps.numpy()):
            path = tmp_path / name / f"{image_id}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, cam)
    assert raw.shape[-1] != 64 and theirs.shape[-1] != 64
    evaluated = evaluate_checkpoint(
        cam_checkpoint, synthetic_root, device="cpu", num_workers=0, progress=False, protocol="wsolevaluation"
    )
    scored = score_saved(tmp_path / "raw", synthetic_root, protocol="wsolevaluation")
    for key in ("maxboxacc", "maxboxacc_v2", "gt_known_loc"):
        assert scored[key] == evaluated[key], key
    other = score_saved(tmp_path / "torchcam", synthetic_root)
    assert 0.0 <= other["maxboxacc"] <= 1.0 and other["n_images"] == 6 and other["top1"] is None


class Payload:
    """Unpickling this writes a file: the proof that something ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_bad_maps_are_one_line_each(
    cam_checkpoint: Path,
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "maps"
    evaluate_checkpoint(cam_checkpoint, synthetic_root, device="cpu", num_workers=0, progress=False, save_maps=out)
    ids = (out / "metadata" / "test" / "image_ids.txt").read_text().split()
    folder = out / "cam"
    argv = ["--score_maps", str(folder), "--root_datasets_dir", str(synthetic_root), "--image_size", "64"]
    argv += ["--car_type", "Sedan", "--car_brand", "BMW", "--car_production_year", "2012", "--progress", "false"]

    def fails(*extra: str, workers: str = "0") -> str:
        assert main([*argv, "--num_workers", workers, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("main.py: error: "), err
        return err

    first = folder / f"{ids[0]}.npy"
    saved = first.read_bytes()
    # A map for an image outside the selection is counted and ignored.
    (folder / "cars_test" / "99999.jpg.npy").write_bytes(saved)
    assert main([*argv, "--num_workers", "0"]) == 0
    assert "n_maps_ignored: 1" in capsys.readouterr().out
    # Missing maps: how many, and the first; the folder --save_maps wrote names its method folders.
    first.unlink()
    assert f"no map for 1 of 6 images (e.g. {ids[0]}.npy)" in fails()
    assert f"one folder per method: try {str(out / 'cam')!r}" in fails_command(
        [*argv[2:], "--score_maps", str(out)], capsys
    )
    # Not 2-D, NaN: the file named (also from a loader worker).
    np.save(first, np.zeros((2, 64, 64), dtype=np.float32))
    assert f"map {first} is not a 2-D array" in fails(workers="1")
    np.save(first, np.full((64, 64), np.nan, dtype=np.float32))
    assert f"map {first} holds NaN" in fails()
    # Pickled objects are refused unread.
    marker = tmp_path / "ran.txt"
    with first.open("wb") as handle:
        np.lib.format.write_array(handle, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    assert f"map {first} holds pickled objects" in fails()
    assert not marker.exists()
    np.load(first, allow_pickle=True)  # what the refusal kept from running
    assert marker.read_text() == "ran"
    # A constant map scores as all zeros, as wsolevaluation's normalize_scoremap makes it, with a warning naming it.
    np.save(first, np.full((64, 64), 0.5, dtype=np.float32))
    assert main([*argv, "--num_workers", "0"]) == 0
    assert f"1 of 6 maps are constant: scored as all zeros, as wsolevaluation scores them (e.g. {ids[0]})" in (
        caplog.text
    )
    # An image id with '..' in a predictions file.
    bad = tmp_path / "predictions.csv"
    bad.write_text("image_id,class\n../../etc/passwd,0\n")
    assert "image id '../../etc/passwd' has '..' in it; refused" in fails("--predictions", str(bad))
    # Options of the other command.
    assert "--predictions is an option of --score_maps" in fails_command(["--predictions", str(bad)], capsys)
    assert "--save_maps is an option of --evaluate" in fails_command([*argv, "--save_maps", "x"], capsys)
    blocked = ["--evaluate", str(cam_checkpoint), "--save_maps", str(first / "maps"), *argv[2:4], "--num_workers", "0"]
    assert f"--save_maps {str(first / 'maps')!r} is not writable" in fails_command(blocked, capsys)


def fails_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_the_report_of_scored_maps(
    cam_checkpoint: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "maps"
    evaluate_checkpoint(cam_checkpoint, synthetic_root, device="cpu", num_workers=0, progress=False, save_maps=out)
    page = tmp_path / "report.html"
    argv = ["--score_maps", str(out / "cam"), "--root_datasets_dir", str(synthetic_root), "--image_size", "64"]
    argv += ["--car_brand", "BMW", "--car_production_year", "2012", "--car_type", "Sedan", "--num_workers", "0"]
    argv += ["--predictions", str(out / "predictions.csv"), "--report", str(page), "--progress", "false"]
    assert main(argv) == 0
    assert f"report: {page} (6 images)" in capsys.readouterr().out
    html = page.read_text()
    predicted = [line.split(",", 1)[1] for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    assert html.count('<div class="card"') == 6 and "http://" not in html and "https://" not in html
    assert all(f"pred: {name} (100.0%)" in html for name in predicted)  # the class the file names, for certain
    scored = json.loads((out / "cam" / "metrics.json").read_text())
    assert f"{100 * scored['maxboxacc']:.2f}%" in html and "magenta: the box of the CAM at t*=0.20" in html
    assert main([*argv[:-4], "--report", str(tmp_path)]) == 2  # a folder: refused before any work
    assert "is a folder" in capsys.readouterr().err


def test_saved_scoremaps_keep_their_8_bit_levels() -> None:
    """float32 rounding of a float64 scoremap can cross a level of ``uint8(255 * x)``, where wsolevaluation cuts its
    thresholds; the saved maps are moved back across it."""
    from CAM_Stanford_Cars.saved_maps import _float32_keeping_bytes

    edges = np.arange(1, 255) / 255
    scoremap = np.concatenate([np.nextafter(edges, 0), np.nextafter(edges, 1), [0.0, 1.0]])
    levels = np.trunc(scoremap * 255)
    assert (np.trunc(scoremap.astype(np.float32).astype(np.float64) * 255) != levels).any()  # plain rounding crosses
    kept = _float32_keeping_bytes(scoremap)
    assert kept.dtype == np.float32 and np.array_equal(np.trunc(kept.astype(np.float64) * 255), levels)
    assert np.abs(kept - scoremap).max() < 1e-6
