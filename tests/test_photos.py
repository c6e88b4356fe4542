"""Explaining your own photos: inputs, decoding, the records, the files written and the command."""

from __future__ import annotations

import csv
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models
from torchvision.transforms.functional import normalize

from CAM_Stanford_Cars import photos as photos_module
from CAM_Stanford_Cars import visualize
from CAM_Stanford_Cars.cams import compute_cams
from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.model import AlexNetGAP, load_checkpoint
from CAM_Stanford_Cars.overlay import apply_cam
from CAM_Stanford_Cars.photos import (
    CSV_COLUMNS,
    Photo,
    PhotoError,
    PhotoInputError,
    blend_map,
    decode_photo,
    display_size,
    explain_photos,
    find_photos,
    write_explanations,
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


@pytest.mark.parametrize(
    ("alpha", "colormap", "flat"),
    [(0.5, "jet", False), (0.3, "viridis", False), (1.0, "inferno", False), (0.5, "jet", True)],
)
def test_the_overlay_in_8_bits_is_apply_cams(alpha: float, colormap: str, flat: bool) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)
    cam = np.zeros((64, 64), np.float32) if flat else rng.random((64, 64), dtype=np.float32)
    photo = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255)
    plain = apply_cam(photo, torch.from_numpy(cam), alpha=alpha, colormap=colormap).numpy().transpose(1, 2, 0)
    fast = blend_map(pixels, cam, alpha, colormap)
    assert fast.shape == pixels.shape and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - (plain * 255 + 0.5).astype(np.uint8)).max() <= 1


def _explain_into(checkpoint: Path, photos: list[Photo], out: Path, **kwargs: object) -> int:
    model, _ = load_checkpoint(checkpoint)
    return write_explanations(model, CLASSES, 64, photos, out, batch_size=2, **kwargs)


def test_an_error_of_the_writer_is_raised_and_no_csv_written(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        _photo(tmp_path / "photos" / f"car{i}.jpg", seed=i)
    photos = find_photos([str(tmp_path / "photos")])
    written = []

    def write_overlay(record: photos_module.PhotoExplanation, *args: object) -> None:
        if record.file.endswith("car2.jpg"):
            raise OSError(28, "could not write 'car2.jpg': No space left on device")
        written.append(record.file)

    monkeypatch.setattr(photos_module, "write_overlay", write_overlay)
    out = tmp_path / "cams"
    with pytest.raises(OSError, match="No space left"):
        _explain_into(checkpoint, photos, out)
    assert [Path(name).name for name in written] == ["car0.jpg", "car1.jpg"]  # none after the error
    assert not (out / "predictions.csv").exists()


def test_an_interrupt_leaves_whole_files_only(checkpoint: Path, tmp_path: Path) -> None:
    for i in range(6):
        _photo(tmp_path / "photos" / f"car{i}.jpg", seed=i)
    (tmp_path / "photos" / "car3.jpg").write_text("not an image")  # in the second batch

    def interrupt(error: PhotoError) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "cams"
    with pytest.raises(KeyboardInterrupt):
        _explain_into(checkpoint, find_photos([str(tmp_path / "photos")]), out, save_maps=True, on_error=interrupt)
    # The overlays already handed to the writer may or may not be written, but each one whole; no temp file stays.
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert set(files) <= {"car0.jpg", "car0.npy", "car1.jpg", "car1.npy"}, files
    for path in out.glob("*.jpg"):
        assert Image.open(path).size == (80, 60)
    for path in out.glob("*.npy"):
        assert np.load(path).shape == (64, 64)


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


IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's name for ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs torch.hub was asked to download; each fails as it would with no network."""
    asked: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        asked.append(url)
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return asked


@pytest.fixture
def imagenet_resnet18() -> torch.nn.Module:
    """A seeded random torchvision ResNet-18, its weights saved under torchvision's file name in the test's own torch
    hub cache (where ``--imagenet resnet18`` looks)."""
    torch.manual_seed(0)
    reference = models.resnet18().eval()
    path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    return reference


def test_imagenet_explains_the_whole_photo_with_torchvisions_classes(
    imagenet_resnet18: torch.nn.Module, tmp_path: Path, no_download: list[str]
) -> None:
    photos = [_photo(tmp_path / "photos" / f"car{i}.jpg", seed=i, size=(90, 50)) for i in range(2)]
    out = tmp_path / "cams"
    argv = ["--imagenet", "resnet18", "--images", str(tmp_path / "photos"), "--out_dir", str(out), "--save_maps"]
    assert visualize.main(argv) == 0
    assert no_download == []  # the cached file was used
    weights = models.ResNet18_Weights.IMAGENET1K_V1
    categories = weights.meta["categories"]
    rows = _rows(out / "predictions.csv")
    assert [row["file"] for row in rows] == [str(p) for p in photos]
    for row, photo in zip(rows, photos):
        # torchvision's own network and normalisation on the whole photo resized to 224 x 224 (not cropped).
        image = decode_photo(Photo(str(photo), Path(photo.stem), path=str(photo)), 224, 1024)[0]
        with torch.no_grad():
            logits = imagenet_resnet18(normalize(image[None], weights.transforms().mean, weights.transforms().std))
        top = logits.softmax(dim=1)[0].topk(5)
        assert [row[f"class_{k}"] for k in range(1, 6)] == [categories[i] for i in top.indices.tolist()]
        assert [float(row[f"prob_{k}"]) for k in range(1, 6)] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert (row["width"], row["height"], row["threshold"], row["method"]) == ("90", "50", "0.2", "cam")
        assert Image.open(out / f"{photo.stem}.jpg").size == (90, 50)
        assert np.load(out / f"{photo.stem}.npy").shape == (224, 224)
    assert visualize.main([*argv, "--threshold", "0.5"]) == 0
    assert {row["threshold"] for row in _rows(out / "predictions.csv")} == {"0.5"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{checkpoint}", "--imagenet", "resnet18", "--images", "{photo}"], "a checkpoint or --imagenet, not both"),
        (["--images", "{photo}"], "the following arguments are required: checkpoint (or --imagenet ARCH"),
        (["--imagenet", "resnet18"], "--imagenet explains your own photos: add --images"),
        (["--imagenet", "vgg16", "--images", "{photo}"], "argument --imagenet: invalid choice: 'vgg16'"),
        (["{checkpoint}", "--report", "{out}/index.html"], "--report here is the page of your own photos"),
        (["{checkpoint}", "--images", "{photo}", "--report", "{out}/index.txt"], "does not end in .html"),
    ],
)
def test_model_and_report_usage_errors_are_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    names = {"checkpoint": str(checkpoint), "photo": str(_photo(tmp_path / "car.jpg")), "out": str(tmp_path / "o")}
    try:
        status = visualize.main([arg.format(**names) for arg in argv])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1 and "usage:" not in err


