"""Files written whole or not at all, torch files read safely, figures saved atomically: the one
place that turns an ``OSError`` or a damaged file into a sentence about the user's path."""

from __future__ import annotations

import errno
import math
import numbers
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or was not written by this project."""


class _TorchFileError(Exception):
    """Why a safe ``torch.load`` failed; ``kind`` is ``"not_torch"``, ``"unsafe"`` or ``"unreadable"``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


# How torch's weights-only unpickler names an object it will not build (a GLOBAL, function or class); else: damaged.
_UNSAFE_OBJECT = re.compile(r"GLOBAL (\S+)|unrecognized function (.+?)(?: which|$)|new object .* but got (.+)$", re.M)


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s own words (torch wraps the unpickler's in a page of advice), or its class name."""
    text = str(err).rsplit("WeightsUnpickler error:", 1)[-1]
    return next((line.strip().strip("'\"") for line in text.splitlines() if line.strip()), "") or type(err).__name__


def _safe_torch_load(path: Path, location: torch.device) -> Any:
    """``torch.load(path, weights_only=True)`` whose every failure but ``open``'s is a :class:`_TorchFileError`."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise _TorchFileError("not_torch", "it is empty, 0 bytes; was its writing interrupted?")
    # torch.save writes a zip archive (a truncated one still starts with an entry header); files from
    # before PyTorch 1.6 are a protocol-2 pickle. Anything else would only confuse torch.load.
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise _TorchFileError("not_torch", "not a file written by torch.save")
    try:
        with warnings.catch_warnings():  # torch's "please file an issue" on a newer pickle; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load leaks KeyError, IndexError, ... on damaged files
        unsafe = _UNSAFE_OBJECT.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if unsafe:
            name = next(group for group in unsafe.groups() if group).strip()
            raise _TorchFileError("unsafe", f"it holds objects a safe (weights_only) load will not unpickle, such as {name}") from None
        raise _TorchFileError("unreadable", f"truncated or damaged: {_first_line(err)}") from None


def default_file_mode() -> int:
    """The permissions a plain ``open()`` would give a new file (``mkstemp`` gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file among ``path``'s parent folders that keeps it from being written, if any."""
    return next((parent for parent in Path(path).parents if parent.exists() and not parent.is_dir()), None)


def _folder_error(message: str) -> IsADirectoryError:
    """An ``IsADirectoryError`` with errno EISDIR whose ``str()`` is just ``message``."""
    err = IsADirectoryError(message)
    err.errno = errno.EISDIR
    return err


def _write_error(path: Path, err: OSError) -> OSError:
    """``err`` restated about ``path`` (the hidden temp file means nothing to the user), same class and errno."""
    blocker = file_in_the_way(path)
    # mkdir reports a file in the way as "File exists", which reads as if the target existed.
    reason = f"{str(blocker)!r} is a file, not a folder" if blocker else err.strerror or _first_line(err)
    new = (NotADirectoryError if blocker else type(err))(f"could not write {str(path)!r}: {reason}; choose another path")
    new.errno = errno.ENOTDIR if blocker else err.errno  # set after construction, so str() stays the message
    return new


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` (mode ``"wb"``, or ``"w"`` for UTF-8) through a hidden file beside it, flushed to disk and
    moved into place with ``open()``'s permissions only on success: a crash mid-write keeps the old file.
    Raises ``IsADirectoryError`` for a folder, and each ``OSError`` as its own class, naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise _folder_error(f"{str(path)!r} is a folder; give a file name")
    ours, tmp = True, None  # only our own OSErrors are restated; the caller's pass unchanged
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            ours = False
            yield handle
            ours = True
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if ours and isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so readers never see half of it."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written to (the OS's words), or None if it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        return err.strerror or _first_line(err)
    return None


def check_writable(folder: Path, flag: str = "--checkpoints_dir") -> None:
    """Raise ``ValueError`` naming ``flag`` if ``folder`` cannot be created or written to."""
    reason = unwritable_reason(folder)
    if reason is not None:
        raise ValueError(f"{flag} {str(folder)!r} is not writable ({reason}); choose another folder")


def _check_save_path(save_path: str | os.PathLike[str], name: str = "save_path") -> str:
    """Refuse a figure path that cannot be written, before anything is drawn; return its format (e.g. ``"png"``).
    ``name`` is the path as the caller's user knows it (``"save_path"``, ``"--out"``)."""
    from matplotlib.backend_bases import FigureCanvasBase  # here: the model and checkpoints import this module

    if not isinstance(save_path, str | os.PathLike):
        raise TypeError(f"{name} must be a file name such as 'cams.png', got {type(save_path).__name__}")
    path = Path(save_path)
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file name such as {str(path / 'cams.png')!r}")
    if blocker := file_in_the_way(path):
        raise ValueError(f"{name} {str(path)!r} cannot be written: {str(blocker)!r} is a file, not a folder; choose another path")
    fmt, supported = path.suffix[1:].lower(), FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"cannot tell the image format of {name} {str(path)!r} from its suffix; "
                         f"use one of {', '.join('.' + s for s in sorted(supported))}")
    return fmt


def _check_dpi(dpi: Any) -> float:
    """``dpi`` as a positive finite float (numbers.Real covers numpy; a bool is never a resolution)."""
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not (math.isfinite(dpi) and dpi > 0):
        raise ValueError(f"dpi must be a positive number of dots per inch such as 100, got {dpi!r}")
    return float(dpi)


def _save_figure_atomically(fig: Any, save_path: str | os.PathLike[str], dpi: float) -> None:
    """Save ``fig`` through a hidden sibling, so a crash never leaves half a figure under its name."""
    with atomic_file(save_path, "wb") as handle:
        fig.savefig(handle, format=_check_save_path(save_path), dpi=dpi, metadata=None)
