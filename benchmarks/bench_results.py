"""The figures' summary against their targets, the figures kept from the previous run, and the written results."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from bench_markdown import NOTES_HEADING, markdown
from CAM_Stanford_Cars.atomic_files import atomic_write_text
from CAM_Stanford_Cars.model import ARCHS

logger = logging.getLogger("benchmarks")

TARGETS = {
    "pipeline_efficiency": {"cpu": (">=", 0.95), "cuda": (">=", 0.85)},
    "pipeline_efficiency_cached": {"cpu": (">=", 0.95), "cuda": (">=", 0.85)},
    "decode_speedup": {"any": (">=", 2.0)},
    # One row per backbone; AlexNet's comes from the batch-64 ``cam_overhead`` figure when that ran.
    **{f"cam_overhead_{arch}": {"any": ("<=", 1.03)} for arch in ARCHS},
    "overlay_speedup": {"cpu": (">=", 1.5), "cuda": (">=", 20.0)},
    "box_sweep_speedup": {"any": (">=", 20.0)},
    "evaluation_speed": {"any": (">=", 0.5)},
    "photos": {"any": ("<=", 1.25)},
    "photos_memory": {"any": ("<=", 50.0)},
    "score_maps_speedup": {"any": (">=", 10.0)},
    "onnx_speed": {"any": (">=", 1.0)},
}

# (summary key, label, figure, the figure's field): the rows with one value each.
ROWS = [
    ("pipeline_efficiency", "pipeline efficiency (JPEG decoded every epoch)", "pipeline_efficiency", "value"),
    ("pipeline_efficiency_cached", "pipeline efficiency (with `cache_dir`)", "pipeline_efficiency", "cached"),
    ("decode_speedup", "decode speed-up (per core)", "decode_speedup", "value"),
    ("overlay_speedup", "overlay speed vs faster peer", "overlay_speed", "value"),
    ("box_sweep_speedup", "box sweep, 100 thresholds", "box_sweep", "value"),
    ("evaluation_speed", "evaluation / plain inference", "evaluation_speed", "value"),
    ("photos", "your own photos: forward alone / the command, photos/s", "photos", "value"),
    ("photos_memory", "your own photos: resident memory growth over the run, MiB", "photos_memory", "value"),
    ("score_maps_speedup", "saved maps: protocol cam / wsolevaluation's loop at 0.01, maps/s", "score_maps", "value"),
    ("onnx_speed", "exported CAM: onnxruntime / PyTorch, images/s at batch 32", "onnx_speed", "value"),
]


def target_for(key: str, device: torch.device) -> tuple[str, float] | None:
    options = TARGETS.get(key, {})
    return options.get("any") or options.get("cuda" if device.type == "cuda" else "cpu")


def verdict(value: float | None, target: tuple[str, float] | None) -> bool | None:
    if value is None or target is None:
        return None
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def cam_rows(figures: dict[str, Any]) -> list[tuple[str, str, float | None, Any]]:
    """(key, label, value, note) of the CAM overhead of each backbone. AlexNet's is the batch-64 ``cam_overhead``
    figure when that ran (the backbones figure's batch-8 AlexNet otherwise), so it shows once."""
    single = figures.get("cam_overhead", {})
    table = figures.get("backbones", {})
    by_arch = table.get("archs", {})
    rows = []
    for arch in ARCHS:
        if arch == "alexnet" and single:
            data, value, batch = single, single.get("value"), single.get("batch", "?")
        else:
            data, value, batch = table, by_arch.get(arch, {}).get("cam_overhead"), table.get("batch", "?")
        title = by_arch.get(arch, {}).get("title") or data.get("title") or arch
        rows.append((f"cam_overhead_{arch}", f"CAM overhead, {title} (batch {batch})", value, data.get("error") or ""))
    return rows


def figure_device(data: Any, device: torch.device) -> torch.device:
    """The device a figure was measured on: its own ``machine``'s where it was kept from an earlier run, else
    ``device``."""
    machine = data.get("machine") if isinstance(data, dict) else None
    return torch.device(machine["device"]) if isinstance(machine, dict) and machine.get("device") else device


def summarize(figures: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    entries, devices = [], {}
    for key, label, figure, field_name in ROWS:
        data = figures.get(figure, {})
        value = data.get(field_name) if isinstance(data, dict) else None
        entries.append((key, label, value, data.get("error") or data.get("missing") or ""))
        devices[key] = figure_device(data, device)
    after = next(i for i, entry in enumerate(entries) if entry[0] == "decode_speedup") + 1
    entries[after:after] = cam_rows(figures)
    rows = []
    for key, label, value, note in entries:
        target = target_for(key, devices.get(key, device))
        rows.append(
            {
                "figure": key,
                "label": label,
                "measured": value,
                "target": f"{target[0]} {target[1]:g}" if target else "",
                "met": verdict(value, target),
                "note": note,
            }
        )
    mem = figures.get("memory", {})
    rows.append(
        {
            "figure": "memory",
            "label": f"memory: peak RSS per training epoch, batch {mem.get('batch', '?')}",
            "measured": mem.get("value"),
            "target": "flat",
            "met": mem.get("flat"),
            "note": mem.get("error") or mem.get("skipped") or f"per epoch {mem.get('peak_rss_mib_per_epoch')}",
        }
    )
    return rows


def keep_previous(path: Path, results: dict[str, Any]) -> list[str]:
    """Copy into ``results`` the figures of the earlier ``results.json`` at ``path`` that this run did not measure,
    each with the ``machine`` and ``sizes`` of the run that measured it (a figure kept before keeps its own); their
    names. A quick run's figures and a full run's are never mixed."""
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        figures = previous["figures"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("%s is unreadable (%s): the figures not measured now are not kept", path, err)
        return []
    was_quick = bool((previous.get("sizes") or {}).get("quick"))
    if was_quick != bool(results["sizes"]["quick"]):
        logger.warning(
            "%s holds a %s run's figures and this is a %s run: they are not kept",
            path,
            "quick" if was_quick else "full",
            "quick" if results["sizes"]["quick"] else "full",
        )
        return []
    kept = []
    for name, data in figures.items():
        if name in results["figures"] or not isinstance(data, dict):
            continue
        results["figures"][name] = {
            **data,
            "machine": data.get("machine") or previous.get("machine"),
            "sizes": data.get("sizes") or previous.get("sizes"),
        }
        kept.append(name)
    return kept


def write_results(out: Path, results: dict[str, Any]) -> str:
    """Write ``results.json`` and ``results.md`` in ``out``, each in one step; returns the generated page.

    The hand-written notes below the generated table of the ``results.md`` already there survive.
    """
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    previous = out / "results.md"
    notes = previous.read_text(encoding="utf-8").partition(NOTES_HEADING)[1:] if previous.is_file() else ("", "")
    page = markdown(results)
    atomic_write_text(out / "results.md", page + ("\n" + "".join(notes) if notes[0] else ""))
    return page
