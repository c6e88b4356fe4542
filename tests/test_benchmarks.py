"""The benchmark's quick mode runs end to end and reports every figure with a number (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from CAM_Stanford_Cars.model import ARCHS

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["pipeline_efficiency", "decode_speedup", "cam_overhead", "cam_methods", "backbones", "overlay_speed", "box_sweep", "evaluation_speed", "memory", "thread_split"]


def test_quick_benchmark_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks/run.py"), "--quick", "--repeats", "1", "--device", "cpu",
         "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
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
        assert isinstance(row["measured"], float) and math.isfinite(row["measured"]) and row["measured"] > 0, row
        assert isinstance(row["met"], bool), row
    assert figures["box_sweep"]["equal_to_reference"] is True
    from CAM_Stanford_Cars.cams import METHODS

    assert sorted(figures["cam_methods"]["ms_per_image"]) == sorted(METHODS)
    assert all(math.isfinite(ms) and ms > 0 for ms in figures["cam_methods"]["ms_per_image"].values())
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


def test_side_by_side_rotates_which_run_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_run", REPO_ROOT / "benchmarks/run.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = bench.side_by_side(fns, repeats=3, device=bench.torch.device("cpu"), warmup=1)
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    firsts = order[::3]
    assert firsts == ["a", "b", "c", "a"] and sorted(order[3:6]) == ["a", "b", "c"]
