"""Explaining your own photos: inputs, decoding, the records, the files written and the command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from CAM_Stanford_Cars import visualize
from CAM_Stanford_Cars.cams import compute_cams
from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.model import AlexNetGAP, load_checkpoint
from CAM_Stanford_Cars.photos import (
    CSV_COLUMNS,
    Photo,
    PhotoInputError,
    decode_photo,
    display_size,
    explain_photos,
    find_photos,
)
from CAM_Stanford_Cars.scoring import ScoredBatch, chosen_maps

CLASSES = ["Audi A4 2012", "BMW M3 2012", "Ford Focus 2012"]


def _photo(path: Path, seed: int = 0, size: tuple[int, int] = (80, 60), mode: str = "RGB", **save: object) -> Path:
    """A small photo with structure (a bright block on noise), saved in ``mode``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4 : size[1] // 2, size[0] // 2 :] = 240
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, **save)
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An untrained 3-class AlexNet-GAP of 8 CAM channels on 64x64 inputs."""
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=len(CLASSES), cam_channels=8)
    return save_checkpoint(tmp_path / "run" / "best.pt", model, class_names=CLASSES, image_size=64)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run(checkpoint: Path, *argv: str) -> int:
    """The exit status of ``python visualize.py CHECKPOINT ARGV``, argparse's included."""
    try:
        return visualize.main([str(checkpoint), *argv])
    except SystemExit as stop:
        return stop.code


def test_every_input_kind_and_its_output_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _photo(Path("photos/a/b.jpg"))
    _photo(Path("photos/c.png"))
    Path("photos/a/notes.txt").write_text("not a photo")
    _photo(Path("shots/x.png"))
    _photo(Path("shots/y.jpg"))
    _photo(Path("my_car.jpg"))
    photos = find_photos(["my_car.jpg", "photos/", "shots/*.png"])
    assert [(p.name, p.output.as_posix()) for p in photos] == [
        ("my_car.jpg", "my_car"),
        ("photos/a/b.jpg", "a/b"),
        ("photos/c.png", "c"),
        ("shots/x.png", "x"),
    ]
    # The same file twice is explained once.
    assert [p.name for p in find_photos(["my_car.jpg", "*.jpg"])] == ["my_car.jpg"]


def test_inputs_that_name_nothing_or_collide_are_one_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _photo(Path("a/car.jpg"))
    _photo(Path("b/car.png"))
    Path("empty").mkdir()
    with pytest.raises(PhotoInputError) as caught:
        find_photos(["missing.jpg", "nothing/*.png", "empty", "a", "b"])
    lines = str(caught.value).splitlines()
    assert lines == [
        "'missing.jpg' does not exist",
        "pattern 'nothing/*.png' matches no image files",
        "folder 'empty' holds no image files",
        "'a/car.jpg' and 'b/car.png' would both write 'car'; explain them apart",
    ]


def test_rotated_photo_is_explained_as_its_upright_twin(checkpoint: Path, tmp_path: Path) -> None:
    upright = _photo(tmp_path / "upright" / "car.png", size=(80, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    stored = tmp_path / "rotated" / "car.png"
    stored.parent.mkdir()
    Image.open(upright).transpose(Image.Transpose.ROTATE_90).save(stored, exif=exif)
    assert Image.open(stored).size == (60, 80)
    out = {name: tmp_path / f"cams_{name}" for name in ("upright", "rotated")}
    for name, folder in out.items():
        assert _run(checkpoint, "--images", str(tmp_path / name), "--out_dir", str(folder), "--save_maps") == 0
    rows = {name: _rows(folder / "predictions.csv")[0] for name, folder in out.items()}
    assert rows["upright"].pop("file") != rows["rotated"].pop("file")
    assert rows["upright"] == rows["rotated"]
    assert (rows["rotated"]["width"], rows["rotated"]["height"]) == ("80", "60")
    np.testing.assert_array_equal(np.load(out["upright"] / "car.npy"), np.load(out["rotated"] / "car.npy"))
    assert Image.open(out["rotated"] / "car.jpg").size == (80, 60)


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", "png"), ("P", "png"), ("RGBA", "png"), ("LA", "png"), ("CMYK", "jpg"), ("I;16", "png"), ("RGB", "webp")],
)
def test_photo_modes_decode_to_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"photo.{suffix}"
    if mode == "I;16":
        Image.fromarray((np.arange(60 * 80).reshape(60, 80) * 13).astype(np.uint16)).save(path)
        assert Image.open(path).mode == "I;16"
    else:
        _photo(path, mode=mode)
    image, pixels, size = decode_photo(Photo(path.name, Path("photo"), path=str(path)), 64, 1024)
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert pixels.shape == (60, 80, 3) and pixels.dtype == np.uint8 and size == (80, 60)
    if mode == "I;16":  # scaled to 8 bits, not clipped at 255
        expected = np.rint((np.arange(60 * 80).reshape(60, 80) * 13 % 65536) * 255 / 65535)
        np.testing.assert_array_equal(pixels[..., 0], expected)
    if mode == "RGBA":  # opaque: the photo's own colours
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))


