"""Self-describing checkpoint files: saved atomically, read safely, each bad file explained in one sentence.
The architecture's name and ``model_args`` sit beside the weights (as nanoGPT's), so ``model.load_checkpoint``
rebuilds the network from the file alone; this module never imports the model."""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic_files import atomic_file, folder_error
from .safe_load import TorchFileError, safe_torch_load

CHECKPOINT_FORMAT_VERSION = 1
PAPER_THRESHOLD = 0.2  # the CAM paper's threshold (Zhou et al. 2016), for checkpoints without a chosen one


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or was not written by this project."""


def _resolve_map_location(map_location: str | torch.device | None) -> torch.device:
    """``map_location`` as a device that exists here, so a device problem never reads as a bad file."""
    if not isinstance(map_location, str | torch.device | None):
        raise TypeError(
            "map_location must be a device name such as 'cpu' or 'cuda:0', or a torch.device; "
            f"got {type(map_location).__name__}"
        )
    try:
        device = torch.device("cpu" if map_location is None else map_location)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"map_location {map_location!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    name = str(map_location)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device.type not in available:
        raise ValueError(f"map_location {name!r} is not supported here; use 'cpu', 'cuda' or 'mps'")
    if not available[device.type]:
        raise ValueError(
            f"map_location {name!r} asks for {device.type.upper()}, which is not available here; use 'cpu'"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"map_location {name!r} names a GPU this machine does not have "
            f"({torch.cuda.device_count()} visible); use 'cuda:0' or 'cpu'"
        )
    return device


THRESHOLD_SOURCES = {
    "val": "chosen on the validation split",
    "paper": "the CAM paper's: no validation box to choose one by",
    "given": "given",
}


def cam_threshold_of(checkpoint: Mapping[str, Any]) -> tuple[float, str]:
    """The CAM threshold a checkpoint's boxes are drawn and scored at, and where it came from (``"val"``, ``"paper"``);
    the CAM paper's 0.2 for a checkpoint written before thresholds were chosen."""
    if checkpoint.get("cam_threshold") is None:
        return PAPER_THRESHOLD, "paper"
    return float(checkpoint["cam_threshold"]), str(checkpoint.get("cam_threshold_source", "val"))


def require_entries(checkpoint: Mapping[str, Any], keys: Sequence[str], path: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` naming the entries of ``keys`` that ``checkpoint`` lacks."""
    if missing := [key for key in keys if checkpoint.get(key) is None]:
        raise CheckpointError(f"{str(path)!r} lacks the entries {missing}; was it written by main.py's training?")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel, DataParallel and/or ``torch.compile`` wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) or hasattr(model, "_orig_mod"):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


def _plain(value: Any, key: str) -> Any:
    """``value`` as types ``torch.load(weights_only=True)`` accepts; paths become strings."""
    if value is None or isinstance(value, bool | int | float | str | Tensor | torch.dtype | torch.device):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, f"{key}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"checkpoint entry {key!r} is a {type(value).__name__}, which a safe (weights_only) load "
        "cannot read; store plain types instead (for argparse arguments pass vars(args))"
    )


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **state: Any) -> Path:
    """Write ``model``'s architecture, arguments and weights, and ``state``, atomically to ``path``; return it.

    Args:
        path: Destination file; its folder is created if missing.
        model: The network; DDP or ``torch.compile`` wrappers are taken off (no ``module.`` prefix).
        **state: Entries of plain types (dict, list, str, numbers, tensors, None; others raise ``TypeError``):
            class names, filters, image size, epoch, metrics, optimizer state, ...
    """
    bare = unwrap_model(model)
    payload = {key: _plain(value, key) for key, value in state.items()}
    payload.update(
        format_version=CHECKPOINT_FORMAT_VERSION,
        arch=bare.arch,
        model_args=dict(bare.model_args),
        model=bare.state_dict(),
    )
    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def add_entries(path: str | os.PathLike, entries: Mapping[str, Any]) -> None:
    """Add (or replace) ``entries`` in the checkpoint file ``path``, atomically; the rest stays as it was."""
    checkpoint, _ = read_checkpoint(path)
    checkpoint.update({key: _plain(value, key) for key, value in entries.items()})
    with atomic_file(path, "wb") as handle:
        torch.save(checkpoint, handle)


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[dict[str, Any], torch.device]:
    """The dict a checkpoint file holds, read safely (``weights_only=True``: nothing in it runs).

    Returns:
        ``(checkpoint, device)``: the dict, its tensors on ``device`` (CPU for ``None``).

    Raises:
        TypeError, ValueError: If ``path`` is not a path, or ``map_location`` not a device that exists here.
        FileNotFoundError, IsADirectoryError: If ``path`` does not exist, or is a folder.
        CheckpointError: If the file is not a torch file, is damaged, unsafe, not a checkpoint, or too new.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a checkpoint file (a str or os.PathLike), got {reprlib.repr(path)}")
    path, location = Path(path).expanduser(), _resolve_map_location(map_location)  # a missing GPU is no damaged file
    name = repr(str(path))
    if path.is_dir():
        raise folder_error(f"{name} is a folder; pass a checkpoint file in it, e.g. {str(path / 'best.pt')!r}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {name} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{name} is not a regular file; pass the best.pt or last.pt of a run")
    try:
        checkpoint = safe_torch_load(path, location)
    except TorchFileError as err:
        raise CheckpointError(
            {
                "not_torch": f"{name} is not a torch checkpoint ({err}); pass the best.pt or last.pt of a run",
                "unsafe": f"refused to load {name}: {err}. Nothing in it was run. Only checkpoints written by "
                "save_checkpoint load here; if you trust the file, re-save its tensors as plain types.",
                "legacy": f"refused to load {name}: {err}",
            }.get(err.kind, f"{name} is not a readable checkpoint ({err})")
        ) from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{name} is a torch file but not a CAM_Stanford_Cars checkpoint")
    if not isinstance(version := checkpoint["format_version"], int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has checkpoint format {version!r}, newer than this version reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade CAM_Stanford_Cars"
        )
    require_entries(checkpoint, ("arch", "model_args", "model"), path)
    return checkpoint, location
