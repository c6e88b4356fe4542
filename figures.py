"""Figure files: checking a figure path before drawing, saving a figure atomically, a figure that a notebook
displays only where it should, and ``plot_training_curves`` (the figure training writes each epoch)."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from .atomic_files import atomic_file, file_in_the_way, unwritable_reason
from .localization import METRIC_LABELS

__all__ = [
    "check_dpi",
    "check_save_path",
    "finish_figure",
    "new_figure",
    "plot_training_curves",
    "save_figure_atomically",
]

# File-only backends: figures made there stay off pyplot, so scripts drawing many grids keep none open.
_NON_INTERACTIVE_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})

# Training curves: (panel title, metric keys without their split prefix, y label)
_CURVE_PANELS = (
    ("loss", ("loss",), "cross-entropy"),
    ("classification", ("top1", "top5"), "accuracy"),
    ("localisation", ("gt_known_loc", "top1_loc", "maxboxacc", "maxboxacc_v2"), "accuracy"),
)
_CURVE_COLORS = {metric: f"C{i}" for i, metric in enumerate(m for _, metrics, _ in _CURVE_PANELS for m in metrics)}
_SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def check_save_path(save_path: str | os.PathLike[str], name: str = "save_path") -> str:
    """Refuse a figure path that cannot be written, before drawing; return its format. ``name``: the user's word
    for it."""
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
    if (reason := unwritable_reason(path.parent)) is not None:
        raise ValueError(f"{name} {str(path)!r} is not writable ({reason}); choose another folder")
    return fmt


def check_dpi(dpi: Any) -> float:
    """``dpi`` as a positive finite float (numbers.Real covers numpy; a bool is never a resolution)."""
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Real) or not (math.isfinite(dpi) and dpi > 0):
        raise ValueError(f"dpi must be a positive number of dots per inch such as 100, got {dpi!r}")
    return float(dpi)


def save_figure_atomically(fig: Any, save_path: str | os.PathLike[str], dpi: float) -> None:
    """Save ``fig`` through a hidden sibling, so a crash never leaves half a figure under its name.

    ``save_path`` is trusted: a path :func:`check_save_path` accepted (before drawing) or one the caller built, with
    a suffix that names the format.
    """
    with atomic_file(save_path, "wb") as handle:
        fig.savefig(handle, format=Path(save_path).suffix[1:].lower(), dpi=dpi, metadata=None)


def new_figure(figsize: tuple[float, float], dpi: float, show: bool, display: bool = True) -> Figure:
    """A pyplot figure where something may display it (a notebook shows those a cell made), else a plain one."""
    if show or (display and str(matplotlib.get_backend()).lower() not in _NON_INTERACTIVE_BACKENDS):
        import matplotlib.pyplot as plt  # only here: importing pyplot hooks into IPython's display

        return plt.figure(figsize=figsize, dpi=dpi, layout="constrained")
    return Figure(figsize=figsize, dpi=dpi, layout="constrained")  # freed with its last reference


def finish_figure(fig: Figure, save_path: str | os.PathLike[str] | None, dpi: float, show: bool) -> Figure:
    """Save ``fig`` (atomically) where asked, show it where asked, and return it."""
    if save_path is not None:
        save_figure_atomically(fig, save_path, dpi)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    save_path: str | os.PathLike[str] | None = None,
    *,
    dpi: float = 100.0,
    show: bool = False,
) -> Figure:
    """Loss, classification and localisation metrics per epoch, one panel each.

    Never registered with pyplot unless ``show``: a training loop may call it every epoch, in a notebook too.

    Args:
        history: Per-epoch records in any order, as training logs them: ``epoch`` plus ``<split>_<metric>``
            keys (metric one of ``localization.METRIC_LABELS``); the last marked ``"best": True`` gets a dotted line.
        save_path, dpi, show: As for :func:`.visualize.visualize_cam`.

    Raises:
        ValueError: If ``history`` is empty, lacks an ``epoch`` or has nothing to plot, or ``dpi`` or ``save_path``
            is bad.
    """
    records = sorted(history, key=lambda record: record.get("epoch", 0))
    if not records:
        raise ValueError("history is empty: there are no epochs to plot")
    if any("epoch" not in record for record in records):
        raise ValueError("every history record needs an 'epoch' key")
    dpi = check_dpi(dpi)
    if save_path is not None:
        check_save_path(save_path)
    epochs = [record["epoch"] for record in records]
    best = [record["epoch"] for record in records if record.get("best")]
    keys = set().union(*records)
    panels = []  # (title, y label, [(label, values, line style, metric)])
    for title, metrics, ylabel in _CURVE_PANELS:
        if series := [
            (
                f"{split} {METRIC_LABELS[metric]}",
                [float(r.get(f"{split}_{metric}", math.nan)) for r in records],
                linestyle,
                metric,
            )
            for split, linestyle in _SPLIT_STYLES.items()
            for metric in metrics
            if f"{split}_{metric}" in keys
        ]:
            panels.append((title, ylabel, series))
    if not panels:
        raise ValueError(
            "history has no '<split>_<metric>' keys to plot (e.g. 'train_loss', 'val_top1'); "
            f"the first record's keys are {sorted(records[0])}"
        )
    fig = new_figure((4.2 * len(panels), 3.4), dpi, show, display=False)
    for ax, (title, ylabel, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for label, values, linestyle, metric in series:
            ax.plot(
                epochs,
                values,
                linestyle=linestyle,
                color=_CURVE_COLORS[metric],
                marker="." if len(epochs) < 30 else None,
                label=label,
            )
        if best:
            ax.axvline(best[-1], color="0.5", linestyle=":", linewidth=1.0, label=f"best (epoch {best[-1]})")
        ax.set_title(title, fontsize=10)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if ylabel == "accuracy":
            ax.set_ylim(-0.02, 1.02)
    return finish_figure(fig, save_path, dpi, show)
