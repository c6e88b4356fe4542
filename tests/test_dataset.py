"""StanfordCarsCAM: layouts, torchvision parity, class names and filters, items and boxes, errors, download."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io as sio
import torch
import torchvision
from PIL import Image, JpegImagePlugin
from torch.utils.data import DataLoader

from CAM_Stanford_Cars.data import download as download_module
from CAM_Stanford_Cars.data import images as images_module
from CAM_Stanford_Cars.data import layouts as layouts_module
from CAM_Stanford_Cars.data.common import (
    KAGGLE_HANDLE,
    AnnotationError,
    DatasetError,
    DatasetNotFoundError,
    DownloadError,
    ImageLoadError,
    MissingImageError,
)
from CAM_Stanford_Cars.data.download import Mirror, download_stanford_cars
from CAM_Stanford_Cars.data.layouts import find_layout
from CAM_Stanford_Cars.data.names import (
    CarClass,
    ClassToIdx,
    format_filter_summary,
    parse_class_name,
    select_classes,
    summarize,
)
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.synthetic import TINY_CLASS_NAMES, write_synthetic_stanford_cars, write_tiny_stanford_cars

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_NAMES = (FIXTURES / "stanford_cars_class_names.txt").read_text().splitlines()
SEED_FILTERS = dict(car_brand="BMW", car_type="Sedan", car_production_year=2012)
SEED_CLASSES = ["BMW ActiveHybrid 5 Sedan 2012", "BMW 3 Series Sedan 2012"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes (the two BMW 2012 sedans and a Jeep), 9 train and 6 test images, one grayscale and one CMYK."""
    return write_tiny_stanford_cars(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny set, for tests that damage it."""
    shutil.copytree(tiny_root, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="module")
def rectangle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set, each image replaced by black with a white rectangle exactly on its annotated box.

    The columns left of the box are dark grey, so a view shows which way round it is.
    """
    root = write_tiny_stanford_cars(tmp_path_factory.mktemp("rectangles"))
    base = root / "stanford_cars"
    for split, mat in (
        ("train", base / "devkit" / "cars_train_annos.mat"),
        ("test", base / "cars_test_annos_withlabels.mat"),
    ):
        for a in sio.loadmat(mat, squeeze_me=True)["annotations"]:
            path = base / f"cars_{split}" / a["fname"]
            width, height = Image.open(path).size
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[:, : int(a["bbox_x1"]) - 1] = 100
            pixels[int(a["bbox_y1"]) - 1 : int(a["bbox_y2"]), int(a["bbox_x1"]) - 1 : int(a["bbox_x2"])] = 255
            Image.fromarray(pixels).save(path, "JPEG", quality=100)
    return root


def white_extent(image: torch.Tensor) -> tuple[float, float, float, float]:
    """Half-open box of the pixels brighter than mid-grey in a (3, H, W) image."""
    ys, xs = torch.nonzero(image.mean(0) > 0.5, as_tuple=True)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


# --------------------------------------------------------------------------------------------
# Class names


def test_all_196_real_names_parse() -> None:
    cars = [parse_class_name(name) for name in REAL_NAMES]
    assert all(isinstance(car, CarClass) and car.model for car in cars)
    assert sum(car.body_type is None for car in cars) == 15
    assert Counter(car.body_type for car in cars) == {
        "Sedan": 46,
        "SUV": 34,
        "Convertible": 26,
        "Coupe": 25,
        None: 15,
        "Hatchback": 13,
        "Crew Cab": 8,
        "Wagon": 6,
        "Minivan": 6,
        "Regular Cab": 4,
        "Extended Cab": 3,
        "Van": 3,
        "Cargo Van": 2,
        "Quad Cab": 1,
        "Club Cab": 1,
        "SuperCab": 1,
        "Wagon Van": 1,
        "Passenger Van": 1,
    }
    assert len({car.make for car in cars}) == 49
    assert Counter(car.year for car in cars)[2012] == 117
    naive_wrong = [n for n, car in zip(REAL_NAMES, cars) if (n.split()[0], n.split()[-2]) != (car.make, car.body_type)]
    assert len(naive_wrong) == 43  # the count of names a "first word, second-to-last word" rule gets wrong


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AM General Hummer SUV 2000", ("AM General", "Hummer", "SUV", 2000)),
        ("Aston Martin V8 Vantage Coupe 2012", ("Aston Martin", "V8 Vantage", "Coupe", 2012)),
        ("Land Rover Range Rover SUV 2012", ("Land Rover", "Range Rover", "SUV", 2012)),
        (
            "Chevrolet Silverado 1500 Classic Extended Cab 2007",
            ("Chevrolet", "Silverado 1500 Classic", "Extended Cab", 2007),
        ),
        ("Ford E-Series Wagon Van 2012", ("Ford", "E-Series", "Wagon Van", 2012)),
        ("Ram C/V Cargo Van Minivan 2012", ("Ram", "C/V Cargo Van", "Minivan", 2012)),
        (
            "Rolls-Royce Phantom Drophead Coupe Convertible 2012",
            ("Rolls-Royce", "Phantom Drophead Coupe", "Convertible", 2012),
        ),
        ("Infiniti G Coupe IPL 2012", ("Infiniti", "G Coupe IPL", None, 2012)),
        (
            "Bentley Continental Supersports Conv. Convertible 2012",
            ("Bentley", "Continental Supersports Conv.", "Convertible", 2012),
        ),
        ("Ford Ranger SuperCab 2011", ("Ford", "Ranger", "SuperCab", 2011)),
        ("Nissan NV Passenger Van 2012", ("Nissan", "NV", "Passenger Van", 2012)),
        ("Acura TL Type-S 2008", ("Acura", "TL Type-S", None, 2008)),
        (
            "Lamborghini Gallardo LP 570-4 Superleggera 2012",
            ("Lamborghini", "Gallardo LP 570-4 Superleggera", None, 2012),
        ),
        ("smart fortwo Convertible 2012", ("smart", "fortwo", "Convertible", 2012)),
    ],
)
def test_tricky_names(name: str, expected: tuple) -> None:
    assert tuple(parse_class_name(name)) == expected


