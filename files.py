"""Files written whole or not at all, torch files read safely, figures saved atomically: the one
place that turns an ``OSError`` or a damaged file into a sentence about the user's path."""

from __future__ import annotations

import errno
import math
import numbers
import os
import pickletools
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s own words (torch wraps the unpickler's in a page of advice), or its class name."""
    text = str(err).rsplit("WeightsUnpickler error:", 1)[-1]
    return next((line.strip().strip("'\"") for line in text.splitlines() if line.strip()), "") or type(err).__name__


def _foreign_object(path: Path) -> str | None:
    """The first non-torch object the pickle in ``path`` (bare or in torch's zip) would build, if any; read, never run."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        strings: list[Any] = []  # the strings pushed so far: STACK_GLOBAL takes the last two
        memo: dict[int, Any] = {}
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                name = arg.replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL":
                name = ".".join(map(str, strings[-2:]))
            else:
                if "UNICODE" in opcode.name or "STRING" in opcode.name:
                    strings.append(arg)
                elif opcode.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if arg is None else arg] = strings[-1] if strings else None
                elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(arg))
                continue
            if not (name.startswith("torch.") or name == "collections.OrderedDict"):
                return name
    except Exception:
        return None
    return None


def _safe_torch_load(path: Path, location: torch.device) -> Any:
    """``torch.load(path, weights_only=True)`` whose every failure but ``open``'s is a :class:`_TorchFileError`."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise _TorchFileError("not_torch", "it is empty, 0 bytes; was its writing interrupted?")
    unsafe = "it holds objects a safe (weights_only) load will not unpickle, such as {}"
    # torch.save writes a zip archive (a truncated one still starts with an entry header); files from
    # before PyTorch 1.6 are a protocol-2 pickle. Anything else would only confuse torch.load.
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        if name := _foreign_object(path):
            raise _TorchFileError("unsafe", unsafe.format(name))
        raise _TorchFileError("not_torch", "not a file written by torch.save")
    try:
        with warnings.catch_warnings():  # torch's "please file an issue" on a newer pickle; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=location, weights_only=True)
    except Exception as err:
        if name := _foreign_object(path):
            raise _TorchFileError("unsafe", unsafe.format(name)) from None
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
    new = (NotADirectoryError if blocker else type(err))(
        f"could not write {str(path)!r}: {reason}; choose another path"
    )
    new.errno = errno.ENOTDIR if blocker else err.errno  # set after construction, so str() stays the message
    return new


@contextmanager
def _restated(path: Path) -> Iterator[None]:
    """An ``OSError`` of one step of writing ``path`` restated about ``path``."""
    try:
        yield
    except OSError as err:
        raise _write_error(path, err) from None


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` (mode ``"wb"``, or ``"w"`` for UTF-8) through a hidden file beside it, flushed to disk and
    moved into place with ``open()``'s permissions only on success: a crash mid-write keeps the old file.
    Raises ``IsADirectoryError`` for a folder, and each ``OSError`` of the file system (a full disk included) as
    its own class, naming ``path``; the caller's own exceptions pass unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise _folder_error(f"{str(path)!r} is a folder; give a file name")
    with _restated(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    handle, done = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})), False
    try:
        try:
            yield handle
        except BaseException as err:
            # A full disk seen by the caller's writer is about this file; torch.save raises it, or (from its
            # zip writer's exit) a RuntimeError with it as the context.
            while err is not None and not (isinstance(err, OSError) and err.errno in _DISK_FULL):
                err = err.__cause__ or err.__context__
            if err is not None:
                raise _write_error(path, err) from None
            raise
        finally:
            # Also after a failed write: torch.save on a full disk raises "unexpected pos", and only
            # flushing what it left in the buffer brings out the OS's own error (ENOSPC).
            with _restated(path):
                handle.flush()
        with _restated(path):
            os.fsync(handle.fileno())
            handle.close()
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
        done = True
    finally:
        if not done:
            with suppress(OSError):
                handle.close()
            Path(tmp).unlink(missing_ok=True)


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
    """Refuse a figure path that cannot be written, before drawing; return its format. ``name``: the user's word for it."""
    from matplotlib.backend_bases import FigureCanvasBase  # here: the model and checkpoints import this module

    if not isinstance(save_path, str | os.PathLike):
        raise TypeError(f"{name} must be a file name such as 'cams.png', got {type(save_path).__name__}")
    path = Path(save_path)
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a folder; give a file name such as {str(path / 'cams.png')!r}")
    if blocker := file_in_the_way(path):
        raise ValueError(
            f"{name} {str(path)!r} cannot be written: {str(blocker)!r} is a file, not a folder; choose another path"
        )
    fmt, supported = path.suffix[1:].lower(), FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot tell the image format of {name} {str(path)!r} from its suffix; "
            f"use one of {', '.join('.' + s for s in sorted(supported))}"
        )
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
