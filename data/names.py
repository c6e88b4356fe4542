"""Class names ("Make Model Type Year"), the car_brand / car_type / car_production_year filters,
and the summary of the values present."""

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


# Body types, matched as a suffix of what follows the make; two-word types come first so that
# "Crew Cab" wins over a bare "Cab" and "Wagon Van" over "Van".
BODY_TYPES: tuple[str, ...] = (
    "Crew Cab", "Extended Cab", "Regular Cab", "Club Cab", "Quad Cab", "Cargo Van", "Passenger Van", "Wagon Van",
    "SuperCab", "Minivan", "Van", "Convertible", "Coupe", "Sedan", "Hatchback", "Wagon", "SUV",
)


FILTER_NAMES = ("car_brand", "car_type", "car_production_year")


class CarClass(NamedTuple):
    """A Stanford Cars class name split into its parts.

    ``body_type`` is None for the 15 names that carry none (``Acura TL Type-S 2008``,
    ``Chevrolet Corvette ZR1 2012``, ...): their last word before the year is a trim or a model.
    """

    make: str
    model: str
    body_type: str | None
    year: int


def parse_class_name(name: str) -> CarClass:
    """Split a class name "Make Model Type Year" into its parts.

    The make is the first word, or the first two for ``AM General``, ``Aston Martin`` and
    ``Land Rover``. The body type is one of :data:`BODY_TYPES` matched as a whole-word suffix of
    what follows the make (two-word types such as ``Crew Cab`` first), so type words inside a
    model name (``Rolls-Royce Phantom Drophead Coupe Convertible 2012``: type ``Convertible``;
    ``Infiniti G Coupe IPL 2012``: no type) do not count. The year is the last word.

    Args:
        name: A class name such as ``"Land Rover Range Rover SUV 2012"``.

    Returns:
        ``CarClass(make, model, body_type or None, year)``.

    Raises:
        ValueError: If the name does not end in a four-digit year or has no model after the make.

    Example:
        >>> parse_class_name("Chevrolet Silverado 1500 Hybrid Crew Cab 2012")
        CarClass(make='Chevrolet', model='Silverado 1500 Hybrid', body_type='Crew Cab', year=2012)
    """
    words = str(name).split()
    if len(words) < 3 or not re.fullmatch(r"\d{4}", words[-1]):
        raise ValueError(f"class name {name!r} does not read 'Make Model [Type] Year' (expected a four-digit year last)")
    year = int(words[-1])
    words = words[:-1]
    n_make = 1
    lowered = [word.lower() for word in words]
    for make in TWO_WORD_MAKES:
        make_words = make.lower().split()
        if lowered[: len(make_words)] == make_words and len(words) > len(make_words):
            n_make = len(make_words)
            break
    make = " ".join(words[:n_make])
    rest = words[n_make:]
    if not rest:
        raise ValueError(f"class name {name!r} has no model between the make {make!r} and the year")
    body_type: str | None = None
    for candidate in BODY_TYPES:
        type_words = candidate.lower().split()
        # The model must keep at least one word: "Foo Sedan 2012" is model "Sedan", no type.
        if len(rest) > len(type_words) and [w.lower() for w in rest[-len(type_words):]] == type_words:
            body_type = candidate
            rest = rest[: -len(type_words)]
            break
    return CarClass(make=make, model=" ".join(rest), body_type=body_type, year=year)


class ClassToIdx(dict):
    """torchvision's ``class_to_idx`` (name -> index) that also maps an index back to its name.

    Iterating, ``len``, ``items()`` and ``==`` are those of the plain ``{name: index}`` dict, so
    code written for torchvision keeps working; ``class_to_idx[3]`` (any int-like key, such as
    an element of ``logits.argmax(1).tolist()``) gives the name of class 3, as the seed README's
    snippet uses it.
    """

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
        if isinstance(key, str):
            return super().__contains__(key)
        try:
            index = operator.index(key)  # type: ignore[arg-type]
        except TypeError:
            return False
        return 0 <= index < len(self._names)

    def get(self, key: Any, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[key]
        except KeyError:
            return default

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._names,))


