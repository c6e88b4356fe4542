"""Files written whole or not at all, torch files read safely, figures saved atomically.

The one place that turns an ``OSError`` or a damaged file into a sentence about the user's path.
Used by the model (pretrained weights), checkpoints, the run folder and the figures.
"""

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
    """Why ``torch.load(weights_only=True)`` could not read a file.

    ``kind`` is ``"not_torch"`` (not written by ``torch.save``), ``"unsafe"`` (a pickle naming
    objects a safe load refuses) or ``"unreadable"`` (truncated or damaged).
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


# How torch's weights-only unpickler names an object it will not build: a GLOBAL, a function to
# call, or a class to instantiate. Any other refusal means a damaged file.
_UNSAFE_OBJECT = re.compile(r"GLOBAL (\S+)|unrecognized function (.+?)(?: which|$)|new object .* but got (.+)$", re.M)


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s own words, or its class name when it has none.

    torch wraps the unpickler's reason ("Unsupported operand 149") in a page of advice; only the
    part after ``WeightsUnpickler error:`` says what is wrong with the file.
    """
    text = str(err).rsplit("WeightsUnpickler error:", 1)[-1]
    line = next((line.strip().strip("'\"") for line in text.splitlines() if line.strip()), "")
    return line or type(err).__name__


def _safe_torch_load(path: Path, location: torch.device) -> Any:
    """``torch.load(path, weights_only=True)`` whose every failure is a :class:`_TorchFileError`."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise _TorchFileError("unreadable", f"cannot open it: {err.strerror or _first_line(err)}") from None
    if not head:
        raise _TorchFileError("not_torch", "it is empty, 0 bytes; was its writing interrupted?")
    # torch.save writes a zip archive (a truncated one still starts with an entry header); files
    # from before PyTorch 1.6 are a protocol-2 pickle. Anything else would only confuse torch.load.
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise _TorchFileError("not_torch", "not a file written by torch.save")
    try:
        with warnings.catch_warnings():
            # A newer-protocol pickle draws torch's "please file an issue" warning before it is
            # refused; the error below says all there is to say.
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
    if blocker is not None:
        # mkdir reports a file in the way as "File exists", which reads as if the target existed.
        new: OSError = NotADirectoryError(f"could not write {str(path)!r}: {str(blocker)!r} is a file, not a folder; choose another path")
        new.errno = errno.ENOTDIR
        return new
    if path.is_dir():
        return _folder_error(f"{str(path)!r} is a folder; give a file name")
    new = type(err)(f"could not write {str(path)!r}: {err.strerror or _first_line(err)}; choose another path")
    new.errno = err.errno  # set after construction, so str() stays the message above
    return new


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file beside it, moved into place only on success.

    Readers never see half a file, and a crash (or Ctrl-C) mid-write leaves the previous file as
    it was. The new file is flushed to disk and gets the permissions ``open()`` would give it.

    Args:
        path: The file to (re)place; its folder is created if missing.
        mode: ``"wb"`` or ``"w"`` (UTF-8 text).

    Raises:
        IsADirectoryError: If ``path`` is a folder (before anything is written).
        OSError: Of the underlying error's class, naming ``path``, not the hidden temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise _folder_error(f"{str(path)!r} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as err:
                raise _write_error(path, err) from None
        try:
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
        except OSError as err:
            raise _write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        return err.strerror or _first_line(err)
    return None


def check_writable(folder: Path, flag: str = "--checkpoints_dir") -> None:
    """Raise ``ValueError`` naming ``flag`` if ``folder`` cannot be created or written to."""
    reason = unwritable_reason(folder)
    if reason is not None:
        raise ValueError(f"{flag} {str(folder)!r} is not writable ({reason}); choose another folder")


def _save_format(save_path: str | os.PathLike[str], name: str = "save_path") -> str:
    """The image format named by ``save_path``'s suffix, e.g. ``"png"``; ``name`` is the argument's name in errors."""
    # Imported here, not at the top: the model and checkpoints import this module and must not
    # pay for matplotlib.
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(save_path).suffix[1:].lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot tell the image format of {name} {str(save_path)!r} from its suffix; "
            f"use one of {', '.join('.' + s for s in sorted(supported))}"
        )
    return fmt


def _check_save_path(save_path: str | os.PathLike[str], name: str = "save_path") -> str:
    """Refuse a figure path that cannot be written before anything is drawn; return its format.

    ``name`` is how the caller's user knows the path (``"save_path"``, ``"--out"``). Raises
    ``TypeError`` for a non-path, ``ValueError`` for a folder, a file in the way, or an unknown suffix.
    """
    if not isinstance(save_path, str | os.PathLike):
        raise TypeError(f"{name} must be a file name such as 'cams.png', got {type(save_path).__name__}")
    path = Path(save_path)
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file name such as {str(path / 'cams.png')!r}")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise ValueError(f"{name} {str(path)!r} cannot be written: {str(blocker)!r} is a file, not a folder; choose another path")
    return _save_format(path, name)


def _check_dpi(dpi: Any) -> float:
    """``dpi`` as a positive finite float, checked before anything is drawn."""
    # numbers.Real covers Python and numpy numbers; bool is an int but never a resolution.
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not (math.isfinite(dpi) and dpi > 0):
        raise ValueError(f"dpi must be a positive number of dots per inch such as 100, got {dpi!r}")
    return float(dpi)


def _save_figure_atomically(fig: Any, save_path: str | os.PathLike[str], dpi: float) -> Path:
    """Save ``fig`` through a hidden sibling, so a crash never leaves half a figure under its name."""
    path = Path(save_path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format=_save_format(path), dpi=dpi, metadata=None)
    return path
