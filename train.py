"""Training and evaluation loops for the GAP-AlexNet on a filtered Stanford Cars.

``fit(config)`` holds out a validation split from the train images (the test split never chooses
anything), trains with a warm-up + cosine schedule, evaluates classification and CAM localisation
each epoch, keeps the last and the best checkpoint (best by ``config.select_by``, see
``runs.epoch_score``), and scores the best weights on the test split. Under ``torchrun`` it runs
as DistributedDataParallel: metrics are summed across ranks and only rank 0 writes files.

Determinism: each epoch's order and augmentation come from ``(seed, epoch)`` alone, and a run
stopped mid-epoch saves every rank's RNG state, so ``--resume`` continues as if never stopped
(bit-identical weights on the CPU with ``num_workers=0``; with workers the remaining images get
fresh augmentation draws; on a GPU, as close as cuDNN's non-deterministic kernels allow).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .checkpoint import require_entries, save_checkpoint, unwrap_model
from .config import MAX_IMAGE_SIZE, MAX_WORKERS_PER_CORE, TrainConfig
from .dataset import StanfordCarsCAM
from .distributed import (DistInfo, all_reduce_sum, epoch_sampler, eval_indices, gather_rng_states, init_distributed,
                          shutdown_distributed)
from .files import atomic_file, atomic_write_text, check_writable, unwritable_reason
from .localization import METRIC_LABELS, LocalizationMeter
from .model import AlexNetGAP, load_checkpoint
from .runs import (ARGS_FILE, BEST_CHECKPOINT, CURVES_FIGURE, LAST_CHECKPOINT, METRICS_LOG, RESUME_MUST_MATCH, TEST_METRICS,
                   StopRequest, check_new_run, epoch_score, keep_as_best, plain_config, read_metrics_log, read_resume_state,
                   remove_run_files, resumed_history, write_metrics_log)
from .runtime import (CPU_LOADER_WORKERS, accumulator_dtype, amp_dtype, autocast_context, collate_batch, configure_cpu_threads,
                      default_num_workers, make_loader, seed_everything, select_device, start_process)
from .visualize import plot_training_curves

__all__ = [
    # defined here
    "RunData", "stratified_split", "build_datasets", "collate_batch", "make_loader", "build_optimizer", "build_scheduler",
    "NonFiniteLossError", "EpochProgress", "StepSettings", "train_one_epoch", "epoch_train_metrics", "evaluate",
    "RunResult", "fit", "format_metrics", "summary_line", "evaluate_checkpoint",
    # re-exported from where they moved
    "TrainConfig", "MAX_IMAGE_SIZE", "MAX_WORKERS_PER_CORE", "DistInfo", "init_distributed", "shutdown_distributed",
    "epoch_sampler", "eval_indices", "gather_rng_states", "all_reduce_sum", "select_device", "CPU_LOADER_WORKERS",
    "default_num_workers", "configure_cpu_threads", "seed_everything", "accumulator_dtype", "amp_dtype",
    "autocast_context", "atomic_write_text", "unwritable_reason", "check_writable", "atomic_file", "LAST_CHECKPOINT",
    "BEST_CHECKPOINT", "METRICS_LOG", "ARGS_FILE", "CURVES_FIGURE", "TEST_METRICS", "RESUME_MUST_MATCH", "check_new_run",
    "remove_run_files", "read_metrics_log", "write_metrics_log", "plain_config", "METRIC_LABELS", "StanfordCarsCAM",
    "LocalizationMeter", "AlexNetGAP", "load_checkpoint", "save_checkpoint", "require_entries", "unwrap_model",
]

logger = logging.getLogger(__name__)


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
    train_full = StanfordCarsCAM(config.root, split="train", download_datasets=config.download_datasets, augment=True, **common)
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
    if val_idx and config.select_by == "val_maxboxacc" and np.isnan(train_full.boxes[val_idx, 0]).all():
        raise ValueError("--select_by val_maxboxacc needs boxes, and no validation image has one; use --select_by val_top1")
    val = Subset(train_plain, val_idx) if val_idx else None
    return RunData(Subset(train_full, train_idx), val, test, list(train_full.classes))


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
        param_groups.append({"params": params, "lr": config.lr * scale, "weight_decay": config.weight_decay if decays else 0.0})
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


# --------------------------------------------------------------------------------------------
# One epoch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochProgress:
    """How far this rank is through an epoch; saved on interruption so a resume continues it."""

    step: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss * n, correct, n
    seconds: float = 0.0


@dataclass
class StepSettings:
    """How ``train_one_epoch`` takes a step: loss, schedule, precision, ranks and reporting."""

    criterion: nn.Module
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    dist_info: DistInfo = DistInfo()
    amp: bool = True
    channels_last: bool = False
    progress: bool = True
    n_epochs: int = 1
    log_every: int = 10  # steps between reads of the running sums (each read waits for the device)


def _checked_sums(sums: Tensor, settings: StepSettings, epoch: int, step: int) -> tuple[float, float, float]:
    # Summed over ranks, so every rank sees a non-finite loss at the same step and stops.
    loss_sum, correct, seen = all_reduce_sum(sums, settings.dist_info).tolist()
    if not math.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"the training loss became {loss_sum / max(seen, 1):.4g} in epoch {epoch + 1} (step {step}); "
            "the last good checkpoint is kept. Lower --lr or raise --warmup_epochs, and check the data"
        )
    return loss_sum, correct, seen


def _train_step(model: nn.Module, batch: Sequence[Tensor], optimizer: torch.optim.Optimizer, s: StepSettings) -> tuple[Tensor, Tensor, Tensor]:
    """One optimizer and schedule step; returns the loss (), logits (B, C) and labels (B,)."""
    images = batch[0].to(s.device, non_blocking=True)
    labels = batch[1].to(s.device, non_blocking=True)
    if s.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(s.device, s.amp):
        logits = model(images)
    loss = s.criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    if s.scaler is not None:
        s.scaler.scale(loss).backward()
        s.scaler.step(optimizer)
        s.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    s.scheduler.step()
    return loss.detach(), logits.detach(), labels


def train_one_epoch(
    model: nn.Module, loader: DataLoader | Sequence[Any], optimizer: torch.optim.Optimizer, settings: StepSettings,
    epoch: int, state: EpochProgress, should_stop: Callable[[int], bool] = lambda step: False,
) -> bool:
    """Train on the batches of ``loader`` (the rest of an epoch when ``state.step > 0``).

    Running sums stay on the device and are read every ``settings.log_every`` steps, so a step
    never waits for the host; a non-finite loss is caught at those reads and at the end.

    Args:
        loader: Yields ``(images (B,3,S,S), labels (B,), ...)``; already starts at ``state.step``.
        state: Updated in place: steps done, running sums and time spent.
        should_stop: Called with ``state.step`` after every step; ``True`` ends the epoch early.

    Returns:
        ``True`` if the epoch ran to its end, ``False`` if ``should_stop`` ended it.

    Raises:
        NonFiniteLossError: If the loss stops being finite.
    """
    s = settings
    model.train()
    sums = torch.tensor(state.sums, device=s.device, dtype=accumulator_dtype(s.device))  # loss * n, correct, n
    total = state.step + len(loader)
    start = time.perf_counter() - state.seconds
    completed = True
    with tqdm(total=total, initial=state.step, desc=f"epoch {epoch + 1}/{s.n_epochs}", unit="batch", leave=False,
              disable=not (s.progress and s.dist_info.is_main), dynamic_ncols=True, mininterval=1.0) as bar:
        for batch in loader:
            loss, logits, labels = _train_step(model, batch, optimizer, s)
            with torch.no_grad():
                sums[0] += loss.to(sums.dtype) * labels.shape[0]
                sums[1] += (logits.argmax(1) == labels).sum()
                sums[2] += labels.shape[0]
            state.step += 1
            bar.update(1)
            if state.step % s.log_every == 0:
                loss_sum, correct, seen = _checked_sums(sums, s, epoch, state.step)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
            if should_stop(state.step) and state.step < total:
                completed = False
                break
        _checked_sums(sums, s, epoch, state.step)
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


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, image_size: int, dist_info: DistInfo = DistInfo(),
    criterion: nn.Module | None = None, amp: bool = True, channels_last: bool = False, progress: bool = False, desc: str = "eval",
) -> dict[str, float]:
    """Classification and CAM localisation metrics of ``model`` on ``loader``.

    Each batch costs one forward pass: the CAM of the true class comes from the same features.
    The loader yields ``(images (B,3,S,S), labels (B,), boxes (B,4))`` with boxes in the image's
    pixels (NaN where a layout has none).

    Returns:
        ``loss`` (when a criterion is given) and the metrics of :class:`LocalizationMeter`,
        summed over all ranks.
    """
    bare = unwrap_model(model).eval()
    meter = LocalizationMeter()
    loss_and_count = torch.zeros(2, device=device, dtype=accumulator_dtype(device))
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
            loss_and_count[0] += criterion(logits, labels).to(loss_and_count.dtype) * labels.shape[0]
            loss_and_count[1] += labels.shape[0]
        meter.update(logits.cpu(), labels_cpu, cams.cpu(), boxes, (image_size, image_size))
    if dist_info.distributed:
        meter.load_state_tensor(all_reduce_sum(meter.state_tensor().to(device), dist_info).cpu())
    metrics = meter.compute()
    if criterion is not None:
        total, count = all_reduce_sum(loss_and_count, dist_info).tolist()
        metrics["loss"] = total / max(count, 1)
    return metrics


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


@dataclass
class _Run:
    """The objects of one training run: built by ``_build_run``, then updated epoch by epoch."""

    config: TrainConfig
    data: RunData
    run_dir: Path
    model: AlexNetGAP  # the bare model, whose weights are saved
    train_model: nn.Module  # the model wrapped for DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    steps: StepSettings
    num_workers: int
    start_epoch: int = 0
    best_score: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: EpochProgress = field(default_factory=EpochProgress)  # the first epoch's progress
    rng_state: Tensor | None = None  # the RNG state to continue a mid-epoch stop with


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
    dist_info, device = start_process(config.device)
    run_dir = Path(config.checkpoints_dir).expanduser()
    resume_state = read_resume_state(Path(config.resume).expanduser(), config) if config.resume else None
    if resume_state is None:
        check_new_run(run_dir, config.overwrite)
    data = build_datasets(config)
    if dist_info.is_main:
        check_writable(run_dir)
        if resume_state is None and config.overwrite:
            remove_run_files(run_dir)

    run = _build_run(config, data, run_dir, dist_info, device, resume_state)
    if dist_info.is_main:
        atomic_write_text(run_dir / ARGS_FILE, json.dumps(plain_config(config), indent=2, sort_keys=True) + "\n")
        logger.info(
            "Training on %s: %d classes, %d train / %d val / %d test images, epochs %d..%d of %d steps",
            device, len(data.class_names), len(data.train), len(data.val) if data.val else 0, len(data.test),
            run.start_epoch + 1, config.n_epochs, _steps_per_epoch(config, data, dist_info),
        )
    stop = StopRequest(dist_info, device, stop_after_steps)
    with stop.installed():
        interrupted = _train_epochs(run, stop)
    if dist_info.distributed:
        dist.barrier()  # the other ranks wait until rank 0 has saved
    if interrupted:
        if dist_info.is_main:
            last = run_dir / LAST_CHECKPOINT
            logger.warning("Stopped early; the run is saved in %s. Continue it with --resume %s", last, last)
        return RunResult(run_dir, run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT, run.history, {}, interrupted=True)
    return RunResult(run_dir, run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT, run.history, _test_best(run))


def _steps_per_epoch(config: TrainConfig, data: RunData, dist_info: DistInfo) -> int:
    return math.ceil(len(epoch_sampler(data.train, 0, config.seed, dist_info)) / config.batch_size)


def _build_run(
    config: TrainConfig, data: RunData, run_dir: Path, dist_info: DistInfo, device: torch.device, resume_state: dict[str, Any] | None
) -> _Run:
    """The model, optimizer and schedule of a run, restored from ``resume_state`` when given."""
    seed_everything(config.seed)
    model = AlexNetGAP(num_classes=len(data.class_names), pretrained=False if resume_state else config.pretrained).to(device)
    channels_last = config.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    configure_cpu_threads(dist_info, device)
    num_workers = default_num_workers(dist_info, device) if config.num_workers is None else config.num_workers
    steps_per_epoch = _steps_per_epoch(config, data, dist_info)
    steps = StepSettings(
        criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        scheduler=build_scheduler(optimizer, steps_per_epoch * config.n_epochs, round(config.warmup_epochs * steps_per_epoch)),
        device=device, scaler=torch.amp.GradScaler("cuda") if config.amp and amp_dtype(device) == torch.float16 else None,
        dist_info=dist_info, amp=config.amp, channels_last=channels_last, progress=config.progress, n_epochs=config.n_epochs,
    )
    run = _Run(config, data, run_dir, model, model, optimizer, steps, num_workers)
    if resume_state is not None:
        _restore(run, resume_state)
    if dist_info.distributed:
        run.train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        run.train_model = torch.compile(run.train_model)
    return run


def _restore(run: _Run, checkpoint: dict[str, Any]) -> None:
    """Load a resumed run's weights, optimizer, schedule, history and, mid-epoch, its progress."""
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.steps.scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if run.steps.scaler is not None and checkpoint.get("scaler"):
        run.steps.scaler.load_state_dict(checkpoint["scaler"])
    run.start_epoch = int(checkpoint["epoch"])
    run.best_score = float(checkpoint.get("best_score", -math.inf))
    run.history = resumed_history(run.run_dir, run.start_epoch)
    dist_info = run.steps.dist_info
    if checkpoint.get("epoch_progress") and dist_info.world_size == checkpoint.get("world_size", 1):
        run.partial = EpochProgress(**checkpoint["epoch_progress"])
        # The saved sums are over all ranks: rank 0 carries them, the others start from zero.
        if not dist_info.is_main:
            run.partial.sums = [0.0] * len(run.partial.sums)
        run.rng_state = checkpoint["rng_states"][dist_info.rank]