def _filter_values(filter_name: str, value: FilterValue) -> list[str] | list[int] | None:
    """A filter argument as a list of values, or None for "keep all"."""
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if not values:
        raise ValueError(f"{filter_name}=[] keeps nothing; pass None to keep every class")
    if filter_name == "car_production_year":
        years: list[int] = []
        for item in values:
            if isinstance(item, bool):
                raise ValueError(f"{filter_name}={value!r}: expected a year such as 2012, or a list of years")
            try:
                years.append(int(str(item).strip()))
            except ValueError:
                raise ValueError(f"{filter_name}={value!r}: {item!r} is not a year such as 2012") from None
        return years
    texts = [str(item).strip() for item in values]
    if any(not text for text in texts):
        raise ValueError(f"{filter_name}={value!r} holds an empty value; pass None to keep every class")
    return texts


def _word_pattern(text: str) -> re.Pattern[str]:
    """Case-insensitive whole-word match: ``BMW`` never matches ``BMWX``, ``Van`` never ``Minivan``."""
    words = [re.escape(word) for word in text.split()]
    return re.compile(r"(?<![0-9A-Za-z])" + r"\s+".join(words) + r"(?![0-9A-Za-z])", re.IGNORECASE)


def _class_field(car: CarClass, filter_name: str) -> str | int | None:
    if filter_name == "car_brand":
        return car.make
    if filter_name == "car_type":
        return car.body_type
    return car.year


def _matches(car: CarClass, filter_name: str, values: Sequence[str] | Sequence[int]) -> bool:
    field_value = _class_field(car, filter_name)
    if field_value is None:
        return False
    if filter_name == "car_production_year":
        return field_value in values
    return any(_word_pattern(str(value)).search(str(field_value)) for value in values)


@dataclass(frozen=True)
class FilterValueCount:
    """One brand, body type or year: how many classes carry it and how many images they have."""

    value: str | int | None
    n_classes: int
    n_train: int
    n_test: int


def _value_counts(
    cars: Sequence[CarClass], indices: Iterable[int], filter_name: str,
    train_counts: Sequence[int], test_counts: Sequence[int],
) -> list[FilterValueCount]:
    totals: dict[str | int | None, list[int]] = {}
    for index in indices:
        key = _class_field(cars[index], filter_name)
        entry = totals.setdefault(key, [0, 0, 0])
        entry[0] += 1
        entry[1] += int(train_counts[index])
        entry[2] += int(test_counts[index])

    def order(key: str | int | None) -> tuple[int, Any]:
        if key is None:
            return (1, "")
        return (0, key if isinstance(key, int) else str(key).lower())

    return [FilterValueCount(key, *totals[key]) for key in sorted(totals, key=order)]


def _describe_counts(counts: Sequence[FilterValueCount], split: str | None) -> str:
    """``Sedan (3 classes, 120 train images), ...``; without a split, class counts only."""
    parts = []
    for entry in counts:
        label = "(no type)" if entry.value is None else str(entry.value)
        if split is None:
            parts.append(f"{label} ({entry.n_classes} classes)")
        else:
            images = entry.n_train if split == "train" else entry.n_test
            parts.append(f"{label} ({entry.n_classes} classes, {images} {split} images)")
    return ", ".join(parts)


