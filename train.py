"""Training and evaluation loops for the GAP-AlexNet on a filtered Stanford Cars.

``fit(config)`` runs a whole training run: it builds the filtered datasets, holds out a
validation split from the train images (the test split never chooses anything), trains with a
warm-up + cosine schedule, evaluates classification and CAM localisation each epoch, keeps the
last and the best checkpoint, and finally scores the best weights on the test split.

The same code runs on one process or under ``torchrun`` as DistributedDataParallel: every rank
reads its shard through a ``DistributedSampler``, metrics are summed across ranks, and only rank
0 writes files and draws progress bars.

Determinism: the order of each epoch comes from ``(seed, epoch)`` and the augmentation RNG (the
loader workers' seeds too) is re-seeded from them at every epoch start, so an epoch's batches do
not depend on what ran before: ``--resume`` continues exactly where an epoch ended. A run stopped
mid-epoch also saves every rank's RNG state, which makes the rest of that epoch exact with
``num_workers=0``; with workers, its remaining images get fresh augmentation draws. "Exact" means
bit-identical weights on the CPU; on a GPU, cuDNN's non-deterministic kernels make a resumed run
as close to an uninterrupted one as two uninterrupted runs are to each other.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate
from tqdm import tqdm

from .dataset import StanfordCarsCAM
from .localization import LocalizationMeter
from .model import AlexNetGAP, atomic_file, load_checkpoint, require_entries, save_checkpoint, unwrap_model

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_LOG = "metrics.jsonl"
ARGS_FILE = "args.json"
CURVES_FIGURE = "training_curves.png"
TEST_METRICS = "test_metrics.json"
# A side of 1024 already makes 12 MiB per image; larger ones are typos, and would exhaust memory.
MAX_IMAGE_SIZE = 1024
# More loader workers than this per core only queue up behind each other.
MAX_WORKERS_PER_CORE = 4


@dataclass
class TrainConfig:
    """Everything a training run needs; ``main.py`` builds it from the command line.

    Filters take None (all), one value, or a list of values, as ``StanfordCarsCAM`` does.
    ``cache_dir`` keeps decoded images between epochs and runs (see ``dataset.ImageCache``).
    """

    root: str = "stanford_cars_dataset"
    checkpoints_dir: str = "checkpoints"
    car_type: str | list[str] | None = None
    car_brand: str | list[str] | None = None
    car_production_year: int | list[int] | None = None
    download_datasets: bool = False
    n_epochs: int = 30
    batch_size: int = 32
    image_size: int = 224
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
    resume: str | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first value that cannot work, and its fix."""
        finite = math.isfinite
        max_workers = MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)
        checks = [
            (bool(str(self.root).strip()), "--root_datasets_dir is empty; pass the folder that holds Stanford Cars"),
            (bool(str(self.checkpoints_dir).strip()), "--checkpoints_dir is empty; pass a folder for the run's files"),
            (self.resume is None or bool(str(self.resume).strip()), "--resume is empty; pass the run's last.pt, or leave --resume out"),
            (self.n_epochs >= 1, f"--n_epochs must be at least 1, got {self.n_epochs}"),
            (self.batch_size >= 1, f"--batch_size must be at least 1, got {self.batch_size}"),
            (self.image_size >= 64, f"--image_size must be at least 64, got {self.image_size}"),
            (self.image_size <= MAX_IMAGE_SIZE,
             f"--image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size} (one image alone would take "
             f"{3 * 4 * self.image_size ** 2 / 2**30:.2g} GiB); the paper uses 224"),
            (0.0 <= self.val_fraction < 1.0, f"--val_fraction must lie in [0, 1), got {self.val_fraction}"),
            (finite(self.lr) and self.lr > 0, f"--lr must be a finite positive number, got {self.lr}"),
            (finite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
             f"--backbone_lr_scale must be a finite number >= 0, got {self.backbone_lr_scale}"),
            (0.0 <= self.momentum < 1.0, f"--momentum must lie in [0, 1), got {self.momentum}"),
            (finite(self.weight_decay) and self.weight_decay >= 0, f"--weight_decay must be a finite number >= 0, got {self.weight_decay}"),
            (finite(self.warmup_epochs) and self.warmup_epochs >= 0, f"--warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}"),
            (0.0 <= self.label_smoothing < 1.0, f"--label_smoothing must lie in [0, 1), got {self.label_smoothing}"),
            (self.optimizer in ("sgd", "adamw"), f"--optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (0 <= self.seed < 2**32, f"--seed must be a whole number in [0, 2**32), got {self.seed}"),
            (self.num_workers is None or self.num_workers >= 0, f"--num_workers must be >= 0, got {self.num_workers}"),
            (self.num_workers is None or self.num_workers <= max_workers,
             f"--num_workers {self.num_workers} is far more than this machine's {os.cpu_count()} cores can feed; "
             f"use at most {max_workers}, or leave it out for the measured default"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# --------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL on CUDA, gloo otherwise. A plain ``python main.py`` gets a one-process ``DistInfo``.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = (device_name == "auto" or device_name.startswith("cuda")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def shutdown_distributed() -> None:
    """Leave the process group ``init_distributed`` joined, if any (NCCL warns, or can hang, otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA, then Apple MPS, then CPU for ``"auto"``; otherwise the named device.

    Raises:
        ValueError: If the named device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    kind = name.split(":")[0]
    if kind not in available:
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if not available[kind]:
        raise ValueError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return torch.device(name) if ":" in name or kind != "cuda" else torch.device("cuda", local_rank)


def _cores_per_process(dist_info: DistInfo) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // dist_info.world_size)


# On a CPU-only machine the network's threads and the loader's workers share the cores. Measured
# on 2 cores (benchmarks/run.py, "thread split"): torch on both cores trains twice as fast as on
# one, and one worker process beats loading in the training process, whose batch stacking and
# resizing then go through torch's thread pool and stall it whenever another process holds a core.
CPU_LOADER_WORKERS = 1


def default_num_workers(dist_info: DistInfo, device: torch.device | None = None) -> int:
    """Loader workers for this process.

    With an accelerator: the cores this process may use, less one for the training step, at most
    8. When the network itself runs on the CPU: ``CPU_LOADER_WORKERS``, as measured best (the
    loader then works between steps instead of competing with the network's threads).
    """
    per_process = _cores_per_process(dist_info)
    if device is not None and device.type == "cpu":
        return min(CPU_LOADER_WORKERS, per_process)
    return max(0, min(8, per_process - 1))


def configure_cpu_threads(dist_info: DistInfo, device: torch.device) -> int:
    """When the network runs on the CPU, give torch one intra-op thread per core of this process.

    Returns:
        The number of torch threads now set.
    """
    if device.type == "cpu":
        torch.set_num_threads(_cores_per_process(dist_info))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class RunData:
    """The datasets of a run: train (augmented), validation (held out from train) and test."""

    train: Dataset
    val: Dataset | None
    test: StanfordCarsCAM
    class_names: list[str]


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into train and validation, per class, deterministically.

    Each class gives ``round(n_c * val_fraction)`` of its images to validation, at least one when
    it has two or more and ``val_fraction > 0``, so every class is both learned and checked.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx.extend(members[i] for i in order[:n_val])
        train_idx.extend(members[i] for i in order[n_val:])
    return sorted(train_idx), sorted(val_idx)


def build_datasets(config: TrainConfig) -> RunData:
    """The filtered train/validation/test datasets; raises before any file is written."""
    filters = dict(car_type=config.car_type, car_brand=config.car_brand, car_production_year=config.car_production_year)
    common = dict(image_size=config.image_size, return_box=True, cache_dir=config.cache_dir, **filters)
    train_full = StanfordCarsCAM(
        config.root, split="train", download_datasets=config.download_datasets, augment=True, **common
    )
    # The validation images are train images seen without augmentation: the same parsed split.
    train_plain = copy.copy(train_full)
    train_plain.augment = False
    test = StanfordCarsCAM(config.root, split="test", augment=False, **common)
    empty = sorted(set(range(len(train_full.classes))) - set(train_full.targets))
    if empty:
        names = [train_full.classes[i] for i in empty]
        raise ValueError(
            f"{len(empty)} of the {len(train_full.classes)} selected classes have no train images under "
            f"{str(config.root)!r} (e.g. {names[:3]}); narrow --car_type/--car_brand/--car_production_year "
            "to classes that have images, or complete the data"
        )
    train_idx, val_idx = stratified_split(train_full.targets, config.val_fraction, config.seed)
    val = Subset(train_plain, val_idx) if val_idx else None
    return RunData(Subset(train_full, train_idx), val, test, list(train_full.classes))


def epoch_sampler(dataset: Dataset, epoch: int, seed: int, dist_info: DistInfo) -> DistributedSampler:
    """This rank's shuffled share of ``dataset`` for one epoch, seeded by ``(seed, epoch)``."""
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def eval_indices(n: int, dist_info: DistInfo) -> list[int]:
    """This rank's share of an evaluation set, with no padding, so every image counts once."""
    return list(range(dist_info.rank, n, dist_info.world_size))


def collate_batch(items: Sequence[tuple[Any, ...]]) -> Any:
    """``default_collate``, except that in the training process itself tensors are stacked by NumPy.

    A worker stacks straight into shared memory (``default_collate``); in the training process a
    single-threaded copy is as fast as torch's parallel one and cannot stall on a busy machine.
    """
    if torch.utils.data.get_worker_info() is not None:
        return default_collate(items)
    columns = list(zip(*items))
    out: list[Any] = []
    for column in columns:
        if isinstance(column[0], Tensor) and column[0].device.type == "cpu" and column[0].dtype != torch.bfloat16:
            out.append(torch.from_numpy(np.stack([t.numpy() for t in column])))
        else:
            out.append(default_collate(list(column)))
    return out


def make_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, num_workers: int, device: torch.device, seed: int) -> DataLoader:
    """A loader over ``indices`` in that order (the order is decided by the caller)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(indices),
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )


# --------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(model: AlexNetGAP, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (default) or AdamW; the pretrained layers learn at ``backbone_lr_scale`` times the rate.

    Biases get no weight decay.
    """
    new = {id(p) for p in model.new_layer_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in new, p.ndim > 1), []).append(p)
    param_groups = []
    for (is_new, decays), params in sorted(groups.items()):
        scale = 1.0 if is_new or not config.pretrained else config.backbone_lr_scale
        param_groups.append(
            {"params": params, "lr": config.lr * scale, "weight_decay": config.weight_decay if decays else 0.0}
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr)
    return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 1% of the rate, then cosine decay to zero, stepped every batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums, except on Apple MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on GPUs that compute in it, fp16 on older GPUs, None off CUDA.

    Pre-Ampere GPUs (T4, V100) only emulate bf16 and have no bf16 cuDNN convolutions, so they
    get fp16 (and a GradScaler); ``is_bf16_supported()`` alone counts emulation as support.
    """
    if device.type != "cuda":
        return None
    with torch.cuda.device(device):
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def autocast_context(device: torch.device, enabled: bool) -> Any:
    """Autocast to :func:`amp_dtype` on CUDA, nothing elsewhere."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


@dataclass
class EpochProgress:
    """How far this rank is through an epoch; saved on interruption so a resume continues it."""

    step: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss * n, correct, n
    seconds: float = 0.0


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader | Sequence[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    device: torch.device,
    epoch: int,
    n_epochs: int,
    state: EpochProgress,
    dist_info: DistInfo = DistInfo(),
    amp: bool = True,
    channels_last: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    log_every: int = 10,
) -> bool:
    """Train on the batches of ``loader`` (the rest of an epoch when ``state.step > 0``).

    Running sums stay on the device and are read every ``log_every`` steps, so a step never
    waits for the host; a non-finite loss is caught at those reads and at the end.

    Args:
        loader: Yields ``(images (B,3,S,S), labels (B,), ...)``; already starts at ``state.step``.
        state: Updated in place: steps done, running sums and time spent.
        should_stop: Checked after every step; ``True`` ends the epoch early.

    Returns:
        ``True`` if the epoch ran to its end, ``False`` if ``should_stop`` ended it.

    Raises:
        NonFiniteLossError: If the loss stops being finite.
    """
    model.train()
    sums = torch.tensor(state.sums, device=device, dtype=accumulator_dtype(device))
    total = state.step + len(loader)
    bar = tqdm(
        total=total, initial=state.step, desc=f"epoch {epoch + 1}/{n_epochs}", unit="batch",
        disable=not (progress and dist_info.is_main), dynamic_ncols=True, mininterval=1.0, leave=False,
    )
    start = time.perf_counter() - state.seconds
    completed = True

    def read_sums() -> tuple[float, float, float]:
        # Summed over ranks, so every rank sees a non-finite loss at the same step and stops.
        loss_sum, correct, seen = all_reduce_sum(sums, dist_info).tolist()
        if not math.isfinite(loss_sum):
            bar.close()
            raise NonFiniteLossError(
                f"the training loss became {loss_sum / max(seen, 1):.4g} in epoch {epoch + 1} (step {state.step}); "
                "the last good checkpoint is kept. Lower --lr or raise --warmup_epochs, and check the data"
            )
        return loss_sum, correct, seen

    for batch in loader:
        images = batch[0].to(device, non_blocking=True)
        labels = batch[1].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        n = labels.shape[0]
        with torch.no_grad():
            sums[0] += loss.detach().to(sums.dtype) * n
            sums[1] += (logits.argmax(1) == labels).sum()
            sums[2] += n
        state.step += 1
        bar.update(1)
        if state.step % log_every == 0:
            loss_sum, correct, seen = read_sums()
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
        if should_stop() and state.step < total:
            completed = False
            break
    read_sums()
    bar.close()
    state.sums = sums.tolist()
    state.seconds = time.perf_counter() - start
    return completed


def epoch_train_metrics(state: EpochProgress, optimizer: torch.optim.Optimizer, dist_info: DistInfo, device: torch.device) -> dict[str, float]:
    """Loss, accuracy and speed of a finished epoch, summed over all ranks."""
    loss_sum, correct, seen = all_reduce_sum(torch.tensor(state.sums, device=device, dtype=accumulator_dtype(device)), dist_info).tolist()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "train_images": int(seen),
        "train_images_per_s": seen / state.seconds if state.seconds > 0 else float("nan"),
        "lr": optimizer.param_groups[-1]["lr"],
    }


def gather_rng_states(dist_info: DistInfo, device: torch.device) -> list[Tensor]:
    """Every rank's CPU RNG state, in rank order (each a uint8 tensor; one in a one-process run).

    Augmentation draws a varying number of random numbers per image, so the ranks' states differ
    and each rank resumes from its own.
    """
    state = torch.get_rng_state()
    if not dist_info.distributed:
        return [state]
    local = state.to(device)
    states = [torch.empty_like(local) for _ in range(dist_info.world_size)]
    dist.all_gather(states, local)
    return [s.cpu() for s in states]


def all_reduce_sum(values: Tensor, dist_info: DistInfo) -> Tensor:
    """Sum a tensor over all ranks (a no-op in a one-process run)."""
    if not dist_info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    image_size: int,
    dist_info: DistInfo = DistInfo(),
    criterion: nn.Module | None = None,
    amp: bool = True,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Classification and CAM localisation metrics of ``model`` on ``loader``.

    Each batch costs one forward pass: the CAM of the true class comes from the same features.
    The loader yields ``(images (B,3,S,S), labels (B,), boxes (B,4))`` with boxes in the image's
    pixels (NaN where a layout has none).

    Returns:
        ``loss`` (when a criterion is given) and the metrics of :class:`LocalizationMeter`,
        summed over all ranks.
    """
    bare = unwrap_model(model)
    bare.eval()
    meter = LocalizationMeter()
    loss_sum = torch.zeros((), device=device, dtype=accumulator_dtype(device))
    n_seen = 0
    for images, labels_cpu, boxes in tqdm(loader, desc=desc, unit="batch", disable=not (progress and dist_info.is_main), leave=False):
        images = images.to(device, non_blocking=True)
        labels = labels_cpu.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            features = bare.forward_features(images)
        # The head and the CAM in float32: in bf16, close logits tie or swap (top-1 changes) and
        # CAM values round enough to move boxes; both cost next to nothing next to the features.
        features = features.float()
        logits = bare.forward_head(features)  # (B, C)
        cams = bare.class_activation_maps(features, labels)  # (B, h, w)
        if criterion is not None:
            loss_sum += criterion(logits, labels).to(loss_sum.dtype) * labels.shape[0]
            n_seen += labels.shape[0]
        meter.update(logits.cpu(), labels_cpu, cams.cpu(), boxes, (image_size, image_size))
    if dist_info.distributed:
        meter.load_state_tensor(all_reduce_sum(meter.state_tensor().to(device), dist_info).cpu())
    metrics = meter.compute()
    if criterion is not None:
        counts = torch.stack([loss_sum, torch.tensor(float(n_seen), device=device, dtype=loss_sum.dtype)])
        total, count = all_reduce_sum(counts, dist_info).tolist()
        metrics["loss"] = total / max(count, 1)
    return metrics


# --------------------------------------------------------------------------------------------
# Files of a run


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so readers never see half of it."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written to (the OS's words), or None if it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror
    return None


def check_writable(folder: Path, flag: str = "--checkpoints_dir") -> None:
    """Raise ``ValueError`` naming ``flag`` if ``folder`` cannot be created or written to."""
    reason = unwritable_reason(folder)
    if reason is not None:
        raise ValueError(f"{flag} {str(folder)!r} is not writable ({reason}); choose another folder")


def check_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start a run over another one in ``run_dir``, unless ``overwrite``."""
    last = run_dir / LAST_CHECKPOINT
    if last.exists() and not overwrite:
        raise ValueError(
            f"--checkpoints_dir {str(run_dir)!r} already holds a run ({last.name}); continue it with "
            f"--resume {str(last)!r}, start over with --overwrite true, or choose another folder"
        )


def remove_run_files(run_dir: Path) -> None:
    """Delete what an earlier run left in ``run_dir`` (checkpoints, logs, figures, scores), nothing else."""
    names = [LAST_CHECKPOINT, BEST_CHECKPOINT, ARGS_FILE, METRICS_LOG, CURVES_FIGURE, TEST_METRICS]
    stems = (Path(LAST_CHECKPOINT).stem, Path(BEST_CHECKPOINT).stem)
    scores = [p.name for p in run_dir.glob("*_metrics.json") if p.name.split("_", 1)[0] in stems]
    for name in names + scores:
        (run_dir / name).unlink(missing_ok=True)


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl``; an absent file gives an empty list."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{str(path)!r} is damaged ({err.msg} on line {number}); delete it to resume without the "
                "earlier epochs' records, or restore it"
            ) from None
    return records