@pytest.mark.parametrize("name", ["BMW M3 Coupe", "BMW 2012", "", "BMW M3 Coupe '12"])
def test_unparseable_name(name: str) -> None:
    with pytest.raises(ValueError, match="year|model"):
        parse_class_name(name)


# --------------------------------------------------------------------------------------------
# Filters


def names_of(indices: list[int]) -> list[str]:
    return [REAL_NAMES[i] for i in indices]


def test_seed_filter_keeps_the_two_bmw_2012_sedans_in_meta_order() -> None:
    assert names_of(select_classes(REAL_NAMES, **SEED_FILTERS)) == SEED_CLASSES
    assert (
        names_of(select_classes(REAL_NAMES, car_brand="bmw", car_type="SEDAN", car_production_year="2012"))
        == SEED_CLASSES
    )


def test_no_filter_keeps_everything() -> None:
    assert select_classes(REAL_NAMES) == list(range(196))


@pytest.mark.parametrize(
    ("filters", "expected_count", "must_have", "must_not_have"),
    [
        (dict(car_brand="land rover"), 2, "Land Rover LR2 SUV 2012", None),
        (dict(car_brand="Rover"), 2, "Land Rover Range Rover SUV 2012", None),
        (dict(car_brand=["Audi", "BMW"]), 27, "Audi V8 Sedan 1994", "Bentley Arnage Sedan 2009"),
        (dict(car_type="Cab"), 17, "Dodge Dakota Club Cab 2007", "Ford Ranger SuperCab 2011"),
        (dict(car_type="Van"), 7, "Ford E-Series Wagon Van 2012", "Honda Odyssey Minivan 2012"),
        (dict(car_type="Coupe"), 25, "Audi A5 Coupe 2012", "Infiniti G Coupe IPL 2012"),
        (
            dict(car_type="Convertible", car_brand="Rolls-Royce"),
            1,
            "Rolls-Royce Phantom Drophead Coupe Convertible 2012",
            None,
        ),
        (dict(car_production_year=[1991, 1993]), 4, "Volvo 240 Sedan 1993", "Volkswagen Golf Hatchback 2012"),
        (
            dict(car_brand="Mercedes-Benz", car_production_year=2012),
            4,
            "Mercedes-Benz Sprinter Van 2012",
            "Mercedes-Benz SL-Class Coupe 2009",
        ),
    ],
)
def test_filters_are_case_insensitive_whole_words(
    filters: dict, expected_count: int, must_have: str, must_not_have: str | None
) -> None:
    kept = names_of(select_classes(REAL_NAMES, **filters))
    assert len(kept) == expected_count and must_have in kept
    assert must_not_have is None or must_not_have not in kept
    assert kept == [n for n in REAL_NAMES if n in kept]  # meta order


def test_whole_word_never_matches_part_of_a_word() -> None:
    with pytest.raises(ValueError, match="car_brand='BM'"):
        select_classes(REAL_NAMES, car_brand="BM")


def test_no_match_names_the_filter_and_lists_what_exists_with_counts() -> None:
    counts = [10] * 196
    with pytest.raises(ValueError) as info:
        select_classes(REAL_NAMES, car_brand="BMW", car_type="Hatchback", image_counts=counts, split="train")
    message = str(info.value)
    assert "car_type='Hatchback'" in message and "car_brand='BMW'" in message
    assert "Sedan (3 classes, 30 train images)" in message and "Convertible (4 classes, 40 train images)" in message
    with pytest.raises(ValueError, match=r"car_production_year=1800 .*2012 \(117 classes"):
        select_classes(REAL_NAMES, car_production_year=1800, image_counts=counts, split="test")


@pytest.mark.parametrize(
    "filters",
    [dict(car_production_year="twenty"), dict(car_production_year=True), dict(car_brand=[]), dict(car_type=" ")],
)
def test_malformed_filter_values(filters: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(filters))):
        select_classes(REAL_NAMES, **filters)