def _train_epochs(run: _Run, stop: StopRequest) -> bool:
    """Train the remaining epochs; returns whether ``stop`` ended the run early (then saved)."""
    config = run.config
    for epoch in range(run.start_epoch, config.n_epochs):
        resuming = epoch == run.start_epoch
        state = run.partial if resuming else EpochProgress()
        if resuming and run.rng_state is not None:
            torch.set_rng_state(run.rng_state)
        else:
            torch.manual_seed(config.seed * 100_003 + epoch)  # each epoch's augmentation depends on (seed, epoch) alone
        order = list(epoch_sampler(run.data.train, epoch, config.seed, run.steps.dist_info))[state.step * config.batch_size:]
        loader = make_loader(run.data.train, order, config.batch_size, run.num_workers, run.steps.device, config.seed + epoch)
        if not train_one_epoch(run.train_model, loader, run.optimizer, run.steps, epoch, state, should_stop=stop):
            _save_mid_epoch(run, epoch, state)
            return True
        _end_epoch(run, epoch, state)
        if stop.after_epoch(more_epochs=epoch + 1 < config.n_epochs):
            return True
    return False


def _save(
    run: _Run, name: str, epoch: int, metrics: dict[str, Any], epoch_progress: dict[str, Any] | None = None,
    rng_states: list[Tensor] | None = None,
) -> Path:
    c, scaler = run.config, run.steps.scaler
    return save_checkpoint(
        run.run_dir / name, run.model, epoch=epoch, metrics=metrics, best_score=run.best_score,
        optimizer=run.optimizer.state_dict(), lr_scheduler=run.steps.scheduler.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else None, class_names=run.data.class_names,
        car_type=c.car_type, car_brand=c.car_brand, car_production_year=c.car_production_year, image_size=c.image_size,
        args=plain_config(c), world_size=run.steps.dist_info.world_size, epoch_progress=epoch_progress, rng_states=rng_states,
    )