def test_a_transparent_photo_shows_over_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (80, 60), (10, 20, 30, 0)).save(path)
    _, pixels, _ = decode_photo(Photo("clear.png", Path("clear"), path=str(path)), 64, 1024)
    assert (pixels == 255).all()


def test_large_photo_is_drawn_at_max_side(checkpoint: Path, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "big.jpg", size=(400, 300))
    assert display_size(400, 300, 100) == (100, 75)
    out = tmp_path / "cams"
    assert _run(checkpoint, "--images", str(photo), "--out_dir", str(out), "--max_side", "100", "--format", "png") == 0
    assert Image.open(out / "big.png").size == (100, 75)
    row = _rows(out / "predictions.csv")[0]
    assert (row["width"], row["height"]) == ("400", "300")
    x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
    assert 0 <= x1 < x2 <= 400 and 0 <= y1 < y2 <= 300


def test_bad_photos_are_one_line_each_and_the_others_explained(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    _photo(photos / "good.jpg")
    _photo(photos / "huge.png", size=(200, 150))
    (photos / "text.jpg").write_text("not an image")
    (photos / "empty.png").write_bytes(b"")
    whole = _photo(tmp_path / "whole.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # huge.png is over twice this: a decompression bomb
    out = tmp_path / "cams"
    assert _run(checkpoint, "--images", str(photos), "--out_dir", str(out)) == 1
    err = capsys.readouterr()
    skipped = [line for line in err.err.splitlines() if "skipped" in line]
    assert len(skipped) == 4
    for name, why in [("empty", "empty"), ("huge", "DecompressionBomb"), ("text", "not an image"), ("truncated", "")]:
        assert any(name in line and why in line for line in skipped), (name, skipped)
    assert err.out.strip().splitlines()[-1] == f"1 explained, 4 skipped, written to {out}"
    assert [row["file"] for row in _rows(out / "predictions.csv")] == [str(photos / "good.jpg")]
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg", "predictions.csv"]


def test_csv_columns_and_maps(checkpoint: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / f"car{i}.jpg", seed=i)
    out = tmp_path / "cams"
    assert _run(checkpoint, "--images", str(photos), "--out_dir", str(out), "--save_maps", "--batch_size", "2") == 0
    with open(out / "predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "file", "width", "height",
        "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3", "class_4", "prob_4", "class_5", "prob_5",
        "x1", "y1", "x2", "y2", "threshold", "method",
    ]  # fmt: skip
    assert tuple(header) == CSV_COLUMNS
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 3
    records = list(explain_photos(checkpoint, [photos]))
    for row, record in zip(rows, records, strict=True):
        probs = [float(row[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert {row[f"class_{k}"] for k in (1, 2, 3)} == set(CLASSES)
        assert row["class_4"] == row["prob_5"] == ""  # a model of three classes
        assert (row["threshold"], row["method"]) == ("0.2", "cam")
        saved = np.load(out / f"{Path(row['file']).stem}.npy")
        assert saved.shape == (64, 64) and saved.dtype == np.float32
        assert saved.min() == 0.0 and saved.max() == 1.0
        np.testing.assert_allclose(saved, record.map, atol=1e-5)  # batches of 2 and 16: float noise
        assert row["class_1"] == record.classes[0]
        assert [float(row[k]) for k in ("x1", "y1", "x2", "y2")] == pytest.approx(record.box, abs=1e-3)


def test_rerun_overwrites_its_outputs_and_keeps_the_rest(checkpoint: Path, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "photos" / "a" / "car.jpg")
    out = tmp_path / "cams"
    (out / "a").mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    (out / "a" / "car.jpg").write_text("stale")
    for _ in range(2):
        assert _run(checkpoint, "--images", str(tmp_path / "photos"), "--out_dir", str(out)) == 0
    assert (out / "mine.txt").read_text() == "keep"
    assert Image.open(out / "a" / "car.jpg").size == Image.open(photo).size
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a", "a/car.jpg", "mine.txt", "predictions.csv"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--images", "{empty}"], "folder '{empty}' holds no image files"),
        (["--images", "{photo}", "--class", "Tesla"], "--class 'Tesla' is neither a class name"),
        (["--images", "{photo}", "--class", "3"], "an index in [0, 2]"),
        (["--images", "{photo}", "--format", "gif"], "invalid choice: 'gif'"),
        (["--images", "{photo}", "--max_side", "0"], "--max_side"),
    ],
)
def test_usage_errors_exit_2_before_any_work(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    names = {"empty": str(tmp_path / "empty"), "photo": str(_photo(tmp_path / "car.jpg"))}
    argv = [arg.format(**names) for arg in argv]
    out = tmp_path / "cams"
    assert _run(checkpoint, *argv, "--out_dir", str(out)) == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_bad_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "best.pt"
    bad.write_text("not a checkpoint")
    photo = _photo(tmp_path / "car.jpg")
    assert visualize.main([str(bad), "--images", str(photo), "--out_dir", str(tmp_path / "cams")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("visualize.py: error:") and "best.pt" in err[0]


def test_python_face_takes_pil_images_paths_methods_and_classes(checkpoint: Path, tmp_path: Path) -> None:
    path = _photo(tmp_path / "car.jpg")
    image = Image.open(path)
    by_path, by_image = next(explain_photos(checkpoint, path)), next(explain_photos(checkpoint, [image]))
    assert (by_path.file, by_image.file) == (str(path), "<image 0>")
    assert by_path.classes == by_image.classes and by_path.box == pytest.approx(by_image.box)
    assert by_path.explained == by_path.classes[0] and by_path.probability == by_path.probabilities[0]
    overlay = by_path.overlay()
    assert overlay.size == (80, 60) and overlay.mode == "RGB"
    chosen = next(explain_photos(checkpoint, path, class_idx=2, method="gradcam"))
    assert chosen.explained == CLASSES[2] and chosen.method == "gradcam"
    assert chosen.probability == pytest.approx(dict(zip(chosen.classes, chosen.probabilities))[CLASSES[2]])
    model, _ = load_checkpoint(checkpoint)
    from_model = next(explain_photos(model, path, image_size=64, class_names=CLASSES))
    np.testing.assert_array_equal(from_model.map, by_path.map)


@pytest.mark.parametrize(("method", "class_idx"), [("cam", None), ("cam", 1), ("gradcam", None), ("layercam", 2)])
def test_chosen_maps_are_compute_cams_of_the_chosen_class(checkpoint: Path, method: str, class_idx: int | None) -> None:
    model, _ = load_checkpoint(checkpoint)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model.forward_head(features)
    batch = ScoredBatch(images, torch.full((2,), -1), torch.full((2, 4), float("nan")), features, logits, 0)
    expected = compute_cams(model, images, method, class_idx=class_idx)
    torch.testing.assert_close(chosen_maps(method, class_idx)(model, batch), expected)


def test_workers_decode_the_same_as_the_main_process(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / f"car{i}.png", seed=i)
    (photos / "broken.png").write_text("not an image")
    outs = [tmp_path / f"cams{workers}" for workers in (0, 2)]
    for workers, out in zip((0, 2), outs):
        args = ("--images", str(photos), "--out_dir", str(out), "--batch_size", "2", "--num_workers", str(workers))
        assert _run(checkpoint, *args) == 1
    assert _rows(outs[0] / "predictions.csv") == _rows(outs[1] / "predictions.csv")
    assert capsys.readouterr().err.count("skipped") == 2


def test_a_rerun_does_not_explain_its_own_overlays(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _photo(Path("car.jpg"))
    for _ in range(2):
        assert _run(checkpoint, "--images", ".", "--out_dir", "cams") == 0
    assert [row["file"] for row in _rows(Path("cams/predictions.csv"))] == ["car.jpg"]
    assert not Path("cams/cams").exists()
