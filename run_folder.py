"""The run folder: its files, the resume state, the metrics log and its lines, the best-epoch rule, Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from .atomic_files import atomic_file, atomic_write_text, check_writable
from .checkpoint import require_entries
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .localization import METRIC_LABELS
from .model import load_checkpoint

logger = logging.getLogger(__name__)

LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_LOG = "last.pt", "best.pt", "metrics.jsonl"
ARGS_FILE, CURVES_FIGURE, TEST_METRICS = "args.json", "training_curves.png", "test_metrics.json"
RUN_FILES = (
    LAST_CHECKPOINT,
    BEST_CHECKPOINT,
    ARGS_FILE,
    METRICS_LOG,
    CURVES_FIGURE,
    TEST_METRICS,
)  # and *_metrics.json
LOCK_FILE = ".lock"  # held by the run writing the folder
_TEMP_FILE = re.compile(r"^\.(.+)\.\w{8}\.tmp$")  # atomic_file's hidden temp files: .NAME.XXXXXXXX.tmp

# The main metric counts images, so two values differ by at least 1/n, far more than this tie-breaker adds.
TIE_BREAK = 1e-6
# What a resumed run must share with the run it continues: the data and its order, the optimisation (the saved
# optimizer and schedule states were built from it) and the rule that scored the saved best epoch.
RESUME_MUST_MATCH = (
    "arch",
    "batch_size",
    "image_size",
    "val_fraction",
    "car_type",
    "car_brand",
    "car_production_year",
    "seed",
    "optimizer",
    "lr",
    "backbone_lr_scale",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "select_by",
)


def epoch_score(record: Mapping[str, Any], select_by: str = "val_top1") -> float:
    """How good an epoch (a ``metrics.jsonl`` record) is; the best scores ``best.pt``. ``val_top1``: ties go to the
    lower val loss; ``val_maxboxacc``: to the higher top-1. Without validation, the latest epoch wins."""
    if "val_top1" not in record:
        return float(record["epoch"])
    if select_by == "val_maxboxacc":
        return record["val_maxboxacc"] + TIE_BREAK * record["val_top1"]
    return record["val_top1"] - TIE_BREAK * record["val_loss"]


def check_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start a run over another one in ``run_dir``, unless ``overwrite``."""
    last = run_dir / LAST_CHECKPOINT
    if last.exists() and not overwrite:
        raise ValueError(
            f"--checkpoints_dir {str(run_dir)!r} already holds a run ({last.name}); continue it with "
            f"--resume {str(last)!r}, start over with --overwrite true, or choose another folder"
        )


def remove_run_files(run_dir: Path, keep: Sequence[str] = ()) -> None:
    """Delete what an earlier run left in ``run_dir`` (checkpoints, logs, figures, scores) but ``keep``, nothing
    else."""
    stems = (Path(LAST_CHECKPOINT).stem, Path(BEST_CHECKPOINT).stem)
    scores = [p.name for p in run_dir.glob("*_metrics.json") if p.name.split("_", 1)[0] in stems]
    for name in {*RUN_FILES, *scores} - set(keep):
        (run_dir / name).unlink(missing_ok=True)


class RunFolderBusy(ValueError):
    """Another live process holds the run folder."""


@contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[None]:
    """Be the one writer of ``run_dir`` while inside: an OS lock (``flock``) on a file in it, released when the
    process ends however it ends, so a killed run never blocks the next. Removes the temp files of killed writes.

    Raises:
        RunFolderBusy: If another process holds it (naming that process).
        ValueError: If the folder cannot be created or written to.
    """
    existed = run_dir.is_dir()
    check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock, fd = run_dir / LOCK_FILE, None
    try:
        fd = _lock(lock, run_dir)
        stale = [p for p in run_dir.glob(".*.tmp") if (m := _TEMP_FILE.match(p.name)) and _is_run_file(m.group(1))]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            logger.info("Removed %d unfinished file(s) of an interrupted write in %s", len(stale), run_dir)
        yield
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)
            os.close(fd)
        if not existed:
            with suppress(OSError):  # a failed start leaves no empty folder behind
                run_dir.rmdir()


def _lock(lock: Path, run_dir: Path) -> int:
    """Open and ``flock`` ``lock``, write this process's id in it; return the descriptor."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one writer per folder is then the user's care
        return os.open(lock, os.O_RDWR | os.O_CREAT)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(
                f"--checkpoints_dir {str(run_dir)!r} is in use by another run (process {holder}); wait "
                "for it to end or stop it, or choose another folder"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # not a file its last holder removed meanwhile
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.endswith("_metrics.json")


def keep_as_best(last: Path) -> None:
    """Copy ``last.pt`` to ``best.pt`` beside it, atomically (the same bytes, not re-serialised)."""
    with atomic_file(last.with_name(BEST_CHECKPOINT)) as handle, open(last, "rb") as source:
        shutil.copyfileobj(source, handle, length=1 << 22)


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl``; an absent file gives an empty list."""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [], start=1):
        try:
            if line.strip():
                records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{str(path)!r} is damaged ({err.msg} on line {number}); delete it to resume without "
                "the earlier epochs' records, or restore it"
            ) from None
    return records


def write_metrics_log(path: Path, history: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in history))


