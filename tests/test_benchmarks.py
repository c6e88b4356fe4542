"""The benchmark's quick mode runs end to end and reports every figure with a number (no timing is asserted)."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from CAM_Stanford_Cars.model import ARCHS

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES = [
    "pipeline_efficiency",
    "decode_speedup",
    "cam_overhead",
    "cam_methods",
    "backbones",
    "overlay_speed",
    "box_sweep",
    "evaluation_speed",
    "memory",
    "thread_split",
    "report",
    "photos",
    "photos_memory",
    "score_maps",
    "onnx_speed",
]


@pytest.mark.slow
def test_quick_benchmark_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks/run.py"),
            "--quick",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--data",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("date", "cpu", "cores", "torch", "torch_threads", "device", "device_name"):
        assert results["machine"][key] not in (None, "")
    figures = results["figures"]
    assert sorted(figures) == sorted(FIGURES)
    for name in FIGURES:
        assert "error" not in figures[name], (name, figures[name])
    peers_missing = len(figures["overlay_speed"]["missing"]) == 2  # the bench extra is not installed
    for row in results["summary"]:
        if row["figure"] == "overlay_speedup" and peers_missing:
            assert row["measured"] is None and figures["overlay_speed"]["images_per_s"]["apply_cam"] > 0
            continue
        assert isinstance(row["measured"], float) and math.isfinite(row["measured"]), row
        assert row["measured"] > 0 or row["figure"] == "photos_memory", row  # a growth may be none
        assert isinstance(row["met"], bool), row
    assert figures["box_sweep"]["equal_to_reference"] is True
    from CAM_Stanford_Cars.cams import METHODS

    assert sorted(figures["cam_methods"]["ms_per_image"]) == sorted(METHODS)
    assert all(math.isfinite(ms) and ms > 0 for ms in figures["cam_methods"]["ms_per_image"].values())
    assert math.isfinite(figures["cam_methods"]["checks_ms_per_image_cam"])
    assert len(figures["memory"]["peak_rss_mib_per_epoch"]) == 2
    rounds = figures["pipeline_efficiency"]["images_per_s_by_round"]
    assert sorted(rounds) == ["cached", "jpeg", "memory"] and all(len(r) == 1 for r in rounds.values())
    assert figures["thread_split"]["best"] in figures["thread_split"]["images_per_s"]
    by_arch = figures["backbones"]["archs"]
    assert sorted(by_arch) == sorted(ARCHS)
    for arch, data in by_arch.items():
        for key in ("train_images_per_s", "cam_overhead"):
            assert math.isfinite(data[key]) and data[key] > 0, (arch, key, data)
        assert data["parameters_millions"] > 0 and len(data["cam_size"]) == 2, (arch, data)
    cam_rows = [row["figure"] for row in results["summary"] if row["figure"].startswith("cam_overhead")]
    assert cam_rows == [f"cam_overhead_{arch}" for arch in ARCHS]
    assert sum("AlexNet" in row["label"] for row in results["summary"]) == 1
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("\n|") >= 1 + len(results["summary"]) and "| figure | measured | target | met? |" in table
    page = figures["report"]
    assert math.isfinite(page["value"]) and page["value"] > 0
    for case, images in (("demo", 2 * 3), ("large", 2 * 3)):  # quick: 2 classes x 3 test images each
        data = page[case]
        assert data["images"] == images, (case, data)
        for key in ("mb", "seconds", "seconds_per_image"):
            assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, (case, key, data)
    assert page["demo"]["classes_in_checkpoint"] == 9 and page["large"]["classes_in_checkpoint"] == 196
    assert "Report: demo set 6 images " in table and " ms per image)" in table
    shots = figures["photos"]
    assert shots["photos"] == 8 and sorted(shots["photos_per_s"]) == [
        "command",
        "command_workers",
        "floor",
        "peer_loop",
    ]
    assert all(math.isfinite(rate) and rate > 0 for rate in shots["photos_per_s"].values())
    assert sorted(shots["stages_ms_per_photo"]) == ["decode", "forward", "jpeg", "overlay", "score"]
    assert "Your own photos, photos/s (cpu, " in table
    onnx = figures["onnx_speed"]["images_per_s"]
    assert sorted(onnx) == ["1", "4"] and all(rate > 0 for r in onnx.values() for rate in r.values())
    held = figures["photos_memory"]
    assert held["photos"] == 40 and len(held["rss_mib_by_photos"]) == 20 and math.isfinite(held["value"])
    assert held["rss_mib_by_photos"][-1][0] == 40 and "Your own photos, memory (cpu, 40 JPEGs" in table
    saved = figures["score_maps"]
    assert saved["maps"] == 2 * 2 and saved["loop_maps"] == 4  # quick: 2 classes x 2 test images, all in the loop
    runs = ["cam", "wsolevaluation_0.01", "wsolevaluation_0.001", "their_loop_0.01", "their_loop_0.001"]
    assert sorted(saved["maps_per_s"]) == sorted(runs)
    assert all(math.isfinite(rate) and rate > 0 for rate in saved["maps_per_s"].values())
    assert all(check["equal_counts"] for check in saved["check_on_loop_maps"].values())
    assert "Saved maps, maps/s (cpu, 4 maps of 32x32, " in table
    assert "measured" in results and "Kept from the run of" not in table  # a full run keeps nothing


@pytest.mark.slow
def test_only_keeps_the_other_figures_of_the_previous_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, full = tmp_path / "out", tmp_path / "full"
    old_machine = {
        "date": "2020-01-02T03:04:05+00:00",
        "cpu": "Old CPU",
        "cores": 4,
        "torch": "1.0",
        "torch_threads": 4,
        "loader_workers": 3,
        "device": "cpu",
        "device_name": "Old CPU",
        "other_processes_cpu_share": 0.0,
    }
    older = {**old_machine, "date": "2019-05-06T07:08:09+00:00"}
    previous = {
        "machine": old_machine,
        "sizes": {"quick": True},
        "figures": {
            "pipeline_efficiency": {"value": 0.97, "cached": 0.99, "seconds": 1.0},
            "decode_speedup": {"value": 2.5, "seconds": 1.0},
            "box_sweep": {"value": 1.0, "stale": True},  # re-measured: replaced
            "memory": {"value": 1234.0, "flat": True, "batch": 4, "peak_rss_mib_per_epoch": [1234.0], "machine": older},
        },
        "summary": [],
    }
    for folder, quick in ((out, True), (full, False)):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({**previous, "sizes": {"quick": quick}}))
        (folder / "results.md").write_text("old table\n\n## Notes on these figures\n\nHand-written notes.\n")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks/run.py"),
            "--quick",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--only",
            "sweep",
            "--out",
            str(out),
            "--data",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    figures = results["figures"]
    assert list(figures) == ["pipeline_efficiency", "decode_speedup", "box_sweep", "memory"]
    assert results["measured"] == ["box_sweep"]
    sweep = figures["box_sweep"]
    assert "stale" not in sweep and "machine" not in sweep and sweep["equal_to_reference"] is True
    assert figures["pipeline_efficiency"]["value"] == 0.97 and figures["pipeline_efficiency"]["machine"] == old_machine
    assert figures["decode_speedup"]["sizes"] == {"quick": True}
    assert figures["memory"]["machine"] == older  # kept before: keeps the run that measured it
    assert results["machine"]["date"] != old_machine["date"]
    rows = {row["figure"]: row for row in results["summary"]}
    assert rows["pipeline_efficiency"]["measured"] == 0.97 and rows["pipeline_efficiency"]["met"] is True
    assert rows["pipeline_efficiency_cached"]["measured"] == 0.99 and rows["memory"]["measured"] == 1234.0
    assert rows["box_sweep_speedup"]["measured"] == sweep["value"]
    table = (out / "results.md").read_text()
    assert "This run measured `box_sweep` on " in table
    assert "Kept from the run of 2020-01-02T03:04:05+00:00 (not re-measured here) on Old CPU" in table
    assert "`pipeline_efficiency`, `decode_speedup`." in table
    assert "Kept from the run of 2019-05-06T07:08:09+00:00" in table and "`memory`." in table
    assert table.endswith("## Notes on these figures\n\nHand-written notes.\n") and "old table" not in table
    # A full run's figures are not mixed into a quick run's.
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # as when benchmarks/run.py runs as a script
    quick_run = {"sizes": {"quick": True}, "figures": {"box_sweep": sweep}}
    importlib.import_module("run").keep_in_order(full / "results.json", quick_run)
    assert list(quick_run["figures"]) == ["box_sweep"]


def test_side_by_side_rotates_which_run_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # as when benchmarks/run.py runs as a script
    side_by_side = importlib.import_module("bench_helpers").side_by_side
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = side_by_side(fns, repeats=3, device=torch.device("cpu"), warmup=1)
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    firsts = order[::3]
    assert firsts == ["a", "b", "c", "a"] and sorted(order[3:6]) == ["a", "b", "c"]


def test_results_md_is_the_page_of_results_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed table is what the runner writes for the committed figures, down to the layout."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    bench_markdown = importlib.import_module("bench_markdown")
    results = json.loads((REPO_ROOT / "benchmarks/results.json").read_text(encoding="utf-8"))
    page = (REPO_ROOT / "benchmarks/results.md").read_text(encoding="utf-8")
    generated, heading, _ = page.partition(bench_markdown.NOTES_HEADING)
    assert heading and generated == bench_markdown.markdown(results) + "\n"