def _save_mid_epoch(run: _Run, epoch: int, state: EpochProgress) -> None:
    """Save an epoch stopped part-way (every rank stopped at the same step) so it continues exactly."""
    dist_info, device = run.steps.dist_info, run.steps.device
    sums = all_reduce_sum(torch.tensor(state.sums, dtype=accumulator_dtype(device), device=device), dist_info)
    rng_states = gather_rng_states(dist_info, device)
    if dist_info.is_main:
        progress = dataclasses.replace(state, sums=sums.tolist())
        _save(run, LAST_CHECKPOINT, epoch, run.history[-1] if run.history else {},
              epoch_progress=dataclasses.asdict(progress), rng_states=rng_states)


def _evaluate(run: _Run, model: nn.Module, dataset: Dataset, desc: str, criterion: nn.Module | None = None) -> dict[str, float]:
    """``evaluate`` on this rank's share of ``dataset``, with the run's settings."""
    c, s = run.config, run.steps
    loader = make_loader(dataset, eval_indices(len(dataset), s.dist_info), c.batch_size, run.num_workers, s.device, c.seed)
    return evaluate(model, loader, s.device, c.image_size, s.dist_info, criterion=criterion, amp=c.amp,
                    channels_last=s.channels_last, progress=c.progress, desc=desc)


