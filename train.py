"""The training loop: ``fit(config)`` trains on the train split less a held-out validation
split, keeps the last and best checkpoints, and scores the best on the test split (DDP under torchrun).
Each epoch's order and augmentation come from ``(seed, epoch)`` and a mid-epoch stop saves every
rank's RNG state, so ``--resume`` continues as if never stopped (bit-identical on CPU, no workers)."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .atomic_files import atomic_write_text
from .checkpoint import cam_threshold_of, save_checkpoint
from .config import TrainConfig
from .data.names import FILTER_NAMES
from .dataset import StanfordCarsCAM, stratified_split
from .distributed import (
    DistInfo,
    all_reduce_sum,
    epoch_sampler,
    eval_indices,
    gather_rng_states,
)
from .evaluation import THRESHOLD_KEYS, evaluate, threshold_from_validation
from .figures import plot_training_curves
from .model import GAPNet, create_model, load_checkpoint
from .run_folder import (
    ARGS_FILE,
    BEST_CHECKPOINT,
    CURVES_FIGURE,
    LAST_CHECKPOINT,
    METRICS_LOG,
    TEST_METRICS,
    StopRequest,
    check_new_run,
    epoch_score,
    format_metrics,
    hold_run_folder,
    keep_as_best,
    plain_config,
    read_resume_state,
    remove_run_files,
    repair_run,
    summary_line,
    write_metrics_log,
)
from .runtime import (
    accumulator_dtype,
    amp_dtype,
    autocast_context,
    configure_cpu_threads,
    default_num_workers,
    make_loader,
    seed_everything,
    start_process,
)

__all__ = [
    "EpochProgress",
    "NonFiniteLossError",
    "RunData",
    "RunResult",
    "StepSettings",
    "build_datasets",
    "build_optimizer",
    "build_scheduler",
    "epoch_train_metrics",
    "fit",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)
_NO_SCALER = torch.amp.GradScaler("cuda", enabled=False)  # passes backward() and step() through unscaled


@dataclass
class RunData:
    """The datasets of a run: train (augmented), validation (held out from train) and test."""

    train: Dataset
    val: Dataset | None
    test: StanfordCarsCAM
    class_names: list[str]


def build_datasets(config: TrainConfig) -> RunData:
    """The filtered train/validation/test datasets; raises before any file is written."""
    common = dict(
        image_size=config.image_size,
        return_box=True,
        cache_dir=config.cache_dir,
        car_type=config.car_type,
        car_brand=config.car_brand,
        car_production_year=config.car_production_year,
    )
    train_full = StanfordCarsCAM(
        config.root, split="train", download_datasets=config.download_datasets, augment=True, **common
    )
    train_plain = copy.copy(train_full)  # validation sees train images without augmentation
    train_plain.augment = False
    test = StanfordCarsCAM(config.root, split="test", augment=False, **common)
    empty = sorted(set(range(len(train_full.classes))) - set(train_full.targets))
    if empty:
        raise ValueError(
            f"{len(empty)} of the {len(train_full.classes)} selected classes have no train images under "
            f"{str(config.root)!r} (e.g. {[train_full.classes[i] for i in empty[:3]]}); narrow --car_type/"
            "--car_brand/--car_production_year to classes that have images, or complete the data"
        )
    train_idx, val_idx = stratified_split(train_full.targets, config.val_fraction, config.seed)
    if val_idx and config.select_by == "val_maxboxacc" and np.isnan(train_full.boxes[val_idx, 0]).all():
        raise ValueError(
            "--select_by val_maxboxacc needs boxes, and no validation image has one; use --select_by val_top1"
        )
    return RunData(
        Subset(train_full, train_idx), Subset(train_plain, val_idx) if val_idx else None, test, list(train_full.classes)
    )


def build_optimizer(model: GAPNet, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW; pretrained layers learn at ``backbone_lr_scale`` times the rate; biases get no decay."""
    new = {id(p) for p in model.new_layer_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in new, p.ndim > 1), []).append(p)
    param_groups = [
        {
            "params": params,
            "lr": config.lr * (1.0 if is_new or not config.pretrained else config.backbone_lr_scale),
            "weight_decay": config.weight_decay if decays else 0.0,
        }
        for (is_new, decays), params in sorted(groups.items())
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr)
    return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 1% of the rate, then cosine decay to zero, stepped every batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    dist_info: DistInfo = field(default_factory=DistInfo)
    amp: bool = True
    channels_last: bool = False
    progress: bool = True
    n_epochs: int = 1
    log_every: int = 10  # steps between reads of the running sums (each read waits for the device)


