"""Fetch Stanford Cars from a public mirror with ``kagglehub`` (the ``download`` extra)."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from .common import DOWNLOAD_EXTRA_HINT, KAGGLE_HANDLE, DatasetError, DatasetNotFoundError, DownloadError, PathLike
from .layouts import Layout, by_hand, find_layout, root_path, verify_stanford_cars

logger = logging.getLogger(__name__)

# Exception class names of requests and urllib3 that mean the network failed, not the server.
_NETWORK_ERRORS = {
    "ConnectionError",
    "Timeout",
    "ConnectTimeout",
    "ReadTimeout",
    "MaxRetryError",
    "NewConnectionError",
    "NameResolutionError",
    "ProtocolError",
}


@dataclass(frozen=True)
class Mirror:
    """A Kaggle dataset that serves Stanford Cars, and what a complete copy holds."""

    handle: str = KAGGLE_HANDLE
    num_classes: int = 196
    num_train: int = 8144
    num_test: int = 8041


DEFAULT_MIRROR = Mirror()


def _is_network_error(err: BaseException | None) -> bool:
    """True for connection failures anywhere in ``err``'s chain, whether raised by the socket layer, urllib3 or
    requests."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)) or any(
            cls.__name__ in _NETWORK_ERRORS for cls in type(err).__mro__
        ):
            return True
        err = err.__cause__ or err.__context__
    return False


def _place_by_hand(root: Path, mirror: Mirror) -> str:
    return (
        f"To place the files by hand: on a machine with network, {by_hand(root, mirror.handle)} (the page's Download "
        f"button or `kaggle datasets download {mirror.handle}` fetch it; Kaggle's cars_train/cars_train layout and "
        f"the original car_ims/ + cars_annos.mat are read too)."
    )


def _fetch(mirror: Mirror, root: Path, staging: Path) -> Path:
    """Download the mirror with kagglehub into ``staging`` (older clients: into their own cache); the folder it is
    in."""
    try:
        import kagglehub  # the optional ``download`` extra
    except ImportError as err:
        raise DownloadError(
            f"download_datasets=True fetches Stanford Cars from Kaggle ({mirror.handle}) through the kagglehub "
            f"package, which is not installed: {DOWNLOAD_EXTRA_HINT}. {_place_by_hand(root, mirror)}"
        ) from err
    try:
        parameters = inspect.signature(kagglehub.dataset_download).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    takes_output_dir = "output_dir" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    root.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading Stanford Cars (about 1.9 GB) from Kaggle: %s", mirror.handle)
    try:
        return Path(
            kagglehub.dataset_download(mirror.handle, **({"output_dir": str(staging)} if takes_output_dir else {}))
        )
    except Exception as err:  # the client raises requests/urllib3/kagglehub errors alike
        if _is_network_error(err):
            cause = (
                "Kaggle could not be reached; this machine seems to have no network access "
                f"({type(err).__name__}: {err})."
            )
        else:
            cause = (
                f"kagglehub failed ({type(err).__name__}: {err}); if Kaggle asks for credentials, run "
                f"kagglehub.login() or set KAGGLE_USERNAME and KAGGLE_KEY."
            )
        raise DownloadError(
            f"Could not download Stanford Cars from {mirror.handle}: {cause} {_place_by_hand(root, mirror)}"
        ) from err


def _find_fetched_layout(fetched: Path) -> Layout:
    """The layout inside what the client returned: at its top, in ``stanford_cars``, or one folder down."""
    errors = []
    for place in [fetched] + (sorted(path for path in fetched.iterdir() if path.is_dir()) if fetched.is_dir() else []):
        try:
            return find_layout(place)
        except DatasetNotFoundError as err:
            errors.append(str(err))
    raise DownloadError(f"the download at {fetched} holds no Stanford Cars layout this reader accepts: {errors[0]}")


def download_stanford_cars(root: PathLike, mirror: Mirror | None = None) -> Path:
    """The folder of the Stanford Cars under ``root``; if there is none, ``mirror`` (:data:`DEFAULT_MIRROR` if None)
    fetched with ``kagglehub``, checked by :func:`verify_stanford_cars` and placed at ``root/stanford_cars``.

    Raises:
        DownloadError: If ``kagglehub`` is missing, the fetch fails (saying why and how to place the files
            by hand), the copy is incomplete, or a broken copy is in the way.
    """
    mirror = mirror if mirror is not None else DEFAULT_MIRROR
    root = root_path(root)
    target = root / "stanford_cars"
    try:
        layout = find_layout(root)
        logger.info("Stanford Cars already at %s (%s layout); nothing to download", layout.base, layout.kind)
        return layout.base
    except DatasetNotFoundError as err:
        if target.exists() or target.is_symlink():
            raise DownloadError(
                f"{target} exists but is not a readable Stanford Cars ({err}). Complete it, or move it aside "
                f"so download_datasets=True can put a fresh copy there."
            ) from None
    staging = root / ".stanford_cars_download"
    layout = _find_fetched_layout(fetched := _fetch(mirror, root, staging))
    try:
        verify_stanford_cars(layout.base, mirror.num_classes, mirror.num_train, mirror.num_test)
    except DatasetError as err:
        raise DownloadError(
            f"the download from {mirror.handle} at {fetched} is not complete ({err}); retry, or place the "
            f"files by hand. {_place_by_hand(root, mirror)}"
        ) from err
    if layout.base.resolve().is_relative_to(staging.resolve()):
        os.replace(layout.base, target)
        shutil.rmtree(staging, ignore_errors=True)
    else:  # a symlink (a copy where links are not allowed), placed atomically
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.symlink(layout.base.resolve(), temporary, target_is_directory=True)
        except OSError:
            logger.info("Cannot symlink here; copying %s to %s", layout.base, target)
            shutil.copytree(layout.base, temporary)
        os.replace(temporary, target)
    logger.info("Stanford Cars placed at %s (%s layout)", target, layout.kind)
    return target
