"""Runs that survive anything: one writer per folder, no lost record, one clear line for every failure."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from CAM_Stanford_Cars import atomic_files as atomic_files_module
from CAM_Stanford_Cars import checkpoint as checkpoint_module
from CAM_Stanford_Cars import train as train_module
from CAM_Stanford_Cars.atomic_files import atomic_file
from CAM_Stanford_Cars.checkpoint import CheckpointError
from CAM_Stanford_Cars.config import TrainConfig
from CAM_Stanford_Cars.data.common import AnnotationError
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.main import main
from CAM_Stanford_Cars.model import load_checkpoint
from CAM_Stanford_Cars.run_folder import RunFolderBusy, best_epoch, hold_run_folder, read_metrics_log
from CAM_Stanford_Cars.train import fit

MAIN = Path(__file__).resolve().parents[1] / "main.py"
SEED_FILTERS = ["--car_type", "Sedan", "--car_brand", "BMW", "--car_production_year", "2012"]


def tiny_config(root: Path, run_dir: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = {
        "root": str(root),
        "checkpoints_dir": str(run_dir),
        "n_epochs": 2,
        "batch_size": 4,
        "image_size": 64,
        "pretrained": False,
        "device": "cpu",
        "num_workers": 0,
        "progress": False,
        "seed": 3,
        "lr": 0.01,
        "car_type": "Sedan",
        "car_brand": "BMW",
        "car_production_year": 2012,
    }
    return TrainConfig(**{**settings, **overrides})


HOLDER = """
import sys, time
from pathlib import Path
from CAM_Stanford_Cars.run_folder import hold_run_folder
with hold_run_folder(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


class Killed(BaseException):
    """A kill -9 at this point: nothing after it runs, no handler sees it."""


def kill_at_call(monkeypatch: pytest.MonkeyPatch, module: object, name: str, call: int) -> None:
    """Make ``module.name`` die (``Killed``) at its ``call``-th call, before doing anything."""
    real, calls = getattr(module, name), [0]

    def dying(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == call:
            raise Killed(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


def corrupt_copy(root: Path, dest: Path) -> Path:
    """A copy of the synthetic data whose train images are cut short (their headers still read)."""
    shutil.copytree(root, dest)
    for image in (dest / "stanford_cars" / "cars_train").glob("*.jpg"):
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 3])
    return dest


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def test_a_second_run_in_a_held_folder_is_refused_naming_the_holder(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # The second run in this process: the lock is the OS's, held by another process either way.
        code = main(
            [
                "--root_datasets_dir",
                str(synthetic_root),
                "--checkpoints_dir",
                str(run_dir),
                "--n_epochs",
                "1",
                "--pretrained",
                "false",
                "--image_size",
                "64",
                "--progress",
                "false",
                *SEED_FILTERS,
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.strip().splitlines() == [err.strip()]
        assert f"in use by another run (process {holder.pid})" in err
        with pytest.raises(RunFolderBusy, match=str(holder.pid)), hold_run_folder(run_dir):
            pass
    finally:
        holder.kill()  # as kill -9: the OS lock dies with its process
        holder.wait()
    with hold_run_folder(run_dir):
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    assert not (run_dir / ".lock").exists()


def test_a_failed_start_leaves_no_folder_and_stale_temp_files_are_removed(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Trabant"):
        fit(tiny_config(synthetic_root, tmp_path / "new", car_brand="Trabant"))
    assert not (tmp_path / "new").exists()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = [
        run_dir / ".last.pt.k3j_x9a1.tmp",
        run_dir / ".metrics.jsonl.abcdefgh.tmp",
        run_dir / ".best_test_metrics.json.01234567.tmp",
    ]
    kept = [run_dir / ".notes.txt.abcdefgh.tmp", run_dir / "mine.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half")
    with hold_run_folder(run_dir):
        pass
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert [p.exists() for p in kept] == [True] * len(kept)


@pytest.mark.parametrize(
    "step, call",
    [
        ("save_checkpoint", 2),  # the second epoch's checkpoint never written
        ("keep_as_best", 2),  # killed while copying the best epoch to best.pt
        ("write_metrics_log", 2),  # last.pt saved, its log line lost
        ("plot_training_curves", 1),
    ],
)
def test_a_kill_at_any_write_step_is_repaired_by_resume(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, call: int
) -> None:
    run_dir = tmp_path / "run"
    config = tiny_config(
        synthetic_root, run_dir, n_epochs=3, val_fraction=0.0
    )  # no validation: every epoch is the best so far
    with monkeypatch.context() as patch:
        kill_at_call(patch, train_module, step, call)
        with pytest.raises(Killed):
            fit(config)
    _, last = load_checkpoint(run_dir / "last.pt")
    result = fit(tiny_config(synthetic_root, run_dir, n_epochs=3, val_fraction=0.0, resume=str(run_dir / "last.pt")))
    log = read_metrics_log(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    _, best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == best_epoch(log) == 3
    assert json.loads((run_dir / "test_metrics.json").read_text())["epoch"] == 3
    assert last["epoch"] in (1, 2)


def test_a_kill_before_best_pt_is_copied_is_repaired(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        kill_at_call(patch, train_module, "keep_as_best", 2)
        with pytest.raises(Killed):
            fit(tiny_config(synthetic_root, run_dir, n_epochs=3, val_fraction=0.0))
    _, best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == 1  # one epoch behind the run's record
    # The repair happens at the start of the resume, before any training.
    with monkeypatch.context() as patch:
        kill_at_call(patch, train_module, "train_one_epoch", 1)
        with pytest.raises(Killed):
            fit(tiny_config(synthetic_root, run_dir, n_epochs=3, val_fraction=0.0, resume=str(run_dir / "last.pt")))
    _, best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == 2
    assert [r["epoch"] for r in read_metrics_log(run_dir / "metrics.jsonl")] == [1, 2]


def test_resume_finishes_a_run_killed_before_its_test(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        kill_at_call(patch, train_module._Run, "test_best", 1)
        with pytest.raises(Killed):
            fit(tiny_config(synthetic_root, run_dir, n_epochs=1))
    assert not (run_dir / "test_metrics.json").exists()
    (run_dir / "training_curves.png").unlink()
    before = (run_dir / "last.pt").read_bytes()
    code = main(
        [
            "--root_datasets_dir",
            str(synthetic_root),
            "--checkpoints_dir",
            str(run_dir),
            "--n_epochs",
            "1",
            "--batch_size",
            "4",
            "--image_size",
            "64",
            "--pretrained",
            "false",
            "--device",
            "cpu",
            "--num_workers",
            "0",
            "--progress",
            "false",
            "--seed",
            "3",
            "--lr",
            "0.01",
            "--resume",
            str(run_dir / "last.pt"),
            *SEED_FILTERS,
        ]
    )
    assert code == 0
    assert json.loads((run_dir / "test_metrics.json").read_text())["epoch"] == 1
    assert (run_dir / "training_curves.png").is_file()
    assert (run_dir / "last.pt").read_bytes() == before  # no epoch trained again
    with pytest.raises(ValueError, match="already finished all 1 epochs and its tests"):
        fit(tiny_config(synthetic_root, run_dir, n_epochs=1, resume=str(run_dir / "last.pt")))


def test_overwrite_keeps_the_old_run_until_the_new_one_saves(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fit(tiny_config(synthetic_root, run_dir, n_epochs=1))
    old = run_files(run_dir)
    bad_root = corrupt_copy(synthetic_root, tmp_path / "bad")
    with pytest.raises(Exception, match="cannot decode image file"):
        fit(tiny_config(bad_root, run_dir, n_epochs=1, overwrite=True))
    assert run_files(run_dir) == old
    # A failed resume leaves everything as it was too, args.json included.
    with pytest.raises(ValueError, match="lr=0.01"):
        fit(tiny_config(synthetic_root, run_dir, n_epochs=1, lr=0.5, resume=str(run_dir / "last.pt")))
    assert run_files(run_dir) == old
    fit(tiny_config(synthetic_root, run_dir, n_epochs=1, seed=4, overwrite=True))
    assert json.loads((run_dir / "args.json").read_text())["seed"] == 4


@pytest.mark.slow
def test_a_corrupt_image_in_a_loader_worker_is_one_line(synthetic_root: Path, tmp_path: Path) -> None:
    bad_root = corrupt_copy(synthetic_root, tmp_path / "bad")
    result = subprocess.run(
        [
            sys.executable,
            str(MAIN),
            "--root_datasets_dir",
            str(bad_root),
            "--checkpoints_dir",
            str(tmp_path / "run"),
            "--n_epochs",
            "1",
            "--pretrained",
            "false",
            "--image_size",
            "64",
            "--num_workers",
            "1",
            "--progress",
            "false",
            *SEED_FILTERS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("main.py: error: cannot decode image file") and ".jpg" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_full_disk_is_one_line_exit_1_and_keeps_the_saved_checkpoints(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    real_save, calls = torch.save, [0]

    def save_on_a_filling_disk(obj: object, handle: io.BufferedWriter, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 2:
            handle.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_on_a_filling_disk)
    code = main(
        [
            "--root_datasets_dir",
            str(synthetic_root),
            "--checkpoints_dir",
            str(run_dir),
            "--n_epochs",
            "2",
            "--batch_size",
            "4",
            "--image_size",
            "64",
            "--pretrained",
            "false",
            "--device",
            "cpu",
            "--num_workers",
            "0",
            "--progress",
            "false",
            *SEED_FILTERS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        f"main.py: error: could not write {str(run_dir / 'last.pt')!r}: No space left on device; choose another path"
    ]
    _, last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))


def test_a_writer_that_hides_the_disk_error_still_gives_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def buffered_on_a_full_disk(fd: int, mode: str, **kwargs: object) -> io.BufferedWriter:
        os.close(fd)
        return io.BufferedWriter(FullDisk())

    monkeypatch.setattr(atomic_files_module.os, "fdopen", buffered_on_a_full_disk)
    target = tmp_path / "x.pt"

    def save_as_torch_does() -> None:
        with atomic_file(target) as handle:
            handle.write(b"buffered bytes")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(OSError, match="No space left on device") as caught:
        save_as_torch_does()
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_error_behind_another_error_is_found(tmp_path: Path) -> None:
    target = tmp_path / "x.pt"

    def save_as_torch_does() -> None:
        with atomic_file(target) as handle:
            try:  # as torch.save: write_record fails, then its zip writer's exit raises over it
                handle.write(b"PK")
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:672] . unexpected pos 29216384 vs 29216272"
                ) from None

    with pytest.raises(OSError, match="No space left on device") as caught:
        save_as_torch_does()
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="not about the disk"), atomic_file(target):
        raise RuntimeError("not about the disk")


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_an_early_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, delay: float) -> None:
    process = subprocess.Popen(
        [sys.executable, str(MAIN), "--demo", "--demo_dir", str(tmp_path / "demo"), "--progress", "false"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)  # while Python starts and the libraries import
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["main.py: interrupted"], err


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("container", ["bare", "torch"])
def test_a_malicious_pickle_of_any_protocol_is_refused(tmp_path: Path, protocol: int, container: str) -> None:
    path = tmp_path / "evil.pt"
    if container == "bare":
        path.write_bytes(pickle.dumps({"model": _Evil()}, protocol=protocol))
    else:
        if protocol < 2:
            pytest.skip("torch.save writes protocol 2 or later")
        torch.save({"model": _Evil()}, path, pickle_protocol=protocol)
    with pytest.raises(CheckpointError, match=r"refused to load .*such as (posix|nt)\.system\. Nothing in it was run"):
        load_checkpoint(path)


def rewrite_train_boxes(root: Path, dest: Path, edit: dict[int, dict[str, int]]) -> Path:
    """A copy of ``root`` whose train annotations ``edit`` changes ({record: {field: 1-based value}})."""
    import scipy.io as sio

    shutil.copytree(root, dest)
    mat = dest / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    annotations = sio.loadmat(mat)["annotations"]
    for record, fields in edit.items():
        for name, value in fields.items():
            annotations[0, record][name] = np.array([[value]])
    sio.savemat(mat, {"annotations": annotations})
    return dest


def train_image(root: Path, record: int) -> tuple[str, tuple[int, int]]:
    import scipy.io as sio

    name = str(
        sio.loadmat(root / "stanford_cars" / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"][record][
            "fname"
        ]
    )
    with Image.open(root / "stanford_cars" / "cars_train" / name) as image:
        return name, image.size


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"bbox_x1": 50, "bbox_x2": 20}, "is inverted"),
        ({"bbox_y1": 10_000, "bbox_y2": 10_050}, "lies wholly outside the image"),
    ],
)
def test_bad_boxes_are_caught_when_the_annotations_are_read(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict[str, int], problem: str
) -> None:
    root = rewrite_train_boxes(synthetic_root, tmp_path / "data", {3: fields})
    name, _ = train_image(root, 3)
    with pytest.raises(
        AnnotationError, match=rf"cars_train_annos\.mat: the box of .*{name} \(bbox_x1\.\.y2 = .*\) {problem}"
    ):
        StanfordCarsCAM(root, split="train")
    code = main(
        [
            "--root_datasets_dir",
            str(root),
            "--checkpoints_dir",
            str(tmp_path / "run"),
            "--pretrained",
            "false",
            "--progress",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and problem in err, err


def test_boxes_partly_outside_are_clipped_with_one_warning(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, (width, _) = train_image(synthetic_root, 0)
    root = rewrite_train_boxes(
        synthetic_root, tmp_path / "data", {0: {"bbox_x2": width + 30}, 1: {"bbox_y1": 0, "bbox_y2": 10_000}}
    )
    with caplog.at_level(logging.WARNING):
        cars = StanfordCarsCAM(root, split="train")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 box(es) reach outside their image and were clipped" in warnings[0]
    names = [Path(path).name for path, _ in cars.samples]
    first, second = names.index(train_image(root, 0)[0]), names.index(train_image(root, 1)[0])
    assert cars.boxes[first][2] == width
    assert cars.boxes[second][1] == 0 and cars.boxes[second][3] == train_image(root, 1)[1][1]