def select_classes(
    class_names: Sequence[str],
    car_type: FilterValue = None,
    car_brand: FilterValue = None,
    car_production_year: FilterValue = None,
    image_counts: Sequence[int] | None = None,
    split: str | None = None,
) -> list[int]:
    """The indices (in ``class_names`` order) of the classes that pass every filter.

    Each filter is None (keep all), one value or a list of values (a class passes when it
    matches any of them). Brands and types match case-insensitively and as whole words
    (``"land rover"`` keeps both Land Rovers, ``"Cab"`` keeps the five ``... Cab`` types but
    not ``SuperCab``, ``"Van"`` keeps the vans but not ``Minivan``); years match exactly.
    Classes without a body type never pass a ``car_type`` filter.

    Args:
        class_names: All class names, in the devkit's order.
        car_type: Body type(s) to keep, e.g. ``"Sedan"`` or ``["Sedan", "Coupe"]``.
        car_brand: Brand(s) to keep, e.g. ``"BMW"``.
        car_production_year: Year(s) to keep, e.g. ``2012``.
        image_counts: Images per class, only used to list what exists when nothing matches.
        split: Name of the split ``image_counts`` counts, for the message.

    Returns:
        The kept indices, ascending.

    Raises:
        ValueError: If a filter value is malformed, or a filter matches no class among those the
            filters before it kept; the message lists the values that do exist, with counts.
    """
    requested = {
        "car_brand": _filter_values("car_brand", car_brand),
        "car_type": _filter_values("car_type", car_type),
        "car_production_year": _filter_values("car_production_year", car_production_year),
    }
    kept = list(range(len(class_names)))
    if all(values is None for values in requested.values()):
        return kept
    cars = [parse_class_name(name) for name in class_names]
    counts = list(image_counts) if image_counts is not None else [0] * len(class_names)
    applied: list[str] = []
    for filter_name in FILTER_NAMES:
        values = requested[filter_name]
        if values is None:
            continue
        survivors = [index for index in kept if _matches(cars[index], filter_name, values)]
        shown = values[0] if len(values) == 1 else values
        if not survivors:
            available = _value_counts(cars, kept, filter_name, counts, counts)
            among = f" among the classes kept by {', '.join(applied)}" if applied else ""
            shown_split = (split or "train") if image_counts is not None else None
            raise ValueError(
                f"{filter_name}={shown!r} matches no class{among}. "
                f"Values of {filter_name} there: {_describe_counts(available, shown_split)}"
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


def _per_class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return np.bincount(labels, minlength=n_classes).astype(int).tolist()


def summarize(root: PathLike) -> FilterSummary:
    """List the values ``car_brand``, ``car_type`` and ``car_production_year`` can take, with counts.

    Args:
        root: The dataset root (any layout :func:`find_layout` accepts).

    Returns:
        A :class:`FilterSummary`; :func:`format_filter_summary` prints it as a table.
    """
    layout = find_layout(root)
    names = read_class_names(layout)
    cars = [parse_class_name(name) for name in names]
    train = _per_class_counts(read_split(layout, "train").labels, len(names))
    test = _per_class_counts(read_split(layout, "test").labels, len(names))
    every = range(len(names))
    return FilterSummary(
        root=os.fspath(root), layout=layout.kind, n_classes=len(names), n_train=sum(train), n_test=sum(test),
        car_brand=tuple(_value_counts(cars, every, "car_brand", train, test)),
        car_type=tuple(_value_counts(cars, every, "car_type", train, test)),
        car_production_year=tuple(_value_counts(cars, every, "car_production_year", train, test)),
    )


def format_filter_summary(summary: FilterSummary | PathLike) -> str:
    """A plain-text table of the brands, body types and years present (what ``--list_filters`` prints).

    Args:
        summary: A :class:`FilterSummary`, or a dataset root to summarise.
    """
    if not isinstance(summary, FilterSummary):
        summary = summarize(summary)
    lines = [
        f"Stanford Cars at {summary.root} ({summary.layout} layout): {summary.n_classes} classes, "
        f"{summary.n_train} train and {summary.n_test} test images",
    ]
    for title, entries in (("car_brand", summary.car_brand), ("car_type", summary.car_type),
                           ("car_production_year", summary.car_production_year)):
        width = max([len(title)] + [len("(no type)" if e.value is None else str(e.value)) for e in entries])
        lines += ["", f"{title:<{width}}  {'classes':>7}  {'train':>6}  {'test':>6}"]
        for entry in entries:
            label = "(no type)" if entry.value is None else str(entry.value)
            lines.append(f"{label:<{width}}  {entry.n_classes:>7}  {entry.n_train:>6}  {entry.n_test:>6}")
    return "\n".join(lines)
