"""Performance benchmark: is the network busy, and what do CAM, overlays, boxes and evaluation cost?

Builds its own data with the synthetic Stanford Cars generator (JPEG quality 90, about 700x450),
measures the figures listed below on the machine it runs on, and writes
``benchmarks/results.json`` and ``benchmarks/results.md``. Every figure is the median over
repeated runs after a warm-up; a comparison is the median of ratios of runs made side by side
(alternating) in the same process. A GPU is used where one is present (and its absolute
images/s recorded), the CPU otherwise.

The figures, and the target of each:

- pipeline efficiency: training images/s from JPEG files through the real loader / on tensors in memory
  (>= 0.95 CPU, >= 0.85 GPU).
- decode speed-up: loader's decode + resize to 224 per core / ``Image.open().convert("RGB").resize()`` (>= 2x).
- CAM overhead: forward with ``return_cam=True`` / without, batch 64 (<= 1.03x).
- backbones: per backbone (AlexNet, VGG16, ResNet-18, ResNet-50), training images/s on tensors in memory, batch 8;
  CAM overhead, batch 8 (<= 1.03x).
- overlay speed: ``apply_cam`` / the faster of torchcam ``overlay_mask`` and grad-cam ``show_cam_on_image``
  (>= 1.5x CPU, >= 20x GPU).
- box sweep: one-pass sweep / ``scipy.ndimage.label`` per threshold, 100 thresholds (>= 20x).
- evaluation speed: ``evaluation.evaluate`` images/s / plain inference images/s (>= 0.5).
- memory: peak resident memory per training epoch, batch 32, CPU (flat from epoch to epoch).
- report: ``report.write_report`` of an untrained AlexNet-GAP: the page's size (MB), seconds to write it, seconds
  per image, on the demo's 90 test images and on 8,041 (the real test split's size; 43 classes x 187), 160x104 JPEGs
  read at 128x128 (a record, no target).
- photos: ``visualize.py CHECKPOINT --images DIR --out_dir OUT --method cam`` in process (``write_explanations``:
  decode, scoring pass, overlays, CSV, files) on 256 JPEGs of ~700x450, AlexNet-GAP, beside the forward pass alone on
  the same photos decoded in memory at the same batch size (the floor) and the peers' per-image loop (open, resize,
  one-image forward, upsample, colour map, blend, write a JPEG); the ratio floor / command in photos/s (<= 1.25x).
- photos_memory: the resident memory of the same command over 10,000 small photos, sampled along the way (flat).
- export: images/s of the exported CAM (``--export``) in onnxruntime against ``model(images, True)``, batch 1 and 32.
- score maps: ``saved_maps.score_map_folder`` on one saved 112x112 map per image of 8,041 (43 classes x 187), maps/s
  under protocol ``cam`` and under ``wsolevaluation`` at intervals 0.01 and 0.001, beside wsolevaluation's own
  per-image contour loop at both intervals on the first 256 maps; protocol cam / their loop at 0.01 (>= 10x).

``--only FIGURE ...`` measures those figures alone; the others are kept from the ``results.json`` already in ``--out``
(each with the ``machine`` and ``sizes`` of the run that measured it), so one figure can be re-measured or added
without losing the rest. A ``--quick`` run never mixes with a full one's figures.

Usage::

    pip install -e '.[bench]'        # torchcam, grad-cam, opencv (the peers)
    python benchmarks/run.py         # about 10 minutes on 2 CPU cores
    python benchmarks/run.py --quick --out /tmp/bench   # seconds, tiny sizes: a smoke test
    python benchmarks/run.py --only report              # one figure; the rest of results.json is kept

This file parses the command line and runs the figures; beside it, ``bench_helpers.py`` holds the sizes, timing and
machine facts every figure shares, ``bench_train_step.py`` the training step they time, ``bench_pipeline.py``,
``bench_networks.py``, ``bench_maps.py``, ``bench_evaluation.py``, ``bench_memory.py``, ``bench_photos.py`` and
``bench_score_maps.py`` the figures, and ``bench_results.py`` and ``bench_markdown.py`` what is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# OpenMP threads that sleep at once when idle (the setting the README recommends for CPU runs).
# With libgomp's default (spin, then sleep), torch's two threads on a two-core machine that other
# processes also use wait whole scheduler slices for each other: apply_cam ran 25x slower and
# stacking a batch 20x slower that way; on an idle machine the policy changed nothing measurable.
# It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The figures' modules are imported by their file names: run as a script, this folder is first on sys.path (their
# ``bench_`` prefix keeps them from hiding an installed module of the same name).
import torch

from bench_evaluation import evaluation_speed, report
from bench_export import onnx_speed
from bench_helpers import QUICK, OtherWork, Sizes, build_data, load_average, machine_info
from bench_maps import box_sweep, overlay_speed
from bench_memory import memory
from bench_networks import backbones, cam_methods, cam_overhead
from bench_photos import photos, photos_memory
from bench_pipeline import decode_speedup, pipeline_efficiency, thread_split
from bench_results import keep_previous, summarize, write_results
from bench_score_maps import score_maps
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.runtime import configure_cpu_threads

logger = logging.getLogger("benchmarks")

HERE = Path(__file__).resolve().parent

# --only's word for each figure, and the figure's name in results.json, in the order they are measured.
FIGURES = {
    "pipeline": "pipeline_efficiency",
    "decode": "decode_speedup",
    "cam": "cam_overhead",
    "backbones": "backbones",
    "methods": "cam_methods",
    "overlay": "overlay_speed",
    "sweep": "box_sweep",
    "evaluate": "evaluation_speed",
    "memory": "memory",
    "split": "thread_split",
    "report": "report",
    "photos": "photos",
    "photos_memory": "photos_memory",
    "score_maps": "score_maps",
    "export": "onnx_speed",
}
# The figures that read the synthetic data set (the others make their own inputs).
NEEDS_DATA = {"pipeline", "decode", "memory", "split"}


def figure_jobs(base: Path, root: Path, sizes: Sizes, device: torch.device) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each figure's measurement, by its ``--only`` word, in ``FIGURES``' order."""
    cache_dir = base / "cache"
    return {
        "pipeline": lambda: pipeline_efficiency(root, cache_dir, sizes, device),
        "decode": lambda: decode_speedup(root, cache_dir, sizes),
        "cam": lambda: cam_overhead(sizes, device),
        "backbones": lambda: backbones(sizes, device),
        "methods": lambda: cam_methods(sizes, device),
        "overlay": lambda: overlay_speed(sizes, device),
        "sweep": lambda: box_sweep(sizes),
        "evaluate": lambda: evaluation_speed(sizes, device),
        "memory": lambda: memory(root, sizes),
        "split": lambda: thread_split(root, sizes, device),
        "report": lambda: report(base, sizes, device),
        "photos": lambda: photos(base, sizes, device),
        "photos_memory": lambda: photos_memory(base, sizes, device),
        "score_maps": lambda: score_maps(base, sizes),
        "export": lambda: onnx_speed(sizes),
    }


