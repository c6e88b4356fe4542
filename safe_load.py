"""Torch files read safely: ``torch.load`` with ``weights_only=True`` (nothing in the file runs), each failure
sorted into why, and for a refused file, the first object its pickle would have built, read without running it."""

from __future__ import annotations

import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch


class TorchFileError(Exception):
    """Why a safe ``torch.load`` failed; ``kind`` is ``"not_torch"``, ``"unsafe"``, ``"legacy"`` (a bare pickle it
    cannot read safely) or ``"unreadable"``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s own words (torch wraps the unpickler's in a page of advice), or its class name."""
    text = str(err).rsplit("WeightsUnpickler error:", 1)[-1]
    return next((line.strip().strip("'\"") for line in text.splitlines() if line.strip()), "") or type(err).__name__


def _foreign_object(path: Path) -> str | None:
    """The first non-torch object the pickle in ``path`` (bare or in torch's zip) would build, if any; read, never
    run."""
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


def safe_torch_load(path: Path, location: torch.device) -> Any:
    """``torch.load(path, weights_only=True)`` whose every failure but ``open``'s is a :class:`TorchFileError`."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise TorchFileError("not_torch", "it is empty, 0 bytes; was its writing interrupted?")
    unsafe = "it holds objects a safe (weights_only) load will not unpickle, such as {}"
    # torch.save writes a zip archive (a truncated one still starts with an entry header); files from
    # before PyTorch 1.6 are a protocol-2 pickle. Anything else would only confuse torch.load.
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        if name := _foreign_object(path):
            raise TorchFileError("unsafe", unsafe.format(name))
        raise TorchFileError("not_torch", "not a file written by torch.save")
    try:
        with warnings.catch_warnings():  # torch's "please file an issue" on a newer pickle; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=location, weights_only=True)
    except Exception as err:
        if name := _foreign_object(path):
            raise TorchFileError("unsafe", unsafe.format(name)) from None
        why = first_line(err).split(". ")[0]  # torch's advice after it would load the file unsafely
        if head[:1] == b"\x80" and why.startswith("Unsupported"):  # a whole bare pickle: legacy format, pickle.dump
            raise TorchFileError(
                "legacy",
                f"it is an old-format (before PyTorch 1.6) or plain pickle that a safe (weights_only) load cannot read "
                f"({why}), so it was not loaded: loading it fully could run code. If you trust it, convert it once "
                "with torch.save(torch.load(OLD, weights_only=False), NEW) and pass NEW",
            ) from None
        raise TorchFileError("unreadable", f"truncated or damaged: {first_line(err)}") from None
