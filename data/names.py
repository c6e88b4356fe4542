"""Class names ("Make Model Type Year"), the car_brand / car_type / car_production_year filters, their summary."""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .common import FilterValue, PathLike
from .layouts import find_layout, read_class_names, read_split

# Makes whose names are two words; every other make is the first word of the class name.
TWO_WORD_MAKES: tuple[str, ...] = ("AM General", "Aston Martin", "Land Rover")

# Matched as a suffix of what follows the make; two-word types come first so that "Crew Cab"
# wins over a bare "Cab" and "Wagon Van" over "Van".
BODY_TYPES: tuple[str, ...] = (
    "Crew Cab",
    "Extended Cab",
    "Regular Cab",
    "Club Cab",
    "Quad Cab",
    "Cargo Van",
    "Passenger Van",
    "Wagon Van",
    "SuperCab",
    "Minivan",
    "Van",
    "Convertible",
    "Coupe",
    "Sedan",
    "Hatchback",
    "Wagon",
    "SUV",
)

FILTER_NAMES = ("car_brand", "car_type", "car_production_year")
_FIELD_OF_FILTER = {"car_brand": "make", "car_type": "body_type", "car_production_year": "year"}


class CarClass(NamedTuple):
    """A class name split into its parts; ``body_type`` is None for the 15 names without one
    (``Acura TL Type-S 2008``)."""

    make: str
    model: str
    body_type: str | None
    year: int


def parse_class_name(name: str) -> CarClass:
    """Split "Make Model [Type] Year" (make: one word or a :data:`TWO_WORD_MAKES`; type: a :data:`BODY_TYPES` suffix).

    Raises:
        ValueError: If the name does not end in a four-digit year after a make and a model.

    Example:
        >>> parse_class_name("Chevrolet Silverado 1500 Hybrid Crew Cab 2012")
        CarClass(make='Chevrolet', model='Silverado 1500 Hybrid', body_type='Crew Cab', year=2012)
    """
    words = str(name).split()
    if len(words) < 3 or not re.fullmatch(r"\d{4}", words[-1]):
        raise ValueError(
            f"class name {name!r} does not read 'Make Model [Type] Year' (expected a four-digit year last)"
        )
    *words, year = words
    two_word_make = " ".join(words[:2]).lower() in {make.lower() for make in TWO_WORD_MAKES}
    n_make = 2 if two_word_make and len(words) > 2 else 1
    model = " ".join(words[n_make:])
    # The space before the type: it must leave at least one word of model.
    body_type = next((kind for kind in BODY_TYPES if model.lower().endswith(" " + kind.lower())), None)
    if body_type is not None:
        model = model[: -len(body_type) - 1]
    return CarClass(make=" ".join(words[:n_make]), model=model, body_type=body_type, year=int(year))


class ClassToIdx(dict):
    """torchvision's ``class_to_idx`` (name -> index), a plain dict, that also maps an int-like index to its name."""

    def __init__(self, classes: Sequence[str]) -> None:
        super().__init__((name, index) for index, name in enumerate(classes))
        self._names = tuple(classes)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        try:
            index = operator.index(key)
        except TypeError:
            raise KeyError(f"{key!r}: expected a class name or an integer class index") from None
        if not 0 <= index < len(self._names):
            raise KeyError(f"class index {index} is out of range 0..{len(self._names) - 1}")
        return self._names[index]

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # a hit is an index or a name, never None

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default


def _filter_values(filter_name: str, value: FilterValue) -> list[str] | list[int]:
    """A filter's value (not None) as a list: stripped texts, or years for ``car_production_year``."""
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if not values:
        raise ValueError(f"{filter_name}=[] keeps nothing; pass None to keep every class")
    if filter_name != "car_production_year":
        texts = [str(item).strip() for item in values]
        if not all(texts):
            raise ValueError(f"{filter_name}={value!r} holds an empty value; pass None to keep every class")
        return texts
    years: list[int] = []
    for item in values:
        if isinstance(item, bool):
            raise ValueError(f"{filter_name}={value!r}: expected a year such as 2012, or a list of years")
        try:
            years.append(int(str(item).strip()))
        except ValueError:
            raise ValueError(f"{filter_name}={value!r}: {item!r} is not a year such as 2012") from None
    return years


def _matches(car: CarClass, filter_name: str, values: Sequence[str] | Sequence[int]) -> bool:
    """Years exactly; text case-insensitively as whole words: ``BMW`` never matches ``BMWX``, ``Van`` never
    ``Minivan``."""
    field_value = getattr(car, _FIELD_OF_FILTER[filter_name])
    if field_value is None or filter_name == "car_production_year":
        return field_value in values
    patterns = (
        r"(?<![0-9A-Za-z])" + r"\s+".join(map(re.escape, str(value).split())) + r"(?![0-9A-Za-z])" for value in values
    )
    return any(re.search(pattern, field_value, re.IGNORECASE) for pattern in patterns)