def measure(name: str, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``job``'s figure with the seconds it took; a figure that fails records its error instead."""
    logger.info("measuring %s", name)
    start = time.perf_counter()
    try:
        figure = job()
    except Exception as err:  # one broken figure must not lose the others
        logger.exception("%s failed", name)
        figure = {"value": None, "error": f"{type(err).__name__}: {err}"}
    figure["seconds"] = round(time.perf_counter() - start, 1)
    return figure


def keep_in_order(path: Path, results: dict[str, Any]) -> None:
    """Add the figures of the earlier run at ``path`` that this one did not measure; all in ``FIGURES``' order."""
    kept = keep_previous(path, results)
    if kept:
        logger.info("kept from the previous %s: %s", path, ", ".join(kept))
    order = list(FIGURES.values())
    results["figures"] = dict(
        sorted(results["figures"].items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds: a smoke test of every figure")
    parser.add_argument("--out", default=str(HERE), help="folder for results.json and results.md")
    parser.add_argument(
        "--data", default=None, help="folder for the synthetic data and cache (default: a temporary one)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the network runs")
    parser.add_argument("--repeats", type=int, default=None, help="measured runs per figure (after a warm-up)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=[
            "pipeline",
            "split",
            "decode",
            "cam",
            "backbones",
            "methods",
            "overlay",
            "sweep",
            "evaluate",
            "memory",
            "report",
            "photos",
            "photos_memory",
            "score_maps",
            "export",
        ],
        help="measure only these figures; the others are kept from --out's results.json",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = QUICK if args.quick else Sizes()
    if args.repeats is not None:
        sizes.repeats = sizes.pipeline_repeats = sizes.overlay_repeats = sizes.score_maps_repeats = max(1, args.repeats)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    configure_cpu_threads(DistInfo(), device)
    only = set(args.only) if args.only else None
    other_work = OtherWork()
    results: dict[str, Any] = {
        "machine": machine_info(device),
        "sizes": vars(sizes) | {"quick": args.quick},
        "figures": {},
    }
    with tempfile.TemporaryDirectory(prefix="cam_bench_") as scratch:
        base = Path(args.data) if args.data else Path(scratch)
        needs_data = only is None or bool(only & NEEDS_DATA)
        root = build_data(base / "data", sizes) if needs_data else base / "data"
        for short, job in figure_jobs(base, root, sizes, device).items():
            if only is None or short in only:
                results["figures"][FIGURES[short]] = measure(FIGURES[short], job)
    if (load := load_average()) is not None:
        results["machine"]["load_average_at_end"] = load
    share = other_work.share()
    results["machine"]["other_processes_cpu_share"] = None if share is None else round(share, 3)
    out = Path(args.out)
    results["measured"] = list(results["figures"])
    if only is not None:
        keep_in_order(out / "results.json", results)
    results["summary"] = summarize(results["figures"], device)
    print(write_results(out, results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
