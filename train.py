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
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm import tqdm

from .checkpoint import require_entries, save_checkpoint, unwrap_model
from .config import TrainConfig
from .dataset import StanfordCarsCAM
from .distributed import (DistInfo, all_reduce_sum, epoch_sampler, eval_indices, gather_rng_states, init_distributed,
                          shutdown_distributed)
from .files import atomic_file, atomic_write_text, check_writable, unwritable_reason
from .localization import LocalizationMeter
from .model import AlexNetGAP, load_checkpoint
from .runs import (ARGS_FILE, BEST_CHECKPOINT, CURVES_FIGURE, LAST_CHECKPOINT, METRICS_LOG, TEST_METRICS, _read_resume_state,
                   _StopRequest, check_new_run, plain_config, read_metrics_log, remove_run_files, write_metrics_log)
from .runtime import (accumulator_dtype, amp_dtype, autocast_context, configure_cpu_threads, default_num_workers,
                      seed_everything, select_device)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Processes and devices


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


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


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