def write_metrics_log(path: Path, history: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in history))


def plain_config(config: TrainConfig) -> dict[str, Any]:
    """The run's arguments as plain JSON types (what checkpoints and ``args.json`` store)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class RunResult:
    """What ``fit`` leaves behind."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, Any]]
    test_metrics: dict[str, float]
    interrupted: bool = False


class _StopRequest:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator["_StopRequest"]:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            logger.warning("Interrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def fit(config: TrainConfig, stop_after_steps: int | None = None) -> RunResult:
    """Train, validate, checkpoint and test, as described in the module docstring.

    Args:
        config: The run's settings.
        stop_after_steps: Stop as Ctrl-C would once this many optimizer steps have run in this
            call (how tests interrupt a run at a chosen moment).

    Returns:
        A :class:`RunResult`; ``interrupted`` is set when the run stopped early.

    Raises:
        ValueError: For settings that cannot work, before anything is written.
        CheckpointError: If ``config.resume`` is not a checkpoint this run can continue.
        NonFiniteLossError: If the loss stops being finite (the last good checkpoint stays).
    """
    config.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and config.device.startswith("cuda:"):
        raise ValueError(
            f"--device {config.device} puts every process on one GPU; under torchrun each process takes "
            "the GPU of its LOCAL_RANK: pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose GPUs"
        )
    dist_info = init_distributed(config.device)
    device = select_device(config.device, dist_info.local_rank)
    if dist_info.distributed and device.type == "mps":
        # gloo, the only backend off CUDA, cannot reduce tensors that live on Apple's GPU.
        raise ValueError("torchrun cannot train on Apple MPS (no distributed backend supports it); use --device cpu, or run one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # pinned memory and capability queries then use this GPU
    run_dir = Path(config.checkpoints_dir).expanduser()
    resume_state = _read_resume_state(Path(config.resume).expanduser(), config) if config.resume else None
    if resume_state is None:
        check_new_run(run_dir, config.overwrite)
    data = build_datasets(config)
    if dist_info.is_main:
        check_writable(run_dir)
        if resume_state is None and config.overwrite:
            remove_run_files(run_dir)

    seed_everything(config.seed)
    model = AlexNetGAP(num_classes=len(data.class_names), pretrained=False if resume_state else config.pretrained)
    model.to(device)
    channels_last = config.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    configure_cpu_threads(dist_info, device)
    num_workers = default_num_workers(dist_info, device) if config.num_workers is None else config.num_workers
    steps_per_epoch = math.ceil(len(epoch_sampler(data.train, 0, config.seed, dist_info)) / config.batch_size)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.n_epochs, round(config.warmup_epochs * steps_per_epoch))
    use_scaler = config.amp and amp_dtype(device) == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    start_epoch, best_score, history, partial = 0, -math.inf, [], EpochProgress()
    rng_state: Tensor | None = None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["lr_scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch = int(resume_state["epoch"])
        best_score = float(resume_state.get("best_score", -math.inf))
        history = [r for r in read_metrics_log(run_dir / METRICS_LOG) if r["epoch"] <= start_epoch]
        if resume_state.get("epoch_progress") and dist_info.world_size == resume_state.get("world_size", 1):
            partial = EpochProgress(**resume_state["epoch_progress"])
            # The saved sums are over all ranks: rank 0 carries them, the others start from zero.
            if not dist_info.is_main:
                partial.sums = [0.0] * len(partial.sums)
            rng_state = resume_state["rng_states"][dist_info.rank]

    train_model: nn.Module = model
    if dist_info.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)

    args = plain_config(config)
    common_state = dict(
        class_names=data.class_names, car_type=config.car_type, car_brand=config.car_brand,
        car_production_year=config.car_production_year, image_size=config.image_size, args=args,
        world_size=dist_info.world_size,
    )

    def save(
        name: str, epoch: int, metrics: dict[str, Any], progress: EpochProgress | None = None,
        rng_states: list[Tensor] | None = None,
    ) -> Path:
        return save_checkpoint(
            run_dir / name, model, epoch=epoch, metrics=metrics, best_score=best_score,
            optimizer=optimizer.state_dict(), lr_scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            epoch_progress=dataclasses.asdict(progress) if progress else None,
            rng_states=rng_states, **common_state,
        )

    if dist_info.is_main:
        atomic_write_text(run_dir / ARGS_FILE, json.dumps(args, indent=2, sort_keys=True) + "\n")
        logger.info(
            "Training on %s: %d classes, %d train / %d val / %d test images, epochs %d..%d of %d steps",
            device, len(data.class_names), len(data.train), len(data.val) if data.val else 0, len(data.test),
            start_epoch + 1, config.n_epochs, steps_per_epoch,
        )

    eval_kwargs = dict(device=device, image_size=config.image_size, dist_info=dist_info, amp=config.amp, channels_last=channels_last)
    stop = _StopRequest()
    steps_run = 0

    def should_stop() -> bool:
        done = steps_run + state.step - first_step
        local = stop.requested or (stop_after_steps is not None and done >= stop_after_steps)
        if not dist_info.distributed:
            return local
        # Every rank must stop at the same step or DDP's collectives would hang; agreeing costs a
        # host sync, so ranks compare notes every 10 steps only.
        if state.step % 10:
            return False
        flag = torch.tensor([float(local)], device=device)
        return bool(all_reduce_sum(flag, dist_info).item() > 0)

    interrupted = False
    with stop.installed():
        for epoch in range(start_epoch, config.n_epochs):
            state = partial if epoch == start_epoch else EpochProgress()
            first_step = state.step
            if rng_state is not None and epoch == start_epoch:
                torch.set_rng_state(rng_state)
            else:
                # Each epoch's order and augmentation depend on (seed, epoch) alone.
                torch.manual_seed(config.seed * 100_003 + epoch)
            order = list(epoch_sampler(data.train, epoch, config.seed, dist_info))
            remaining = order[state.step * config.batch_size:]
            loader = make_loader(data.train, remaining, config.batch_size, num_workers, device, config.seed + epoch)
            completed = train_one_epoch(
                train_model, loader, optimizer, scheduler, criterion, device, epoch, config.n_epochs, state, dist_info,
                amp=config.amp, channels_last=channels_last, scaler=scaler, progress=config.progress, should_stop=should_stop,
            )
            steps_run += state.step - first_step
            if not completed:
                # Every rank stopped at the same step; the checkpoint keeps the sums over all ranks
                # and each rank's RNG state, so the epoch continues as if never stopped.
                sums = all_reduce_sum(torch.tensor(state.sums, dtype=accumulator_dtype(device), device=device), dist_info)
                progress = dataclasses.replace(state, sums=sums.tolist())
                rng_states = gather_rng_states(dist_info, device)
                if dist_info.is_main:
                    save(LAST_CHECKPOINT, epoch, history[-1] if history else {}, progress=progress, rng_states=rng_states)
                interrupted = True
                break
            record: dict[str, Any] = {"epoch": epoch + 1, **epoch_train_metrics(state, optimizer, dist_info, device)}
            if data.val is not None:
                val_loader = make_loader(data.val, eval_indices(len(data.val), dist_info), config.batch_size, num_workers, device, config.seed)
                val = evaluate(train_model, val_loader, criterion=criterion, desc="val", progress=config.progress, **eval_kwargs)
                record.update({f"val_{k}": v for k, v in val.items()})
            if config.eval_test_every_epoch:
                test = evaluate(train_model, _test_loader(data, config, num_workers, device, dist_info), desc="test", progress=config.progress, **eval_kwargs)
                record.update({f"test_{k}": v for k, v in test.items()})
            # The best epoch has the best validation top-1 (then the lowest validation loss);
            # without a validation split the last epoch is the best.
            score = record["val_top1"] - 1e-6 * record["val_loss"] if data.val is not None else float(epoch)
            record["best"] = score > best_score
            best_score = max(best_score, score)
            history.append(record)
            if dist_info.is_main:
                last = save(LAST_CHECKPOINT, epoch + 1, record)
                if record["best"]:
                    # The same contents: copied, not serialised a second time.
                    with atomic_file(run_dir / BEST_CHECKPOINT) as handle, open(last, "rb") as source:
                        shutil.copyfileobj(source, handle, length=1 << 22)
                write_metrics_log(run_dir / METRICS_LOG, history)
                _plot_curves(history, run_dir / CURVES_FIGURE)
                logger.info(summary_line(record, config.n_epochs))
            stop_now = stop.requested or (stop_after_steps is not None and steps_run >= stop_after_steps and epoch + 1 < config.n_epochs)
            if dist_info.distributed:
                stop_now = bool(all_reduce_sum(torch.tensor([float(stop_now)], device=device), dist_info).item() > 0)
            if stop_now:
                interrupted = True
                break

    if interrupted:
        if dist_info.distributed:
            dist.barrier()  # the other ranks wait until rank 0 has saved
        if dist_info.is_main:
            logger.warning("Stopped early; the run is saved in %s. Continue it with --resume %s", run_dir / LAST_CHECKPOINT, run_dir / LAST_CHECKPOINT)
        return RunResult(run_dir, run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT, history, {}, interrupted=True)

    if dist_info.distributed:
        dist.barrier()
    best_model, best_checkpoint = load_checkpoint(run_dir / BEST_CHECKPOINT, map_location=device)
    test_metrics = evaluate(best_model, _test_loader(data, config, num_workers, device, dist_info), desc="test", progress=config.progress, **eval_kwargs)
    test_metrics["epoch"] = best_checkpoint["epoch"]
    if dist_info.is_main:
        atomic_write_text(run_dir / TEST_METRICS, json.dumps(test_metrics, indent=2, sort_keys=True) + "\n")
        logger.info("Test split (best epoch %d): %s", best_checkpoint["epoch"], format_metrics(test_metrics))
    return RunResult(run_dir, run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT, history, test_metrics)


def _test_loader(data: RunData, config: TrainConfig, num_workers: int, device: torch.device, dist_info: DistInfo) -> DataLoader:
    return make_loader(data.test, eval_indices(len(data.test), dist_info), config.batch_size, num_workers, device, config.seed)


# Settings a resumed run must share with the run it continues: the data, its order and the
# optimisation (the optimizer and schedule states saved in the checkpoint were built from them).
RESUME_MUST_MATCH = (
    "n_epochs", "batch_size", "image_size", "val_fraction", "car_type", "car_brand", "car_production_year", "seed",
    "optimizer", "lr", "backbone_lr_scale", "momentum", "weight_decay", "warmup_epochs", "label_smoothing",
)


def _read_resume_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint to continue, checked against the run it is asked to continue."""
    _, checkpoint = load_checkpoint(path)
    require_entries(checkpoint, ("optimizer", "lr_scheduler", "epoch", "args"), path)
    saved = checkpoint["args"]
    run_dir = Path(config.checkpoints_dir).expanduser()
    if path.parent.resolve() != run_dir.resolve():
        raise ValueError(
            f"--resume {str(path)!r} belongs to the run in {str(path.parent)!r} but --checkpoints_dir is "
            f"{str(run_dir)!r}; pass --checkpoints_dir {str(path.parent)!r} to continue that run"
        )
    if checkpoint.get("epoch_progress"):
        require_entries(checkpoint, ("rng_states",), path)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if checkpoint.get("epoch_progress") and checkpoint.get("world_size", 1) != world_size:
        raise ValueError(
            f"--resume {str(path)!r} stopped mid-epoch with {checkpoint.get('world_size', 1)} processes; "
            f"continue it with the same number of processes (this run has {world_size})"
        )
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != json.loads(json.dumps(getattr(config, key))):
            raise ValueError(
                f"--resume {str(path)!r} was trained with {key}={saved.get(key)!r} but this run has "
                f"{key}={getattr(config, key)!r}; pass the same value to continue it"
            )
    if int(checkpoint["epoch"]) >= config.n_epochs and not checkpoint.get("epoch_progress"):
        raise ValueError(
            f"--resume {str(path)!r}: that run already finished all {config.n_epochs} epochs; its best "
            f"checkpoint is {str(path.with_name(BEST_CHECKPOINT))!r} (score it with --evaluate). Start a new run in another folder to train longer"
        )
    return checkpoint


METRIC_LABELS = (
    ("top1", "top-1"), ("top5", "top-5"), ("gt_known_loc", "GT-known Loc"), ("top1_loc", "Top-1 Loc"),
    ("maxboxacc", "MaxBoxAcc"), ("maxboxacc_v2", "MaxBoxAccV2"),
)


def format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """``top-1 0.812  top-5 0.990  ...`` for the metrics present."""
    parts = [f"{label} {metrics[prefix + key]:.3f}" for key, label in METRIC_LABELS if prefix + key in metrics]
    return "  ".join(parts)


def summary_line(record: dict[str, Any], n_epochs: int) -> str:
    """One line per epoch: training loss/accuracy/speed, then the validation metrics."""
    line = (
        f"epoch {record['epoch']}/{n_epochs}  loss {record['train_loss']:.4f}  acc {record['train_top1']:.3f}  "
        f"{record['train_images_per_s']:.0f} img/s  lr {record['lr']:.2e}"
    )
    if "val_top1" in record:
        line += f"  | val loss {record['val_loss']:.4f}  " + format_metrics(record, "val_")
    return line + ("  *best*" if record.get("best") else "")


def _plot_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    from .visualize import plot_training_curves

    plot_training_curves(history, save_path=path)


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    root: str | os.PathLike,
    split: str = "test",
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    download_datasets: bool = False,
) -> dict[str, float]:
    """Score a checkpoint on a split of the data it was trained for (its filters and size).

    Writes the metrics as ``<checkpoint stem>_<split>_metrics.json`` beside the checkpoint.

    Returns:
        The metrics of :class:`LocalizationMeter` plus ``split`` and ``checkpoint``.
    """
    dev = select_device(device)
    model, checkpoint = load_checkpoint(checkpoint_path, map_location=dev)
    path = Path(checkpoint_path)
    out = path.with_name(f"{path.stem}_{split}_metrics.json")
    reason = unwritable_reason(out.parent)
    if reason is not None:
        raise ValueError(
            f"the scores are written beside the checkpoint, as {str(out)!r}, but that folder is not writable "
            f"({reason}); copy the checkpoint somewhere writable and evaluate that copy"
        )
    require_entries(checkpoint, ("image_size", "class_names"), checkpoint_path)
    dataset = StanfordCarsCAM(
        root, split=split, car_type=checkpoint.get("car_type"), car_brand=checkpoint.get("car_brand"),
        car_production_year=checkpoint.get("car_production_year"), image_size=checkpoint["image_size"],
        augment=False, return_box=True, download_datasets=download_datasets,
    )
    if list(dataset.classes) != list(checkpoint["class_names"]):
        raise ValueError(
            f"the data under {str(root)!r} gives classes {list(dataset.classes)[:4]}... but the checkpoint was "
            f"trained on {list(checkpoint['class_names'])[:4]}...; point --root_datasets_dir at the data it was trained on"
        )
    configure_cpu_threads(DistInfo(), dev)
    workers = default_num_workers(DistInfo(), dev) if num_workers is None else num_workers
    loader = make_loader(dataset, range(len(dataset)), batch_size, workers, dev, seed=0)
    metrics: dict[str, Any] = evaluate(model, loader, dev, checkpoint["image_size"], progress=progress, desc=f"evaluate {split}")
    metrics.update(split=split, checkpoint=str(checkpoint_path))
    atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
