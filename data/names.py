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

# Matched as a suffix of what follows the make; two-word types come first so that "Crew Cab"
# wins over a bare "Cab" and "Wagon Van" over "Van".
BODY_TYPES: tuple[str, ...] = (
    "Crew Cab", "Extended Cab", "Regular Cab", "Club Cab", "Quad Cab", "Cargo Van", "Passenger Van", "Wagon Van",
    "SuperCab", "Minivan", "Van", "Convertible", "Coupe", "Sedan", "Hatchback", "Wagon", "SUV",
)

FILTER_NAMES = ("car_brand", "car_type", "car_production_year")
_FIELD_OF_FILTER = {"car_brand": "make", "car_type": "body_type", "car_production_year": "year"}


class CarClass(NamedTuple):
    """A class name split into its parts; ``body_type`` is None for the 15 names without one
    (``Acura TL Type-S 2008``: the last word before the year is a trim or a model)."""

    make: str
    model: str
    body_type: str | None
    year: int


def _ends_with(words: Sequence[str], phrase: str) -> bool:
    """Whether ``words`` end in ``phrase`` (case-insensitive) and keep at least one word before it."""
    tail = phrase.lower().split()
    return len(words) > len(tail) and [word.lower() for word in words[-len(tail):]] == tail


def parse_class_name(name: str) -> CarClass:
    """Split a class name "Make Model Type Year" into its parts.

    The make is the first word, or the first two for :data:`TWO_WORD_MAKES`. The body type is one
    of :data:`BODY_TYPES` matched as a whole-word suffix of what follows the make, so type words
    inside a model name do not count (``Infiniti G Coupe IPL 2012`` has no type). The year is the
    last word.

    Args:
        name: A class name such as ``"Land Rover Range Rover SUV 2012"``.

    Returns:
        ``CarClass(make, model, body_type or None, year)``.

    Raises:
        ValueError: If the name does not end in a four-digit year after a make and a model.

    Example:
        >>> parse_class_name("Chevrolet Silverado 1500 Hybrid Crew Cab 2012")
        CarClass(make='Chevrolet', model='Silverado 1500 Hybrid', body_type='Crew Cab', year=2012)
    """
    words = str(name).split()
    if len(words) < 3 or not re.fullmatch(r"\d{4}", words[-1]):
        raise ValueError(f"class name {name!r} does not read 'Make Model [Type] Year' (expected a four-digit year last)")
    *words, year = words
    two_word_make = " ".join(words[:2]).lower() in {make.lower() for make in TWO_WORD_MAKES}
    n_make = 2 if two_word_make and len(words) > 2 else 1
    rest = words[n_make:]
    body_type = next((kind for kind in BODY_TYPES if _ends_with(rest, kind)), None)
    if body_type is not None:
        rest = rest[: -len(body_type.split())]
    return CarClass(make=" ".join(words[:n_make]), model=" ".join(rest), body_type=body_type, year=int(year))


_MISSING = object()


class ClassToIdx(dict):
    """torchvision's ``class_to_idx`` (name -> index) that also maps an index back to its name.

    Iterating, ``len``, ``items()`` and ``==`` are those of the plain dict; ``class_to_idx[3]`` (any
    int-like key, such as an element of ``logits.argmax(1).tolist()``) gives the name of class 3.
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
        return self.get(key, _MISSING) is not _MISSING

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
    if not all(texts):
        raise ValueError(f"{filter_name}={value!r} holds an empty value; pass None to keep every class")
    return texts


def _word_pattern(text: str) -> re.Pattern[str]:
    """Case-insensitive whole-word match: ``BMW`` never matches ``BMWX``, ``Van`` never ``Minivan``."""
    words = [re.escape(word) for word in text.split()]
    return re.compile(r"(?<![0-9A-Za-z])" + r"\s+".join(words) + r"(?![0-9A-Za-z])", re.IGNORECASE)


def _matches(car: CarClass, filter_name: str, values: Sequence[str] | Sequence[int]) -> bool:
    field_value = getattr(car, _FIELD_OF_FILTER[filter_name])
    if field_value is None:
        return False
    if filter_name == "car_production_year":
        return field_value in values
    return any(_word_pattern(str(value)).search(field_value) for value in values)


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
    cars: Sequence[CarClass], indices: Iterable[int], filter_name: str,
    train_counts: Sequence[int], test_counts: Sequence[int],
) -> list[FilterValueCount]:
    """Per value of ``filter_name`` among ``indices``: classes and images; sorted, None last."""
    totals: dict[str | int | None, list[int]] = {}
    for index in indices:
        entry = totals.setdefault(getattr(cars[index], _FIELD_OF_FILTER[filter_name]), [0, 0, 0])
        entry[0] += 1
        entry[1] += int(train_counts[index])
        entry[2] += int(test_counts[index])
    order = sorted(totals, key=lambda key: (1, "") if key is None else (0, key if isinstance(key, int) else key.lower()))
    return [FilterValueCount(key, *totals[key]) for key in order]


def _describe_counts(counts: Sequence[FilterValueCount], split: str | None) -> str:
    """``Sedan (3 classes, 120 train images), ...``; without a split, class counts only."""
    parts = []
    for entry in counts:
        images = "" if split is None else f", {entry.n_train if split == 'train' else entry.n_test} {split} images"
        parts.append(f"{_label(entry.value)} ({entry.n_classes} classes{images})")
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

    Each filter is None (keep all), one value or a list (a class passes when it matches any).
    Brands and types match case-insensitively and as whole words (``"Cab"`` keeps the five
    ``... Cab`` types but not ``SuperCab``); years match exactly. Classes without a body type
    never pass a ``car_type`` filter.

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
    given = dict(zip(FILTER_NAMES, (car_brand, car_type, car_production_year)))
    requested = {name: _filter_values(name, value) for name, value in given.items()}
    kept = list(range(len(class_names)))
    if all(values is None for values in requested.values()):
        return kept
    cars = [parse_class_name(name) for name in class_names]
    counts = list(image_counts) if image_counts is not None else [0] * len(class_names)
    applied: list[str] = []
    for filter_name, values in requested.items():
        if values is None:
            continue
        shown = values[0] if len(values) == 1 else values
        survivors = [index for index in kept if _matches(cars[index], filter_name, values)]
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
    train, test = (_per_class_counts(read_split(layout, split).labels, len(names)) for split in ("train", "test"))
    values = {name: tuple(_value_counts(cars, range(len(names)), name, train, test)) for name in FILTER_NAMES}
    return FilterSummary(root=os.fspath(root), layout=layout.kind, n_classes=len(names), n_train=sum(train),
                         n_test=sum(test), **values)


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
    for title in ("car_brand", "car_type", "car_production_year"):
        entries = getattr(summary, title)
        width = max([len(title)] + [len(_label(entry.value)) for entry in entries])
        lines += ["", f"{title:<{width}}  {'classes':>7}  {'train':>6}  {'test':>6}"]
        lines += [f"{_label(e.value):<{width}}  {e.n_classes:>7}  {e.n_train:>6}  {e.n_test:>6}" for e in entries]
    return "\n".join(lines)