def _checked_sums(sums: Tensor, s: StepSettings, epoch: int, step: int) -> list[float]:
    # Summed over ranks, so every rank sees a non-finite loss at the same step and stops.
    loss_sum, correct, seen = all_reduce_sum(sums, s.dist_info).tolist()
    if not math.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"the training loss became {loss_sum / max(seen, 1):.4g} in epoch {epoch + 1} (step {step}); "
            "the last good checkpoint is kept. Lower --lr or raise --warmup_epochs, and check the data"
        )
    return [loss_sum, correct, seen]


def _train_step(
    model: nn.Module, batch: Sequence[Tensor], optimizer: torch.optim.Optimizer, s: StepSettings
) -> tuple[Tensor, Tensor, Tensor]:
    """One optimizer and schedule step; returns the loss (), logits (B, C) and labels (B,)."""
    images, labels = batch[0].to(s.device, non_blocking=True), batch[1].to(s.device, non_blocking=True)
    if s.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(s.device, s.amp):
        logits = model(images)
    loss = s.criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler = s.scaler or _NO_SCALER
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    s.scheduler.step()
    return loss.detach(), logits.detach(), labels


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader | Sequence[Any],
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    epoch: int,
    state: EpochProgress,
    should_stop: Callable[[int], bool] = lambda step: False,
) -> bool:
    """Train on the batches of ``loader`` (the rest of an epoch when ``state.step > 0``).

    Args:
        loader: Yields ``(images (B,3,S,S), labels (B,), ...)``; already starts at ``state.step``.
        state: Updated in place: steps done, running sums (read every ``log_every`` steps) and time.
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
    with tqdm(
        total=total,
        initial=state.step,
        desc=f"epoch {epoch + 1}/{s.n_epochs}",
        unit="batch",
        leave=False,
        disable=not (s.progress and s.dist_info.is_main),
        dynamic_ncols=True,
        mininterval=1.0,
    ) as bar:
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
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}",
                    acc=f"{correct / seen:.3f}",
                    img_s=f"{seen / (time.perf_counter() - start):.0f}",
                )
            if should_stop(state.step) and state.step < total:
                break
        _checked_sums(sums, s, epoch, state.step)
    state.sums = sums.tolist()
    state.seconds = time.perf_counter() - start
    return state.step >= total


def epoch_train_metrics(
    state: EpochProgress, optimizer: torch.optim.Optimizer, dist_info: DistInfo, device: torch.device
) -> dict[str, float]:
    """Loss, accuracy and speed of a finished epoch, summed over all ranks."""
    loss_sum, correct, seen = all_reduce_sum(
        torch.tensor(state.sums, device=device, dtype=accumulator_dtype(device)), dist_info
    ).tolist()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": correct / max(seen, 1),
        "train_images": int(seen),
        "train_images_per_s": seen / state.seconds if state.seconds > 0 else float("nan"),
        "lr": optimizer.param_groups[-1]["lr"],
    }


@dataclass
class RunResult:
    """What ``fit`` leaves behind."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, Any]]
    test_metrics: dict[str, float]
    interrupted: bool = False


