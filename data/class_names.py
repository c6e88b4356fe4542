"""The 196 Stanford Cars class names in ``devkit/cars_meta.mat`` order (label 0 first), read from
``class_names.txt``."""

from pathlib import Path

STANFORD_CARS_CLASS_NAMES: tuple[str, ...] = tuple(
    (Path(__file__).with_name("class_names.txt")).read_text(encoding="utf-8").splitlines()
)
NUM_CLASSES: int = len(STANFORD_CARS_CLASS_NAMES)