def test_dataset_filters_and_renumbers(tiny_root: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="train", **SEED_FILTERS)
    assert cars.classes == SEED_CLASSES
    assert sorted(set(cars.targets)) == [0, 1] and len(cars) == 6
    full = StanfordCarsCAM(tiny_root, split="train")
    expected = [(p, SEED_CLASSES.index(full.classes[t])) for p, t in full.samples if full.classes[t] in SEED_CLASSES]
    assert cars.samples == expected
    assert cars.class_ids == [25, 28]


def test_filter_matching_classes_without_images_is_an_error(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match="no image"):
        StanfordCarsCAM(tiny_root, car_brand="Audi")


def test_dataset_no_match_lists_values_with_image_counts(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match=r"car_brand='Tesl' matches no class.*BMW \(13 classes, 6 train images\)"):
        StanfordCarsCAM(tiny_root, car_brand="Tesl")


# --------------------------------------------------------------------------------------------
# class_to_idx


def test_class_to_idx_maps_both_ways() -> None:
    mapping = ClassToIdx(SEED_CLASSES)
    assert mapping == {SEED_CLASSES[0]: 0, SEED_CLASSES[1]: 1}  # torchvision's dict
    assert list(mapping) == SEED_CLASSES and len(mapping) == 2
    assert mapping[1] == SEED_CLASSES[1] and mapping[SEED_CLASSES[1]] == 1
    assert mapping[np.int64(0)] == mapping[torch.tensor(0)] == SEED_CLASSES[0]
    assert 1 in mapping and 2 not in mapping and SEED_CLASSES[0] in mapping
    assert mapping.get(5) is None and mapping.get(0) == SEED_CLASSES[0]
    for bad in (2, -1, 1.5, "Tesla"):
        with pytest.raises(KeyError):
            mapping[bad]
    clone = pickle.loads(pickle.dumps(mapping))
    assert clone[0] == SEED_CLASSES[0] and clone == mapping


def test_seed_readme_snippet(tiny_root: Path) -> None:
    """The seed README's visualisation loop, with a stand-in for the model's output."""
    cars_dataset = StanfordCarsCAM(tiny_root, generate_img_for_cam=True, split="test", image_size=64, **SEED_FILTERS)
    cars_dataloader = DataLoader(cars_dataset, batch_size=2, shuffle=True)
    for batch in cars_dataloader:
        image_predict, image_visualize, labels = batch
        output = torch.nn.functional.one_hot(labels, 2).float()
        predicted_classes = [cars_dataset.class_to_idx[element] for element in torch.argmax(output, 1).tolist()]
        assert predicted_classes == [SEED_CLASSES[int(label)] for label in labels]
        assert image_predict.shape == image_visualize.shape == (2, 3, 64, 64)
        break


# --------------------------------------------------------------------------------------------
# Layouts and torchvision parity


@pytest.mark.parametrize("split", ["train", "test"])
def test_same_samples_and_classes_as_torchvision(tiny_root: Path, split: str) -> None:
    reference = torchvision.datasets.StanfordCars(str(tiny_root), split=split, download=False)
    cars = StanfordCarsCAM(str(tiny_root), split=split)
    assert cars.samples == reference._samples
    assert cars.classes == reference.classes == REAL_NAMES
    assert cars.class_to_idx == reference.class_to_idx
    assert cars.targets == [int(label) for _, label in reference._samples]
    assert len(set(cars.targets)) == 3 and cars.targets != sorted(cars.targets)  # the order is the file's, not sorted
    assert cars.layout.kind == "torchvision"


def test_root_may_be_the_stanford_cars_folder(tiny_root: Path) -> None:
    via_root = StanfordCarsCAM(tiny_root, split="test")
    direct = StanfordCarsCAM(tiny_root / "stanford_cars", split="test")
    assert direct.samples == via_root.samples and direct.layout.base == via_root.layout.base