@dataclass(frozen=True)
class FilterValueCount:
    """One brand, body type or year: how many classes carry it and how many images they have."""

    value: str | int | None
    n_classes: int
    n_train: int
    n_test: int


def _label(value: str | int | None) -> str:
    return "(no type)" if value is None else str(value)


def _value_counts(
    cars: Sequence[CarClass],
    indices: Iterable[int],
    filter_name: str,
    train_counts: Sequence[int],
    test_counts: Sequence[int],
) -> list[FilterValueCount]:
    """Per value of ``filter_name`` among ``indices``: classes and images, sorted, None last."""
    totals: dict[str | int | None, list[int]] = {}
    for index in indices:
        key = getattr(cars[index], _FIELD_OF_FILTER[filter_name])
        totals[key] = [
            a + b for a, b in zip(totals.get(key, (0, 0, 0)), (1, int(train_counts[index]), int(test_counts[index])))
        ]
    order = sorted(
        totals, key=lambda key: (1, "") if key is None else (0, key if isinstance(key, int) else key.lower())
    )
    return [FilterValueCount(key, *totals[key]) for key in order]


def select_classes(
    class_names: Sequence[str],
    car_type: FilterValue = None,
    car_brand: FilterValue = None,
    car_production_year: FilterValue = None,
    image_counts: Sequence[int] | None = None,
    split: str | None = None,
) -> list[int]:
    """The ascending indices of the ``class_names`` that pass every filter: each None (keep all), one value or a
    list (any may match); brands and types case-insensitively as whole words, years exactly. ``image_counts``
    (per class, of ``split``) are listed when nothing matches.

    Raises:
        ValueError: If a filter value is malformed, or a filter matches no class among those the
            filters before it kept; the message lists the values that do exist, with counts.
    """
    given = zip(FILTER_NAMES, (car_brand, car_type, car_production_year))
    requested = {name: _filter_values(name, value) for name, value in given if value is not None}
    kept = list(range(len(class_names)))
    cars = [parse_class_name(name) for name in class_names] if requested else []
    applied: list[str] = []
    for filter_name, values in requested.items():
        shown = values[0] if len(values) == 1 else values
        survivors = [index for index in kept if _matches(cars[index], filter_name, values)]
        if not survivors:  # list the values there: "Sedan (3 classes, 120 train images), ..."
            among = f" among the classes kept by {', '.join(applied)}" if applied else ""
            counts = list(image_counts) if image_counts is not None else [0] * len(class_names)
            images = f" {split or 'train'} images" if image_counts is not None else None
            available = ", ".join(
                f"{_label(e.value)} ({e.n_classes} classes" + (f", {e.n_train}{images})" if images else ")")
                for e in _value_counts(cars, kept, filter_name, counts, counts)
            )
            raise ValueError(
                f"{filter_name}={shown!r} matches no class{among}. Values of {filter_name} there: {available}"
            )
        kept = survivors
        applied.append(f"{filter_name}={shown!r}")
    return kept


@dataclass(frozen=True)
class FilterSummary:
    """The brands, body types and years of a Stanford Cars copy, with class and image counts."""

    root: str
    layout: str
    n_classes: int
    n_train: int
    n_test: int
    car_brand: tuple[FilterValueCount, ...]
    car_type: tuple[FilterValueCount, ...]
    car_production_year: tuple[FilterValueCount, ...]


def summarize(root: PathLike) -> FilterSummary:
    """The values ``car_brand``, ``car_type`` and ``car_production_year`` take under ``root``, with counts."""
    layout = find_layout(root)
    names = read_class_names(layout)
    cars = [parse_class_name(name) for name in names]
    train, test = (np.bincount(read_split(layout, split).labels, minlength=len(names)) for split in ("train", "test"))
    values = {name: tuple(_value_counts(cars, range(len(names)), name, train, test)) for name in FILTER_NAMES}
    return FilterSummary(os.fspath(root), layout.kind, len(names), int(train.sum()), int(test.sum()), **values)


def format_filter_summary(summary: FilterSummary | PathLike) -> str:
    """The plain-text table ``--list_filters`` prints, of a :class:`FilterSummary` or a dataset root."""
    if not isinstance(summary, FilterSummary):
        summary = summarize(summary)
    lines = [
        (
            f"Stanford Cars at {summary.root} ({summary.layout} layout): {summary.n_classes} classes, "
            f"{summary.n_train} train and {summary.n_test} test images"
        )
    ]
    for title in FILTER_NAMES:
        entries = getattr(summary, title)
        width = max([len(title)] + [len(_label(entry.value)) for entry in entries])
        lines += ["", f"{title:<{width}}  {'classes':>7}  {'train':>6}  {'test':>6}"]
        lines += [f"{_label(e.value):<{width}}  {e.n_classes:>7}  {e.n_train:>6}  {e.n_test:>6}" for e in entries]
    return "\n".join(lines)