def _end_epoch(run: _Run, epoch: int, state: EpochProgress) -> None:
    """Validate a finished epoch, judge it by ``select_by``, and (rank 0) save and log it."""
    s = run.steps
    record: dict[str, Any] = {"epoch": epoch + 1, **epoch_train_metrics(state, run.optimizer, s.dist_info, s.device)}
    if run.data.val is not None:
        val = _evaluate(run, run.train_model, run.data.val, "val", criterion=s.criterion)
        record.update({f"val_{k}": v for k, v in val.items()})
    if run.config.eval_test_every_epoch:
        record.update({f"test_{k}": v for k, v in _evaluate(run, run.train_model, run.data.test, "test").items()})
    score = epoch_score(record, run.config.select_by)
    record["best"] = score > run.best_score
    run.best_score = max(run.best_score, score)
    run.history.append(record)
    if s.dist_info.is_main:
        last = _save(run, LAST_CHECKPOINT, epoch + 1, record)
        if record["best"]:
            keep_as_best(last)
        write_metrics_log(run.run_dir / METRICS_LOG, run.history)
        plot_training_curves(run.history, save_path=run.run_dir / CURVES_FIGURE)
        logger.info(summary_line(record, run.config.n_epochs))


def _test_best(run: _Run) -> dict[str, float]:
    """Score the best checkpoint on the test split; rank 0 writes ``test_metrics.json``."""
    best_model, best_checkpoint = load_checkpoint(run.run_dir / BEST_CHECKPOINT, map_location=run.steps.device)
    metrics = _evaluate(run, best_model, run.data.test, "test")
    metrics["epoch"] = best_checkpoint["epoch"]
    if run.steps.dist_info.is_main:
        atomic_write_text(run.run_dir / TEST_METRICS, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        logger.info("Test split (best epoch %d): %s", best_checkpoint["epoch"], format_metrics(metrics))
    return metrics


# --------------------------------------------------------------------------------------------
# Reports and scoring a checkpoint


def format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """``loss 0.6931  top-1 0.812  top-5 0.990  ...`` for the metrics present."""
    return "  ".join(
        f"{label} {metrics[prefix + key]:{'.4f' if key == 'loss' else '.3f'}}"
        for key, label in METRIC_LABELS.items() if prefix + key in metrics
    )


def summary_line(record: dict[str, Any], n_epochs: int) -> str:
    """One line per epoch: training loss/accuracy/speed, then the validation metrics."""
    line = (
        f"epoch {record['epoch']}/{n_epochs}  loss {record['train_loss']:.4f}  acc {record['train_top1']:.3f}  "
        f"{record['train_images_per_s']:.0f} img/s  lr {record['lr']:.2e}"
    )
    if "val_top1" in record:
        line += "  | val " + format_metrics(record, "val_")
    return line + ("  *best*" if record.get("best") else "")


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike, root: str | os.PathLike, split: str = "test", batch_size: int = 32,
    device: str = "auto", num_workers: int | None = None, progress: bool = True, download_datasets: bool = False,
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
    dataset = StanfordCarsCAM.from_checkpoint(checkpoint, root, split, return_box=True, download_datasets=download_datasets)
    configure_cpu_threads(DistInfo(), dev)
    workers = default_num_workers(DistInfo(), dev) if num_workers is None else num_workers
    loader = make_loader(dataset, range(len(dataset)), batch_size, workers, dev, seed=0)
    metrics: dict[str, Any] = evaluate(model, loader, dev, checkpoint["image_size"], progress=progress, desc=f"evaluate {split}")
    metrics.update(split=split, checkpoint=str(checkpoint_path))
    atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
