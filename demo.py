"""The demo (``python main.py --demo``), no download: a synthetic Stanford Cars in the real on-disk format, a short CPU
training run from scratch, the best checkpoint scored on the test split, and CAM overlays with predicted and true
boxes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .atomic_files import check_writable
from .config import TrainConfig
from .data.class_names import STANFORD_CARS_CLASS_NAMES
from .data.names import select_classes
from .synthetic import write_synthetic_stanford_cars
from .train import fit
from .visualize import render_cam_grid

DEMO_IMAGE_SIZE = 128
# The README's example brand and year: nine BMW classes of 2012 get synthetic images.
DEMO_FILTERS = {"car_brand": "BMW", "car_production_year": 2012}


@dataclass
class DemoResult:
    """Where the demo left its data, run, checkpoint and figure, and the test metrics."""

    data_root: Path
    run_dir: Path
    checkpoint: Path
    figure: Path
    test_metrics: dict[str, float]


def demo_config(data_root: Path, run_dir: Path, seed: int = 0, progress: bool = True) -> TrainConfig:
    """Settings that learn the synthetic classes from scratch on two CPU cores in about a minute."""
    return TrainConfig(
        root=str(data_root),
        checkpoints_dir=str(run_dir),
        **DEMO_FILTERS,
        n_epochs=16,
        batch_size=32,
        image_size=DEMO_IMAGE_SIZE,
        val_fraction=0.15,
        pretrained=False,
        optimizer="adamw",
        lr=3e-4,
        weight_decay=0.05,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        seed=seed,
        device="cpu",
        overwrite=True,
        progress=progress,
    )


def run_demo(
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    n_train_per_class: int = 28,
    n_test_per_class: int = 10,
    n_epochs: int | None = None,
    arch: str = "alexnet",
) -> DemoResult:
    """Write synthetic data, train on it, evaluate, and draw the CAMs.

    Args:
        out_dir: Folder for ``data/``, ``run/`` and the figure (a demo run there is replaced); None: a new temporary
            one.
        seed: Seed of the data, the split and the training.
        n_train_per_class, n_test_per_class: Synthetic images per class.
        n_epochs: Override the demo's number of epochs (tests use fewer).
        arch: The backbone (``--arch``), trained from scratch.
    """
    base = (
        Path(out_dir).expanduser() if out_dir is not None else Path(tempfile.mkdtemp(prefix="cam_stanford_cars_demo_"))
    )
    check_writable(base, "--demo_dir")
    data_root, run_dir = base / "data", base / "run"
    class_names = [STANFORD_CARS_CLASS_NAMES[i] for i in select_classes(STANFORD_CARS_CLASS_NAMES, **DEMO_FILTERS)]
    try:
        write_synthetic_stanford_cars(
            data_root,
            class_names=class_names,
            n_train_per_class=n_train_per_class,
            n_test_per_class=n_test_per_class,
            seed=seed,
        )
    except ValueError as err:
        raise ValueError(f"--demo_dir {str(base)!r}: {err}") from None
    config = demo_config(data_root, run_dir, seed=seed, progress=progress)
    config.n_epochs = config.n_epochs if n_epochs is None else n_epochs
    config.arch = arch
    result = fit(config)
    if result.interrupted:
        raise KeyboardInterrupt
    figure = render_cam_grid(result.best_checkpoint, data_root, split="test", n=8, out=base / "cam_demo.png", seed=seed)
    return DemoResult(data_root, run_dir, result.best_checkpoint, figure, result.test_metrics)
