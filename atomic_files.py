"""Files written whole or not at all, and folders checked before a run writes to them: the one place that turns
an ``OSError`` into a sentence about the user's path."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from .safe_load import first_line


def default_file_mode() -> int:
    """The permissions a plain ``open()`` would give a new file (``mkstemp`` gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file among ``path``'s parent folders that keeps it from being written, if any."""
    return next((parent for parent in Path(path).parents if parent.exists() and not parent.is_dir()), None)


def folder_error(message: str) -> IsADirectoryError:
    """An ``IsADirectoryError`` with errno EISDIR whose ``str()`` is just ``message``."""
    err = IsADirectoryError(message)
    err.errno = errno.EISDIR
    return err


def _write_error(path: Path, err: OSError) -> OSError:
    """``err`` restated about ``path`` (the hidden temp file means nothing to the user), same class and errno."""
    blocker = file_in_the_way(path)
    # mkdir reports a file in the way as "File exists", which reads as if the target existed.
    reason = f"{str(blocker)!r} is a file, not a folder" if blocker else err.strerror or first_line(err)
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


def kept_mode(path: Path) -> int:
    """The permission bits ``path`` has (it is about to be replaced), or a new file's (``open()``'s under the
    umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return default_file_mode()


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` (mode ``"wb"``, or ``"w"`` for UTF-8) through a hidden file beside it, flushed to disk and
    moved into place only on success: a crash mid-write keeps the old file. A file it replaces keeps its permissions
    (a private 0600 report stays private); a new one gets ``open()``'s.
    Raises ``IsADirectoryError`` for a folder, and each ``OSError`` of the file system (a full disk included) as
    its own class, naming ``path``; the caller's own exceptions pass unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise folder_error(f"{str(path)!r} is a folder; give a file name")
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
            os.chmod(tmp, kept_mode(path))
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
    """Why ``folder`` cannot be created or written to (the OS's words), or None if it can. Nothing is left behind:
    a missing folder is judged by its nearest existing parent (where it would be made), and is made only by the work
    that writes into it."""
    folder = Path(folder)
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists() or parent == parent.parent)
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, not a folder"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        return err.strerror or first_line(err)
    return None


def check_writable(folder: Path, flag: str = "--checkpoints_dir") -> None:
    """Raise ``ValueError`` naming ``flag`` if ``folder`` cannot be created or written to."""
    reason = unwritable_reason(folder)
    if reason is not None:
        raise ValueError(f"{flag} {str(folder)!r} is not writable ({reason}); choose another folder")