@pytest.mark.parametrize("layout", ["kaggle", "car_ims"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_other_layouts_give_the_same_data(tiny_root: Path, tmp_path: Path, layout: str, split: str) -> None:
    other = write_tiny_stanford_cars(tmp_path, layout=layout)
    reference = StanfordCarsCAM(tiny_root, split=split)
    cars = StanfordCarsCAM(other, split=split)
    assert cars.layout.kind == layout and cars.classes == reference.classes

    def content(ds: StanfordCarsCAM) -> list[tuple[int, tuple[float, ...], bytes]]:
        return sorted((t, tuple(b), Path(p).read_bytes()) for (p, t), b in zip(ds.samples, ds.boxes))

    assert content(cars) == content(reference)


def test_kaggle_layout_with_plain_devkit_and_root_at_its_folder(tmp_path: Path) -> None:
    base = write_tiny_stanford_cars(tmp_path, layout="kaggle") / "stanford_cars"
    (base / "car_devkit" / "devkit").rename(base / "devkit")
    cars = StanfordCarsCAM(base, split="train")
    assert cars.layout.kind == "kaggle" and len(cars) == 9
    assert all("cars_train/cars_train/" in p.replace("\\", "/") for p, _ in cars.samples)


def test_nothing_there_says_what_was_looked_for_and_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing_here"
    with pytest.raises(DatasetNotFoundError) as info:
        StanfordCarsCAM(missing)
    message = str(info.value)
    for needle in (
        str(missing),
        "devkit/cars_meta.mat",
        "cars_test_annos_withlabels.mat",
        "cars_train/cars_train",
        "car_ims",
        "cars_annos.mat",
        "--download_datasets",
        KAGGLE_HANDLE,
    ):
        assert needle in message, needle
    assert isinstance(info.value, FileNotFoundError)


def test_partial_copy_names_what_is_missing(tiny_copy: Path) -> None:
    (tiny_copy / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    assert len(StanfordCarsCAM(tiny_copy, split="train")) == 9  # the train split does not need it
    with pytest.raises(DatasetNotFoundError, match=r"incomplete.*cars_test_annos_withlabels\.mat.*has no labels"):
        StanfordCarsCAM(tiny_copy, split="test")


# --------------------------------------------------------------------------------------------
# Items and boxes


def test_item_is_a_float_rgb_square_in_unit_range(tiny_root: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="test", image_size=96)
    image, label = cars[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.std()) > 0.05
    assert isinstance(label, int) and label == cars.targets[0]


def test_grayscale_and_cmyk_files_come_back_as_rgb(tiny_root: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="train", augment=False, image_size=48)
    modes = [Image.open(path).mode for path, _ in cars.samples]
    assert modes[:2] == ["L", "CMYK"]
    gray, _ = cars[0]
    cmyk, _ = cars[1]
    assert gray.shape == cmyk.shape == (3, 48, 48)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    reference = torch.from_numpy(
        np.asarray(Image.open(cars.samples[1][0]).convert("RGB").resize((48, 48), Image.BILINEAR)) / 255.0
    )
    assert torch.allclose(cmyk.permute(1, 2, 0).double(), reference, atol=0.12)  # colours survive the CMYK conversion


def test_generate_img_for_cam_returns_the_same_view_twice(tiny_root: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="train", generate_img_for_cam=True, return_box=True, image_size=64)
    torch.manual_seed(3)
    predict, visualize, label, box = cars[4]
    assert torch.equal(predict, visualize) and predict.data_ptr() != visualize.data_ptr()
    assert isinstance(label, int) and box.shape == (4,) and box.dtype == torch.float32


def test_test_split_is_deterministic_and_train_split_is_augmented(tiny_root: Path) -> None:
    test = StanfordCarsCAM(tiny_root, split="test", image_size=64)
    assert test.augment is False and torch.equal(test[0][0], test[0][0])
    train = StanfordCarsCAM(tiny_root, split="train", image_size=64)
    assert train.augment is True
    torch.manual_seed(0)
    views = [train[5][0] for _ in range(6)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    torch.manual_seed(0)
    assert all(torch.equal(a, train[5][0]) for a in views)  # torch's RNG governs it


def test_test_box_is_the_annotation_scaled_to_the_image(tiny_root: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="test", image_size=100, return_box=True)
    annotation = sio.loadmat(tiny_root / "stanford_cars" / "cars_test_annos_withlabels.mat", squeeze_me=True)[
        "annotations"
    ][0]
    width, height = Image.open(cars.samples[0][0]).size
    expected = torch.tensor(
        [
            (annotation["bbox_x1"] - 1) * 100 / width,
            (annotation["bbox_y1"] - 1) * 100 / height,
            annotation["bbox_x2"] * 100 / width,
            annotation["bbox_y2"] * 100 / height,
        ],
        dtype=torch.float32,
    )
    assert torch.allclose(cars[0][2], expected)
    assert torch.allclose(cars.get_box(0), expected)
    assert torch.equal(
        cars.original_box(0),
        torch.tensor(
            [annotation["bbox_x1"] - 1, annotation["bbox_y1"] - 1, annotation["bbox_x2"], annotation["bbox_y2"]],
            dtype=torch.float32,
        ),
    )


def test_box_lies_on_the_car_in_the_returned_view(rectangle_root: Path) -> None:
    test = StanfordCarsCAM(rectangle_root, split="test", image_size=80, return_box=True)
    for i in range(len(test)):
        image, _, box = test[i]
        assert np.allclose(white_extent(image), box.tolist(), atol=1.01)


def test_augmented_box_follows_crop_and_flip(rectangle_root: Path) -> None:
    train = StanfordCarsCAM(rectangle_root, split="train", image_size=80, return_box=True, generate_img_for_cam=True)
    torch.manual_seed(0)
    flips: list[bool] = []
    moved = 0
    for _ in range(6):
        for i in range(len(train)):
            image, visualize, _, box = train[i]
            assert np.allclose(white_extent(visualize), box.tolist(), atol=1.01)  # the box is on the car
            assert float(box[2] - box[0]) > 0 and float(box[3] - box[1]) > 0
            moved += not torch.allclose(box, train.get_box(i), atol=1.0)
            left, right = int(box[0]) - 1, int(np.ceil(float(box[2]))) + 1
            if left >= 2 and right <= 78:  # grey on both sides is visible
                flips.append(float(image[:, :, right:].mean()) > float(image[:, :, :left].mean()))
    assert moved > len(train) * 3  # most views are cropped or flipped
    assert 0.2 < np.mean(flips) < 0.8  # left-right flips happen about half the time


def test_random_crop_is_mild_and_keeps_most_of_the_car() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    whole = 0
    for _ in range(300):
        width, height = int(rng.integers(200, 900)), int(rng.integers(150, 700))
        x1, y1 = rng.uniform(0, width * 0.5), rng.uniform(0, height * 0.5)
        box = np.array([x1, y1, rng.uniform(x1 + 10, width), rng.uniform(y1 + 10, height)])
        cx0, cy0, cx1, cy1 = images_module._sample_crop(width, height, box)
        assert 0 <= cx0 < cx1 <= width + 1e-6 and 0 <= cy0 < cy1 <= height + 1e-6
        area = (cx1 - cx0) * (cy1 - cy0) / (width * height)
        relative_aspect = ((cx1 - cx0) / (cy1 - cy0)) / (width / height)
        assert 0.6 - 1e-6 <= area <= 1.0 + 1e-6 and 3 / 4 - 1e-6 <= relative_aspect <= 4 / 3 + 1e-6
        visible = max(min(box[2], cx1) - max(box[0], cx0), 0) * max(min(box[3], cy1) - max(box[1], cy0), 0)
        assert visible >= 0.75 * (box[2] - box[0]) * (box[3] - box[1]) - 1e-6
        whole += (cx0, cy0, cx1, cy1) == (0.0, 0.0, float(width), float(height))
    assert whole < 150  # most draws are real crops


def test_jpegs_are_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_synthetic_stanford_cars(
        tmp_path, class_names=TINY_CLASS_NAMES[:1], n_train_per_class=1, n_test_per_class=1
    )
    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    real_jpeg_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: Any, size: Any) -> Any:
        original = self.size
        result = real_jpeg_draft(self, mode, size)
        calls.append((original, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    cars = StanfordCarsCAM(root, split="test", image_size=64)
    fast = cars[0][0]
    assert calls and all(after[0] <= -(-before[0] // 4) for before, after in calls)  # 1/4 scale or less for ~600 -> 64
    full = torch.from_numpy(
        np.asarray(Image.open(cars.samples[0][0]).convert("RGB").resize((64, 64), Image.BILINEAR)) / 255.0
    )
    assert float((fast.permute(1, 2, 0).double() - full).abs().mean()) < 0.03  # same picture


@pytest.mark.parametrize("split", ["test", "train"])
def test_cache_returns_the_same_pixels_and_boxes_as_a_fresh_decode(
    tiny_root: Path, tmp_path: Path, split: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = dict(split=split, image_size=48, return_box=True)
    fresh = StanfordCarsCAM(tiny_root, **kwargs)
    cached = StanfordCarsCAM(tiny_root, cache_dir=tmp_path / "cache", **kwargs)
    for _ in range(2):  # the first pass fills the cache, the second reads it
        for i in range(len(fresh)):
            torch.manual_seed(i)
            image, _, box = fresh[i]
            torch.manual_seed(i)
            image_c, _, box_c = cached[i]
            assert torch.equal(image, image_c) and torch.equal(box, box_c)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len(fresh)
    decodes: list[str] = []
    monkeypatch.setattr(images_module, "decode_image", lambda path, size: decodes.append(path))
    cached[0]
    assert decodes == []  # served from the cache


def test_cache_decodes_afresh_when_the_file_changes(tiny_copy: Path, tmp_path: Path) -> None:
    cars = StanfordCarsCAM(tiny_copy, split="test", image_size=32, cache_dir=tmp_path / "cache")
    before = cars[0][0]
    path = Path(cars.samples[0][0])
    Image.open(path).convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(path, "JPEG", quality=95)
    after = cars[0][0]
    assert torch.allclose(after, StanfordCarsCAM(tiny_copy, split="test", image_size=32)[0][0])
    assert not torch.allclose(before, after, atol=0.05)


def test_cache_works_in_dataloader_workers(tiny_root: Path, tmp_path: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="test", image_size=32, cache_dir=tmp_path / "cache")
    first = torch.cat([b[0] for b in DataLoader(cars, batch_size=4, num_workers=2)])
    second = torch.cat([b[0] for b in DataLoader(cars, batch_size=4, num_workers=2)])
    assert torch.equal(first, second) and torch.equal(
        first, torch.stack([StanfordCarsCAM(tiny_root, split="test", image_size=32)[i][0] for i in range(len(cars))])
    )
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len(cars) and not list((tmp_path / "cache").glob(".*.tmp"))


def test_unwritable_cache_dir_is_one_clear_error(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "ro"
    cache.mkdir()

    def denied(*args: object, dir: str | None = None, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(Path(dir or ".") / ".probe.tmp"))

    # As root a chmod'ed folder stays writable, so the refusal the probe meets is simulated.
    for probe in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, probe, denied)
    with pytest.raises(ValueError) as caught:
        StanfordCarsCAM(tiny_root, split="test", image_size=32, cache_dir=cache)
    assert (
        str(caught.value)
        == f"cache_dir {str(cache)!r} is not writable (Permission denied); choose another folder or leave it out"
    )


def test_cache_dir_probe_leaves_nothing_and_a_file_is_refused(tiny_root: Path, tmp_path: Path) -> None:
    StanfordCarsCAM(tiny_root, split="test", image_size=32, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir .*file' is a file, not a folder"):
        StanfordCarsCAM(tiny_root, split="test", image_size=32, cache_dir=tmp_path / "file")


def test_cache_write_failures_warn_once(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cars = StanfordCarsCAM(tiny_root, split="test", image_size=32, cache_dir=tmp_path / "cache")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images_module.np, "save", full)
    with caplog.at_level("WARNING", logger=images_module.__name__):
        images = [cars[i][0] for i in range(3)]
    assert len([r for r in caplog.records if "could not write" in r.getMessage()]) == 1
    assert all(image.shape == (3, 32, 32) for image in images)  # decoded all the same
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("root", [None, 3])
def test_root_that_is_not_a_path_names_root(root: object) -> None:
    with pytest.raises(TypeError, match=rf"root must be the folder holding Stanford Cars .*got {root}"):
        StanfordCarsCAM(root)  # type: ignore[arg-type]


def test_fast_resize_matches_pil_bilinear() -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((181, 263, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(
        Image.fromarray(pixels).resize((64, 64), Image.Resampling.BOX).resize((263, 181), Image.Resampling.BICUBIC)
    )
    fast = images_module.resize_pixels(smooth, 100)
    pil = np.asarray(Image.fromarray(smooth).resize((100, 100), Image.Resampling.BILINEAR))
    assert fast.shape == (100, 100, 3) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - pil.astype(int)).max() <= 1


def test_annotations_are_parsed_once(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layouts_module._read_class_names_cached.cache_clear()
    layouts_module._read_annotations_cached.cache_clear()
    loads: list[str] = []
    real = sio.loadmat

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sio, "loadmat", counting)
    train = StanfordCarsCAM(tiny_root, split="train", image_size=32)
    StanfordCarsCAM(tiny_root, split="train", augment=False, image_size=32)
    StanfordCarsCAM(tiny_root, split="test", image_size=32, **SEED_FILTERS)
    for i in range(len(train)):
        train[i]
    assert sorted(Path(p).name for p in loads) == [
        "cars_meta.mat",
        "cars_test_annos_withlabels.mat",
        "cars_train_annos.mat",
    ]


def test_one_relative_path_in_two_working_folders_reads_each_folders_annotations(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two copies whose train annotations differ in one box only, with the same size and modification time (as
    # shutil.copy2 leaves them), read through the same relative path from two working folders.
    boxes = []
    for name, x1 in (("a", 1), ("b", 3)):
        shutil.copytree(tiny_root, tmp_path / name / "data")
        mat = tmp_path / name / "data" / "stanford_cars" / "devkit" / "cars_train_annos.mat"
        annotations = sio.loadmat(mat)["annotations"]
        annotations[0, 0]["bbox_x1"] = np.array([[x1]])
        sio.savemat(mat, {"annotations": annotations})
        os.utime(mat, ns=(10**18, 10**18))
        monkeypatch.chdir(tmp_path / name)
        boxes.append(StanfordCarsCAM("data", split="train").boxes[0, 0])
    assert boxes == [0.0, 2.0]


def test_dataloader_with_workers_and_boxes(tiny_root: Path) -> None:
    cars = StanfordCarsCAM(tiny_root, split="test", image_size=32, return_box=True, **SEED_FILTERS)
    batches = list(DataLoader(cars, batch_size=3, num_workers=1))
    images, labels, boxes = batches[0]
    assert images.shape == (3, 3, 32, 32) and boxes.shape == (3, 4) and labels.tolist() == cars.targets[:3]


@pytest.mark.parametrize(
    "kwargs", [dict(split="val"), dict(image_size=0), dict(image_size=22.5), dict(image_size=True)]
)
def test_bad_arguments(tiny_root: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        StanfordCarsCAM(tiny_root, **kwargs)


# --------------------------------------------------------------------------------------------
# Broken files


def test_missing_image_names_the_file(tiny_copy: Path) -> None:
    cars = StanfordCarsCAM(tiny_copy, split="test")
    Path(cars.samples[2][0]).unlink()
    with pytest.raises(MissingImageError, match=r"cars_test.00003\.jpg") as info:
        cars[2]
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(tiny_copy: Path, damage: str) -> None:
    cars = StanfordCarsCAM(tiny_copy, split="test")
    path = Path(cars.samples[1][0])
    data = path.read_bytes()
    path.write_bytes(b"this is not a jpeg" * 10 if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match=r"00002\.jpg"):
        cars[1]


def test_mat_without_a_field_names_file_and_field(tiny_copy: Path) -> None:
    mat = tiny_copy / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    annotations = sio.loadmat(mat)["annotations"]
    fields = [name for name in annotations.dtype.names if name != "bbox_y2"]
    stripped = np.zeros(annotations.shape, dtype=[(name, object) for name in fields])
    for name in fields:
        for j in range(annotations.shape[1]):
            stripped[0, j][name] = annotations[0, j][name]
    sio.savemat(mat, {"annotations": stripped})
    with pytest.raises(AnnotationError, match=r"cars_train_annos\.mat.*'bbox_y2'"):
        StanfordCarsCAM(tiny_copy, split="train")


def test_mat_that_is_not_a_mat_names_the_file(tiny_copy: Path) -> None:
    (tiny_copy / "stanford_cars" / "devkit" / "cars_meta.mat").write_bytes(b"<html>404</html>")
    with pytest.raises(AnnotationError, match=r"cars_meta\.mat"):
        StanfordCarsCAM(tiny_copy, split="test")


def test_mat_with_the_wrong_variable(tiny_copy: Path) -> None:
    sio.savemat(tiny_copy / "stanford_cars" / "cars_test_annos_withlabels.mat", {"labels": np.arange(3)})
    with pytest.raises(AnnotationError, match=r"cars_test_annos_withlabels\.mat has no variable 'annotations'"):
        StanfordCarsCAM(tiny_copy, split="test")


# --------------------------------------------------------------------------------------------
# Listing brands, types and years


def test_summary_counts(tiny_root: Path) -> None:
    summary = summarize(tiny_root)
    assert (summary.n_classes, summary.n_train, summary.n_test, summary.layout) == (196, 9, 6, "torchvision")
    brands = {entry.value: entry for entry in summary.car_brand}
    assert len(brands) == 49 and (brands["BMW"].n_classes, brands["BMW"].n_train, brands["BMW"].n_test) == (13, 6, 4)
    assert (brands["Jeep"].n_train, brands["Audi"].n_train) == (3, 0)
    types = {entry.value: entry for entry in summary.car_type}
    assert types[None].n_classes == 15 and types["Sedan"].n_train == 6 and types["SUV"].n_train == 3
    years = {entry.value: entry for entry in summary.car_production_year}
    assert years[2012].n_classes == 117 and years[2012].n_train == 9
    assert [entry.value for entry in summary.car_production_year] == sorted(years)


def test_summary_table(tiny_root: Path) -> None:
    table = format_filter_summary(tiny_root)
    assert table.splitlines()[0].startswith(f"Stanford Cars at {tiny_root}")
    rows = {line.split("  ")[0].strip(): line.split()[-3:] for line in table.splitlines() if line.strip()}
    assert (
        rows["BMW"] == ["13", "6", "4"]
        and rows["Land Rover"] == ["2", "0", "0"]
        and rows["(no type)"] == ["15", "0", "0"]
    )
    assert format_filter_summary(summarize(tiny_root)) == table


# --------------------------------------------------------------------------------------------
# Download (the client is faked; nothing touches the network)


def fake_kagglehub(
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    writer: Any = None,
    with_output_dir: bool = True,
    error: Exception | None = None,
) -> list[dict]:
    """Install a stand-in ``kagglehub``: ``dataset_download`` records its calls and runs ``writer(folder)``.

    Without ``with_output_dir`` it mimics an older client that only downloads into its cache.
    """
    calls: list[dict] = []
    module = types.ModuleType("kagglehub")

    def download_with_output_dir(
        handle: str, path: str | None = None, *, force_download: bool = False, output_dir: str | None = None
    ) -> str:
        calls.append(dict(handle=handle, output_dir=output_dir))
        if error is not None:
            raise error
        folder = Path(output_dir) if output_dir else cache / handle
        writer(folder)
        return str(folder)

    def download_to_cache(handle: str, path: str | None = None, *, force_download: bool = False) -> str:
        return download_with_output_dir(handle, path, force_download=force_download)

    module.dataset_download = download_with_output_dir if with_output_dir else download_to_cache  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kagglehub", module)
    return calls


def write_mirror(folder: Path) -> None:
    """What the torchvision-layout mirror unzips to: a stanford_cars folder."""
    write_tiny_stanford_cars(folder)


TINY_MIRROR = Mirror(num_classes=196, num_train=9, num_test=6)


def test_existing_copy_is_used_and_nothing_is_fetched(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_kagglehub(monkeypatch, tmp_path / "cache", error=AssertionError("must not be called"))
    cars = StanfordCarsCAM(tiny_root, split="test", download_datasets=True)
    assert len(cars) == 6 and calls == []
    assert download_stanford_cars(tiny_root) == tiny_root / "stanford_cars" and calls == []


def test_download_moves_the_verified_mirror_under_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_kagglehub(monkeypatch, tmp_path / "cache", write_mirror)
    root = tmp_path / "data"
    base = download_stanford_cars(root, TINY_MIRROR)
    assert calls[0]["handle"] == KAGGLE_HANDLE == "rickyyyyyyy/torchvision-stanford-cars"
    assert base == root / "stanford_cars" and base.is_dir() and not base.is_symlink()
    assert sorted(p.name for p in root.iterdir()) == ["stanford_cars"]  # the staging folder is gone
    assert len(StanfordCarsCAM(root, split="train")) == 9


def test_download_links_from_the_client_cache_when_it_has_no_output_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def kaggle_style(folder: Path) -> None:  # the Kaggle layout at the top of the download
        write_tiny_stanford_cars(folder.parent / "kaggle_tmp", layout="kaggle")
        shutil.move(str(folder.parent / "kaggle_tmp" / "stanford_cars"), folder)

    calls = fake_kagglehub(monkeypatch, tmp_path / "cache", kaggle_style, with_output_dir=False)
    root = tmp_path / "data"
    download_stanford_cars(root, TINY_MIRROR)
    assert calls[0]["output_dir"] is None
    assert (root / "stanford_cars").resolve() == (tmp_path / "cache" / KAGGLE_HANDLE).resolve()
    cars = StanfordCarsCAM(root, split="test")
    assert cars.layout.kind == "kaggle" and len(cars) == 6


def test_dataset_constructor_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kagglehub(monkeypatch, tmp_path / "cache", write_mirror)
    monkeypatch.setattr(download_module, "DEFAULT_MIRROR", TINY_MIRROR)
    cars = StanfordCarsCAM(tmp_path / "data", split="train", download_datasets=True, **SEED_FILTERS)
    assert cars.classes == SEED_CLASSES and len(cars) == 6


def test_incomplete_download_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kagglehub(monkeypatch, tmp_path / "cache", write_mirror)
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        StanfordCarsCAM(root, download_datasets=True)  # the real counts: 8,144 and 8,041
    message = str(info.value)
    assert "annotates 9 train images, expected 8144" in message and "expected 8041" in message
    assert not (root / "stanford_cars").exists()


def test_download_with_missing_images_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def lossy(folder: Path) -> None:
        write_mirror(folder)
        next((folder / "stanford_cars" / "cars_test").glob("*.jpg")).unlink()

    fake_kagglehub(monkeypatch, tmp_path / "cache", lossy)
    with pytest.raises(DownloadError, match="1 test images are missing"):
        download_stanford_cars(tmp_path / "data", TINY_MIRROR)


def test_without_the_client_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import fails
    with pytest.raises(DownloadError) as info:
        StanfordCarsCAM(tmp_path / "data", download_datasets=True)
    assert "pip install 'CAM_Stanford_Cars[download]'" in str(info.value) and "by hand" in str(info.value)
    assert isinstance(info.value, DatasetError)


def test_without_network_says_so_and_how_to_place_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kagglehub(monkeypatch, tmp_path / "cache", error=ConnectionError("Failed to resolve 'www.kaggle.com'"))
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_stanford_cars(root)
    message = str(info.value)
    assert "no network" in message and "by hand" in message
    assert str(root / "stanford_cars" / "devkit" / "cars_meta.mat") in message


def test_other_client_failure_mentions_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kagglehub(monkeypatch, tmp_path / "cache", error=PermissionError("403 Forbidden"))
    with pytest.raises(DownloadError, match="KAGGLE_USERNAME"):
        download_stanford_cars(tmp_path / "data")


def test_broken_copy_in_the_way_is_not_overwritten(
    tiny_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_kagglehub(monkeypatch, tmp_path / "cache", write_mirror)
    shutil.rmtree(tiny_copy / "stanford_cars" / "cars_train")
    with pytest.raises(DownloadError, match="move it aside"):
        download_stanford_cars(tiny_copy, TINY_MIRROR)
    assert calls == [] and (tiny_copy / "stanford_cars" / "devkit").is_dir()


def test_find_layout_reports_kind(tiny_root: Path) -> None:
    layout = find_layout(tiny_root)
    assert layout.kind == "torchvision" and layout.meta_file.name == "cars_meta.mat"
    assert layout.annotation_files["test"].name == "cars_test_annos_withlabels.mat"


@pytest.mark.parametrize("name", ["../../../../private/holiday.jpg", "/etc/hostname", "sub/../../00001.jpg"])
def test_an_annotation_naming_an_image_outside_the_dataset_is_refused(tiny_copy: Path, name: str) -> None:
    mat = tiny_copy / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    annotations = sio.loadmat(mat)["annotations"]
    annotations[0, 1]["fname"] = np.array([name])
    sio.savemat(mat, {"annotations": annotations})
    with pytest.raises(DatasetError) as caught:
        StanfordCarsCAM(tiny_copy, split="train")
    message = str(caught.value)
    assert message.startswith(f"{mat}: entry 2 names the image {name!r} (fname), outside the image folder")
    assert "\n" not in message and "refused" in message
