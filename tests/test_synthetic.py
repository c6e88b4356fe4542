"""The synthetic Stanford Cars: real file format, class-dependent cars, class-free backgrounds, true boxes."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torchvision
from PIL import Image

from CAM_Stanford_Cars.data.class_names import STANFORD_CARS_CLASS_NAMES
from CAM_Stanford_Cars.synthetic import (
    DEFAULT_CLASS_NAMES,
    MARKER_FILE,
    TINY_CLASS_NAMES,
    car_look,
    draw_background,
    render_image,
    write_synthetic_stanford_cars,
    write_tiny_stanford_cars,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_NAMES = (FIXTURES / "stanford_cars_class_names.txt").read_text().splitlines()
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_stanford_cars(tmp_path_factory.mktemp("tiny"))


def test_shipped_class_names_are_the_real_196_in_meta_order() -> None:
    assert list(STANFORD_CARS_CLASS_NAMES) == REAL_NAMES
    assert len(set(STANFORD_CARS_CLASS_NAMES)) == 196


def test_torchvision_layout_files_are_shaped_like_the_devkit(tiny: Path) -> None:
    base = tiny / "stanford_cars"
    assert {p.name for p in base.iterdir()} == {
        "devkit",
        "cars_train",
        "cars_test",
        "cars_test_annos_withlabels.mat",
        MARKER_FILE,
    }
    meta = sio.loadmat(base / "devkit" / "cars_meta.mat")
    assert meta["class_names"].shape == (1, 196)  # a 1x196 cell array, as in the devkit
    assert sio.loadmat(base / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"].tolist() == REAL_NAMES
    raw = sio.loadmat(base / "devkit" / "cars_train_annos.mat")["annotations"]
    assert raw.shape == (1, 9) and raw[0, 0]["class"].shape == (1, 1)
    train = sio.loadmat(base / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    assert set(train.dtype.names) == {"fname", "class", *BOX_FIELDS}
    assert [a["fname"] for a in train] == [f"{i:05d}.jpg" for i in range(1, 10)]
    assert sorted({int(a["class"]) for a in train}) == sorted(
        STANFORD_CARS_CLASS_NAMES.index(n) + 1 for n in TINY_CLASS_NAMES
    )
    unlabeled = sio.loadmat(base / "devkit" / "cars_test_annos.mat", squeeze_me=True)["annotations"]
    assert "class" not in unlabeled.dtype.names  # the devkit's own test file carries no labels
    labeled = sio.loadmat(base / "cars_test_annos_withlabels.mat", squeeze_me=True)["annotations"]
    assert len(labeled) == 6 and "class" in labeled.dtype.names
    assert sorted(p.name for p in (base / "cars_test").iterdir()) == [f"{i:05d}.jpg" for i in range(1, 7)]


def test_torchvision_reads_it(tiny: Path) -> None:
    train = torchvision.datasets.StanfordCars(str(tiny), split="train", download=False)
    test = torchvision.datasets.StanfordCars(str(tiny), split="test", download=False)
    assert len(train) == 9 and len(test) == 6
    assert train.classes == REAL_NAMES
    image, label = train[2]
    assert image.mode == "RGB" and train.classes[label] in TINY_CLASS_NAMES


def test_boxes_in_the_annotations_enclose_the_car_inside_the_image(tiny: Path) -> None:
    base = tiny / "stanford_cars"
    for annotation in sio.loadmat(base / "cars_test_annos_withlabels.mat", squeeze_me=True)["annotations"]:
        width, height = Image.open(base / "cars_test" / annotation["fname"]).size
        x1, y1, x2, y2 = (int(annotation[f]) for f in BOX_FIELDS)
        assert 1 <= x1 < x2 <= width and 1 <= y1 < y2 <= height  # 1-based inclusive, as in the devkit


def test_box_is_exactly_the_pixels_the_car_changed() -> None:
    size = (300, 200)
    for seed in range(4):
        image, box = render_image("BMW M3 Coupe 2012", size, np.random.default_rng(seed))
        background = draw_background(np.random.default_rng(seed), *size)
        changed = np.any(np.asarray(image) != np.asarray(background), axis=2)
        ys, xs = np.nonzero(changed)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == box
        assert not changed[:, : box[0]].any() and not changed[: box[1]].any()


def test_background_does_not_depend_on_the_class() -> None:
    size = (320, 200)
    image_a, box_a = render_image(DEFAULT_CLASS_NAMES[0], size, np.random.default_rng(7))
    image_b, box_b = render_image(DEFAULT_CLASS_NAMES[6], size, np.random.default_rng(7))
    outside = np.ones(size[::-1], dtype=bool)
    for x1, y1, x2, y2 in (box_a, box_b):
        outside[y1:y2, x1:x2] = False
    assert outside.sum() > 1000
    assert np.array_equal(np.asarray(image_a)[outside], np.asarray(image_b)[outside])


def test_each_default_class_looks_different() -> None:
    looks = [car_look(name) for name in DEFAULT_CLASS_NAMES]
    assert car_look(DEFAULT_CLASS_NAMES[0]) == looks[0]  # deterministic, not Python's salted hash()
    for a, b in itertools.combinations(looks, 2):
        distance = np.linalg.norm(np.subtract(a.color, b.color))
        assert a.family != b.family or distance > 90, (a, b)
    families = {look.family for look in looks}
    assert {"sedan", "coupe", "van", "pickup", "suv", "hatchback"} <= families
    assert car_look("Chevrolet Corvette ZR1 2012").family == "sports"  # no body type in the name


def test_class_lives_in_the_box_not_in_the_background(tmp_path: Path) -> None:
    """Nearest-centroid on colour: the box tells the class apart, the rest of the image does not."""
    root = write_synthetic_stanford_cars(tmp_path, n_train_per_class=6, n_test_per_class=4, image_size=(240, 160))
    base = root / "stanford_cars"

    def features(split: str, mat: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inside, outside, labels = [], [], []
        for a in sio.loadmat(mat, squeeze_me=True)["annotations"]:
            pixels = np.asarray(Image.open(base / f"cars_{split}" / a["fname"]).convert("RGB"), dtype=np.float64)
            mask = np.zeros(pixels.shape[:2], dtype=bool)
            mask[int(a["bbox_y1"]) - 1 : int(a["bbox_y2"]), int(a["bbox_x1"]) - 1 : int(a["bbox_x2"])] = True
            inside.append(np.concatenate([pixels[mask].mean(0), np.median(pixels[mask], 0)]))
            outside.append(pixels[~mask].mean(0))
            labels.append(int(a["class"]))
        return np.array(inside), np.array(outside), np.array(labels)

    def nearest_centroid_accuracy(
        x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
    ) -> float:
        classes = np.unique(y_train)
        centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
        predicted = classes[np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
        return float((predicted == y_test).mean())

    in_train, out_train, y_train = features("train", base / "devkit" / "cars_train_annos.mat")
    in_test, out_test, y_test = features("test", base / "cars_test_annos_withlabels.mat")
    assert nearest_centroid_accuracy(in_train, y_train, in_test, y_test) >= 0.75
    assert nearest_centroid_accuracy(out_train, y_train, out_test, y_test) <= 0.35  # chance is 1/8


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        files = sorted(p for p in (root / "stanford_cars").rglob("*") if p.is_file() and p.name != MARKER_FILE)
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    kwargs = dict(class_names=TINY_CLASS_NAMES, n_train_per_class=2, n_test_per_class=1, image_size=(96, 64))
    a = write_synthetic_stanford_cars(tmp_path / "a", seed=1, **kwargs)
    b = write_synthetic_stanford_cars(tmp_path / "b", seed=1, **kwargs)
    c = write_synthetic_stanford_cars(tmp_path / "c", seed=2, **kwargs)
    assert digest(a) == digest(b) != digest(c)


def test_images_have_realistic_varied_sizes(tmp_path: Path) -> None:
    root = write_synthetic_stanford_cars(
        tmp_path, class_names=TINY_CLASS_NAMES[:1], n_train_per_class=6, n_test_per_class=1
    )
    sizes = {Image.open(p).size for p in (root / "stanford_cars" / "cars_train").glob("*.jpg")}
    assert len(sizes) > 3
    assert all(595 <= w <= 805 and 382 <= h <= 518 for w, h in sizes)


def test_grayscale_and_cmyk_option(tiny: Path) -> None:
    modes = [Image.open(p).mode for p in sorted((tiny / "stanford_cars" / "cars_train").glob("*.jpg"))]
    assert modes[:2] == ["L", "CMYK"] and set(modes[2:]) == {"RGB"}
    assert all(Image.open(p).format == "JPEG" for p in (tiny / "stanford_cars" / "cars_train").glob("*.jpg"))


def test_kaggle_layout(tmp_path: Path) -> None:
    base = write_tiny_stanford_cars(tmp_path, layout="kaggle") / "stanford_cars"
    assert len(list((base / "cars_train" / "cars_train").glob("*.jpg"))) == 9
    assert len(list((base / "cars_test" / "cars_test").glob("*.jpg"))) == 6
    assert (base / "car_devkit" / "devkit" / "cars_meta.mat").is_file()
    assert (base / "cars_test_annos_withlabels.mat").is_file()


def test_car_ims_layout(tmp_path: Path) -> None:
    base = write_tiny_stanford_cars(tmp_path, layout="car_ims") / "stanford_cars"
    mat = sio.loadmat(base / "cars_annos.mat", squeeze_me=True)
    annotations = mat["annotations"]
    assert set(annotations.dtype.names) == {"relative_im_path", "class", "test", *BOX_FIELDS}
    assert mat["class_names"].tolist() == REAL_NAMES
    assert [a["relative_im_path"] for a in annotations] == [f"car_ims/{i:06d}.jpg" for i in range(1, 16)]
    assert sorted(int(a["test"]) for a in annotations) == [0] * 9 + [1] * 6
    assert [int(a["test"]) for a in annotations] != sorted(int(a["test"]) for a in annotations)  # splits interleave
    assert all((base / a["relative_im_path"]).is_file() for a in annotations)


def test_rewrites_its_own_folder_but_refuses_a_real_one(tmp_path: Path) -> None:
    kwargs = dict(class_names=TINY_CLASS_NAMES[:1], n_test_per_class=1, image_size=(64, 48))
    write_synthetic_stanford_cars(tmp_path, n_train_per_class=2, **kwargs)
    write_synthetic_stanford_cars(tmp_path, n_train_per_class=1, **kwargs)
    assert len(list((tmp_path / "stanford_cars" / "cars_train").iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    other = tmp_path / "real"
    (other / "stanford_cars").mkdir(parents=True)
    (other / "stanford_cars" / "precious.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a synthetic"):
        write_synthetic_stanford_cars(other, n_train_per_class=1, **kwargs)
    assert (other / "stanford_cars" / "precious.jpg").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(class_names=["BMW M3 Coupe 2013"]), "BMW M3 Coupe 2012"),
        (dict(class_names=[]), "empty"),
        (dict(layout="imagefolder"), "layout"),
        (dict(n_train_per_class=-1), "n_train_per_class"),
        (dict(class_names=["BMW M3 Coupe 2012"] * 2), "repeats"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_synthetic_stanford_cars(tmp_path, **kwargs)


def test_a_few_hundred_images_in_a_few_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_synthetic_stanford_cars(tmp_path, n_train_per_class=9, n_test_per_class=3)  # 96 images of ~700x450
    assert time.perf_counter() - start < 10.0
