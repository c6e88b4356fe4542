"""The run folder: its file names, resume state, metrics log, and stopping on Ctrl-C."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checkpoint import require_entries
from .config import TrainConfig
from .files import atomic_write_text
from .model import load_checkpoint

logger = logging.getLogger(__name__)


LAST_CHECKPOINT = "last.pt"


BEST_CHECKPOINT = "best.pt"


METRICS_LOG = "metrics.jsonl"


ARGS_FILE = "args.json"


CURVES_FIGURE = "training_curves.png"


TEST_METRICS = "test_metrics.json"


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