def test_imagenet_without_its_weights_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_download: list[str]
) -> None:
    out = tmp_path / "cams"
    photo = _photo(tmp_path / "car.jpg")
    assert visualize.main(["--imagenet", "resnet18", "--images", str(photo), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert err.count("\n") == 1 and err.startswith("visualize.py: error:")
    assert IMAGENET_FILE in err and f"put it in {hub}" in err
    assert len(no_download) == 1 and not out.exists()


class _Page(HTMLParser):
    """The gallery's cards: their attributes and text, in document order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cards: list[dict[str, str | None]] = []
        self.texts: list[str] = []
        self.body: dict[str, str | None] = {}
        self.depth = 0  # of divs inside the current card
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        elif tag == "div" and values.get("class") == "card":
            self.cards.append(values)
            self.texts.append("")
            self.depth = 1
        elif tag == "div" and self.depth:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.texts[-1] += data


def test_the_report_of_photos_is_one_page_of_cards_without_a_true_class(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    for i, name in enumerate(["a.jpg", "b/c.png", "<b>&'quoted\".jpg"]):
        _photo(photos / name, seed=i)
    (photos / "broken.jpg").write_text("not an image")
    out = tmp_path / "cams"
    page = out / "index.html"
    argv = ["--images", str(photos), "--out_dir", str(out), "--report", str(page), "--class", CLASSES[1]]
    assert _run(checkpoint, *argv) == 1
    assert "3 explained, 1 skipped" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    parsed = _Page(text)
    rows = _rows(out / "predictions.csv")
    assert len(parsed.cards) == len(rows) == 3
    assert "<b>&" not in text and "&lt;b&gt;&amp;&#x27;quoted&quot;.jpg" in text  # file names escaped
    for card, body, row in zip(parsed.cards, parsed.texts, rows):
        assert float(card["data-conf"]) == pytest.approx(float(row["prob_1"]), abs=1e-4)
        assert card["data-cls"] == str(CLASSES.index(row["class_1"]))
        assert card["data-iou"] == card["data-right"] == card["data-hit"] == ""
        assert f"pred: {row['class_1']}" in body and "true" not in body and "IoU" not in body
        assert (f"map of {CLASSES[1]}" in body) == (row["class_1"] != CLASSES[1])
        assert Path(row["file"]).name in body
    assert "<h2>Gallery" in text and "3 explained, 1 skipped" in text and "<script>" in text
    assert "http://" not in text and "https://" not in text  # self-contained
    assert str(tmp_path) not in text and 'title="b/c.png"' in text  # shared: no path of this machine
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    command += [f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    done = subprocess.run([*command, f"{page.as_uri()}?sort=-conf"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Page(done.stdout)
    assert dom.body.get("data-ready") == "1" and not dom.body.get("data-errors"), dom.body
    confidences = [float(card["data-conf"]) for card in dom.cards]
    assert len(confidences) == 3 and confidences == sorted(confidences, reverse=True)