class _Run:
    """One training run: its data, model, optimizer and schedule (restored when resuming), epoch by epoch."""

    def __init__(
        self,
        config: TrainConfig,
        data: RunData,
        dist_info: DistInfo,
        device: torch.device,
        checkpoint: dict[str, Any] | None,
        steps_per_epoch: int,
    ) -> None:
        self.config, self.data, self.run_dir = config, data, Path(config.checkpoints_dir).expanduser()
        seed_everything(config.seed)
        model = create_model(
            config.arch, len(data.class_names), pretrained=False if checkpoint else config.pretrained
        ).to(device)
        channels_last = config.channels_last and device.type == "cuda"
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model  # the bare model, saved
        self.optimizer = build_optimizer(self.model, config)
        configure_cpu_threads(dist_info, device)
        self.num_workers = default_num_workers(dist_info, device) if config.num_workers is None else config.num_workers
        self.steps = s = StepSettings(
            nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
            build_scheduler(
                self.optimizer, steps_per_epoch * config.n_epochs, round(config.warmup_epochs * steps_per_epoch)
            ),
            device,
            torch.amp.GradScaler("cuda") if config.amp and amp_dtype(device) == torch.float16 else None,
            dist_info,
            config.amp,
            channels_last,
            config.progress,
            config.n_epochs,
        )
        resumed = checkpoint or {}
        self.start_epoch, self.best_score = int(resumed.get("epoch", 0)), float(resumed.get("best_score", -math.inf))
        self.history = (
            repair_run(self.run_dir, checkpoint)
            if checkpoint and dist_info.is_main
            else list(resumed.get("history", []))
        )
        self.threshold = {key: resumed.get(key) for key in THRESHOLD_KEYS}
        self.old_run = config.overwrite and not checkpoint  # an earlier run's files, removed at this run's first save
        self.saved = False
        self.partial, self.rng_state = EpochProgress(), None  # the first epoch's progress and RNG state
        if checkpoint:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            s.scheduler.load_state_dict(checkpoint["lr_scheduler"])
            # The rate this run's schedule gives at the step reached: the same for a plain resume, and for a finished
            # run extended to more epochs, the longer schedule's (its cosine then decays to zero at the new last epoch).
            for group, base, factor in zip(
                self.optimizer.param_groups, s.scheduler.base_lrs, s.scheduler.lr_lambdas, strict=True
            ):
                group["lr"] = base * factor(s.scheduler.last_epoch)
            if s.scaler is not None and checkpoint.get("scaler"):
                s.scaler.load_state_dict(checkpoint["scaler"])
        if resumed.get("epoch_progress") and dist_info.world_size == resumed.get("world_size", 1):
            self.partial = EpochProgress(**resumed["epoch_progress"])
            if not dist_info.is_main:  # the saved sums are over all ranks: rank 0 carries them
                self.partial.sums = [0.0] * len(self.partial.sums)
            self.rng_state = resumed["rng_states"][dist_info.rank]
        self.train_model: nn.Module = self.model  # wrapped for DDP and/or torch.compile
        if dist_info.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            self.train_model = torch.compile(self.train_model)

    def describe(self, steps_per_epoch: int) -> list[str]:
        """What a person reads at the start: the data, the model, the device and where the run is saved."""
        c, s, data = self.config, self.steps, self.data
        filters = (
            ", ".join(f"{name}={getattr(c, name)}" for name in FILTER_NAMES if getattr(c, name) is not None) or "none"
        )
        weights = (
            "from scratch"
            if not c.pretrained
            else f"ImageNet weights, pretrained layers at {c.backbone_lr_scale:g}x the rate"
        )
        return [
            f"Data:   {len(data.class_names)} classes (filters: {filters}) "
            f"under {str(Path(c.root).expanduser().resolve())!r}: "
            f"{len(data.train)} train / {len(data.val) if data.val else 0} validation / {len(data.test)} test images",
            f"Model:  {self.model.title}-GAP, "
            f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M parameters, "
            f"{weights}",
            f"Device: {s.device}"
            + (f" x {s.dist_info.world_size} processes" if s.dist_info.distributed else "")
            + f", {self.num_workers} loader worker(s) per process, batch {c.batch_size}",
            f"Run:    {str(self.run_dir)!r}, epochs {self.start_epoch + 1}..{c.n_epochs} of {steps_per_epoch} steps; "
            f"{LAST_CHECKPOINT} and {BEST_CHECKPOINT} (best by {c.select_by}), {METRICS_LOG}, {CURVES_FIGURE}, "
            f"{TEST_METRICS}; every setting in {ARGS_FILE}",
        ]

    def train_epochs(self, stop: StopRequest) -> bool:
        """Train the remaining epochs; returns whether ``stop`` ended the run early (then saved)."""
        config, s = self.config, self.steps
        for epoch in range(self.start_epoch, config.n_epochs):
            resuming = epoch == self.start_epoch
            state = self.partial if resuming else EpochProgress()
            if resuming and self.rng_state is not None:
                torch.set_rng_state(self.rng_state)
            else:
                torch.manual_seed(
                    config.seed * 100_003 + epoch
                )  # each epoch's augmentation depends on (seed, epoch) alone
            order = list(epoch_sampler(self.data.train, epoch, config.seed, s.dist_info))[
                state.step * config.batch_size :
            ]
            loader = make_loader(
                self.data.train, order, config.batch_size, self.num_workers, s.device, config.seed + epoch
            )
            if not train_one_epoch(self.train_model, loader, self.optimizer, s, epoch, state, should_stop=stop):
                # Every rank stopped at the same step: save the summed progress and each rank's RNG state.
                sums = all_reduce_sum(
                    torch.tensor(state.sums, dtype=accumulator_dtype(s.device), device=s.device), s.dist_info
                )
                rng_states = gather_rng_states(s.dist_info, s.device)
                if s.dist_info.is_main:
                    progress = asdict(replace(state, sums=sums.tolist()))
                    self.save(epoch, self.history[-1] if self.history else {}, False, progress, rng_states)
                return True
            self.end_epoch(epoch, state)
            if stop.after_epoch(more_epochs=epoch + 1 < config.n_epochs):
                return True
        return False

    def save(
        self,
        epoch: int,
        metrics: dict[str, Any],
        best: bool = False,
        epoch_progress: dict[str, Any] | None = None,
        rng_states: list[Tensor] | None = None,
    ) -> None:
        """Save ``last.pt`` with everything a resume or ``load_checkpoint`` needs (the history too, so a kill
        before the log is written loses no record), copy it to ``best.pt`` if ``best``, and write the log."""
        c, scaler = self.config, self.steps.scaler
        last = save_checkpoint(
            self.run_dir / LAST_CHECKPOINT,
            self.model,
            epoch=epoch,
            metrics=metrics,
            best_score=self.best_score,
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.steps.scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            class_names=self.data.class_names,
            car_type=c.car_type,
            car_brand=c.car_brand,
            car_production_year=c.car_production_year,
            image_size=c.image_size,
            args=plain_config(c),
            world_size=self.steps.dist_info.world_size,
            epoch_progress=epoch_progress,
            rng_states=rng_states,
            history=self.history,
            data_root=str(Path(c.root).expanduser().resolve()),
            **self.threshold,
        )
        if not self.saved:  # the first checkpoint of this run: only now may it replace what an earlier run left
            if self.old_run:
                remove_run_files(self.run_dir, keep=(LAST_CHECKPOINT,))
            atomic_write_text(self.run_dir / ARGS_FILE, json.dumps(plain_config(c), indent=2, sort_keys=True) + "\n")
            self.saved = True
        if best:
            keep_as_best(last)
        write_metrics_log(self.run_dir / METRICS_LOG, self.history)

    def evaluate(self, model: nn.Module, dataset: Dataset, desc: str, **kwargs: Any) -> dict[str, Any]:
        """``evaluate`` on this rank's share of ``dataset``, with the run's settings."""
        c, s = self.config, self.steps
        loader = make_loader(
            dataset, eval_indices(len(dataset), s.dist_info), c.batch_size, self.num_workers, s.device, c.seed
        )
        return evaluate(
            model,
            loader,
            s.device,
            dist_info=s.dist_info,
            amp=c.amp,
            channels_last=s.channels_last,
            progress=c.progress,
            desc=desc,
            **kwargs,
        )

    def end_epoch(self, epoch: int, state: EpochProgress) -> None:
        """Validate a finished epoch, judge it by ``select_by``, and (rank 0) save and log it."""
        s = self.steps
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            **epoch_train_metrics(state, self.optimizer, s.dist_info, s.device),
        }
        val = (
            self.evaluate(self.train_model, self.data.val, "val", criterion=s.criterion, curve=True)
            if self.data.val
            else None
        )
        self.threshold = threshold_from_validation(val)  # this epoch's weights, this epoch's threshold
        record.update({f"val_{k}": v for k, v in (val or {}).items() if k != "box_accuracy_curve"})
        if self.config.eval_test_every_epoch:
            record.update({f"test_{k}": v for k, v in self.evaluate(self.train_model, self.data.test, "test").items()})
        score = epoch_score(record, self.config.select_by)
        record["best"] = score > self.best_score
        self.best_score = max(self.best_score, score)
        self.history.append(record)
        if s.dist_info.is_main:
            self.save(epoch + 1, record, record["best"])
            plot_training_curves(self.history, save_path=self.run_dir / CURVES_FIGURE)
            logger.info(summary_line(record, self.config.n_epochs))

    def test_best(self) -> dict[str, float]:
        """Score the best checkpoint on the test split; rank 0 writes ``test_metrics.json``."""
        best_model, best_checkpoint = load_checkpoint(self.run_dir / BEST_CHECKPOINT, map_location=self.steps.device)
        threshold, source = cam_threshold_of(best_checkpoint)
        metrics = self.evaluate(best_model, self.data.test, "test", cam_threshold=threshold)
        metrics.update(epoch=best_checkpoint["epoch"], cam_threshold_source=source)
        if self.steps.dist_info.is_main:
            plot_training_curves(self.history, save_path=self.run_dir / CURVES_FIGURE)
            atomic_write_text(self.run_dir / TEST_METRICS, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            logger.info("Test split (best epoch %d): %s", best_checkpoint["epoch"], format_metrics(metrics))
        return metrics


def fit(config: TrainConfig, stop_after_steps: int | None = None) -> RunResult:
    """Train, validate, checkpoint and test, as described in the module docstring.

    Args:
        stop_after_steps: Stop as Ctrl-C would once this many optimizer steps have run in this call.

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
    with hold_run_folder(run_dir) if dist_info.is_main else nullcontext():
        return _fit(config, stop_after_steps, dist_info, device, run_dir)


def _fit(
    config: TrainConfig, stop_after_steps: int | None, dist_info: DistInfo, device: torch.device, run_dir: Path
) -> RunResult:
    resume_state = read_resume_state(Path(config.resume).expanduser(), config) if config.resume else None
    if resume_state is None:
        check_new_run(run_dir, config.overwrite)
    data = build_datasets(config)
    steps_per_epoch = math.ceil(len(epoch_sampler(data.train, 0, config.seed, dist_info)) / config.batch_size)
    run = _Run(config, data, dist_info, device, resume_state, steps_per_epoch)
    if dist_info.is_main:
        logger.info("\n".join(run.describe(steps_per_epoch)))
    stop = StopRequest(dist_info, device, stop_after_steps)
    with stop.installed():
        interrupted = run.train_epochs(stop)
    if dist_info.distributed:
        dist.barrier()  # the other ranks wait until rank 0 has saved
    last, best = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
    if interrupted and dist_info.is_main:
        logger.warning("Stopped early; the run is saved in %s. Continue it with --resume %s", last, last)
    return RunResult(run_dir, last, best, run.history, {} if interrupted else run.test_best(), interrupted)
