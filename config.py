"""The settings of a training run, filled by ``main.py``'s parser or by hand."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

MAX_IMAGE_SIZE = 1024  # 12 MiB per image already; larger sides are typos that would exhaust memory
MAX_WORKERS_PER_CORE = 4  # more loader workers per core only queue up behind each other
SELECT_BY = ("val_top1", "val_maxboxacc")  # the rules that choose the best epoch (``run_folder.epoch_score``)


@dataclass
class TrainConfig:
    """Everything a training run needs; ``main.py``'s parser fills it (each flag's dest is a field, its help
    the meaning). Filters take None (all), one value, or a list of values, as ``StanfordCarsCAM`` does."""

    root: str = "stanford_cars_dataset"
    checkpoints_dir: str = "checkpoints"
    car_type: str | list[str] | None = None
    car_brand: str | list[str] | None = None
    car_production_year: int | list[int] | None = None
    download_datasets: bool = False
    n_epochs: int = 30
    batch_size: int = 32
    image_size: int = 224
    arch: str = "alexnet"  # one of model.ARCHS
    val_fraction: float = 0.1
    pretrained: bool | str = True
    optimizer: str = "sgd"
    lr: float = 0.01
    backbone_lr_scale: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    cache_dir: str | None = None
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    eval_test_every_epoch: bool = False
    select_by: str = "val_top1"
    resume: str | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first value that cannot work, and its fix."""
        finite, max_workers = math.isfinite, MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)
        checks = [
            (bool(str(self.root).strip()), "--root_datasets_dir is empty; pass the folder that holds Stanford Cars"),
            (bool(str(self.checkpoints_dir).strip()), "--checkpoints_dir is empty; pass a folder for the run's files"),
            (
                self.resume is None or bool(str(self.resume).strip()),
                "--resume is empty; pass the run's last.pt, or leave --resume out",
            ),
            (self.n_epochs >= 1, f"--n_epochs must be at least 1, got {self.n_epochs}"),
            (self.batch_size >= 1, f"--batch_size must be at least 1, got {self.batch_size}"),
            (self.image_size >= 64, f"--image_size must be at least 64, got {self.image_size}"),
            (
                self.image_size <= MAX_IMAGE_SIZE,
                f"--image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size} "
                f"(one image alone would take {3 * 4 * self.image_size**2 / 2**30:.2g} GiB); the paper uses 224",
            ),
            (0.0 <= self.val_fraction < 1.0, f"--val_fraction must lie in [0, 1), got {self.val_fraction}"),
            (finite(self.lr) and self.lr > 0, f"--lr must be a finite positive number, got {self.lr}"),
            (
                finite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
                f"--backbone_lr_scale must be a finite number >= 0, got {self.backbone_lr_scale}",
            ),
            (0.0 <= self.momentum < 1.0, f"--momentum must lie in [0, 1), got {self.momentum}"),
            (
                finite(self.weight_decay) and self.weight_decay >= 0,
                f"--weight_decay must be a finite number >= 0, got {self.weight_decay}",
            ),
            (
                finite(self.warmup_epochs) and self.warmup_epochs >= 0,
                f"--warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}",
            ),
            (0.0 <= self.label_smoothing < 1.0, f"--label_smoothing must lie in [0, 1), got {self.label_smoothing}"),
            (self.optimizer in ("sgd", "adamw"), f"--optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (self.select_by in SELECT_BY, f"--select_by must be {' or '.join(SELECT_BY)}, got {self.select_by!r}"),
            (0 <= self.seed < 2**32, f"--seed must be a whole number in [0, 2**32), got {self.seed}"),
            (self.num_workers is None or self.num_workers >= 0, f"--num_workers must be >= 0, got {self.num_workers}"),
            (
                self.num_workers is None or self.num_workers <= max_workers,
                f"--num_workers {self.num_workers} is far more than this machine's {os.cpu_count()} cores can feed; "
                f"use at most {max_workers}, or leave it out for the measured default",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