def format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """``loss 0.6931  top-1 0.812  top-5 0.990  ...`` for the metrics present."""
    return "  ".join(
        f"{label} {metrics[prefix + key]:{'.4f' if key == 'loss' else '.3f'}}"
        for key, label in METRIC_LABELS.items()
        if prefix + key in metrics
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


def plain_config(config: TrainConfig) -> dict[str, Any]:
    """The run's arguments as plain JSON types (what checkpoints and ``args.json`` store)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class StopRequest:
    """Whether to stop early: at the first Ctrl-C, or once ``after_steps`` steps have run; called with the epoch's
    step after every optimizer step. Ranks must stop at the same step or DDP hangs; they agree every 10 steps."""

    def __init__(self, dist_info: DistInfo, device: torch.device, after_steps: int | None = None) -> None:
        self.dist_info, self.device, self.after_steps = dist_info, device, after_steps
        self.requested, self.steps = False, 0  # steps: optimizer steps since this object was made

    def __call__(self, step: int) -> bool:
        self.steps += 1
        if self.dist_info.distributed and step % 10:
            return False
        return self._agreed(self.requested or self._budget_spent())

    def after_epoch(self, more_epochs: bool) -> bool:
        """Whether to stop after a finished epoch (a spent budget counts only if epochs remain)."""
        return self._agreed(self.requested or (self._budget_spent() and more_epochs))

    def _budget_spent(self) -> bool:
        return self.after_steps is not None and self.steps >= self.after_steps

    def _agreed(self, local: bool) -> bool:
        if not self.dist_info.distributed:
            return local
        return bool(all_reduce_sum(torch.tensor([float(local)], device=self.device), self.dist_info).item() > 0)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Turn the first Ctrl-C (SIGINT) into ``requested``; a second one aborts."""

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


def read_resume_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint to continue, checked against the run it is asked to continue."""
    _, checkpoint = load_checkpoint(path)
    mid_epoch, world_size = checkpoint.get("epoch_progress"), int(os.environ.get("WORLD_SIZE", "1"))
    require_entries(
        checkpoint, ("optimizer", "lr_scheduler", "epoch", "args", *(["rng_states"] if mid_epoch else [])), path
    )
    run_dir = Path(config.checkpoints_dir).expanduser()
    if path.parent.resolve() != run_dir.resolve():
        raise ValueError(
            f"--resume {str(path)!r} belongs to the run in {str(path.parent)!r} but --checkpoints_dir is "
            f"{str(run_dir)!r}; pass --checkpoints_dir {str(path.parent)!r} to continue that run"
        )
    if mid_epoch and checkpoint.get("world_size", 1) != world_size:
        raise ValueError(
            f"--resume {str(path)!r} stopped mid-epoch with {checkpoint.get('world_size', 1)} processes; "
            f"continue it with the same number of processes (this run has {world_size})"
        )
    saved = {**plain_config(TrainConfig()), **checkpoint["args"]}  # a setting added later ran with its default
    finished = int(checkpoint["epoch"]) >= saved["n_epochs"] and not mid_epoch
    if config.n_epochs != saved["n_epochs"] and not (finished and config.n_epochs > saved["n_epochs"]):
        raise ValueError(
            f"--resume {str(path)!r} was trained with n_epochs={saved['n_epochs']} but this run has "
            f"n_epochs={config.n_epochs}; pass the same value to continue it (only a finished run can be "
            "extended, to more epochs)"
        )
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != json.loads(json.dumps(getattr(config, key))):
            raise ValueError(
                f"--resume {str(path)!r} was trained with {key}={saved.get(key)!r} but this run has "
                f"{key}={getattr(config, key)!r}; pass the same value to continue it"
            )
    if int(checkpoint["epoch"]) >= config.n_epochs and not mid_epoch and _tested(run_dir, checkpoint):
        raise ValueError(
            f"--resume {str(path)!r}: that run already finished all {config.n_epochs} epochs and its tests; its best "
            f"checkpoint is {str(path.with_name(BEST_CHECKPOINT))!r} (score it with --evaluate). "
            "Start a new run in another folder to train longer"
        )
    return checkpoint


def best_epoch(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The epoch ``best.pt`` holds: the last one the log marks best."""
    return next((int(r["epoch"]) for r in reversed(history) if r.get("best")), None)


def _saved_epoch(path: Path) -> int | None:
    try:
        return int(load_checkpoint(path)[1]["epoch"])
    except (OSError, ValueError, KeyError):
        return None


def _tested(run_dir: Path, checkpoint: Mapping[str, Any]) -> bool:
    """Whether the finished run's last steps ran: its best checkpoint scored on the test split, its curves drawn."""
    try:
        tested = json.loads((run_dir / TEST_METRICS).read_text(encoding="utf-8")).get("epoch")
    except (OSError, ValueError, AttributeError):
        return False
    history = checkpoint.get("history") or read_metrics_log(run_dir / METRICS_LOG)
    return tested == best_epoch(history) and (run_dir / CURVES_FIGURE).is_file()


def repair_run(run_dir: Path, checkpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Bring the log and ``best.pt`` in line with ``last.pt`` (``checkpoint``) after a kill at any moment, and return
    the run's history: ``last.pt`` carries it, so an epoch whose log line a kill lost is written again."""
    history = checkpoint.get("history")
    if history is None:  # a checkpoint from before the history was kept in it: the log is the record
        history = [r for r in read_metrics_log(run_dir / METRICS_LOG) if r["epoch"] <= int(checkpoint["epoch"])]
    write_metrics_log(run_dir / METRICS_LOG, history)
    best = best_epoch(history)
    # A kill while best.pt was being copied at the best epoch: last.pt still holds that epoch's weights.
    if (
        best == int(checkpoint["epoch"])
        and not checkpoint.get("epoch_progress")
        and _saved_epoch(run_dir / BEST_CHECKPOINT) != best
    ):
        logger.info("Restoring %s (epoch %d) from %s", BEST_CHECKPOINT, best, LAST_CHECKPOINT)
        keep_as_best(run_dir / LAST_CHECKPOINT)
    return list(history)
