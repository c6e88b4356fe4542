"""Training: the seed's command, resuming, seeds, distributed runs and bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from CAM_Stanford_Cars import atomic_files as atomic_files_module
from CAM_Stanford_Cars import evaluation as evaluation_module
from CAM_Stanford_Cars import runtime as runtime_module
from CAM_Stanford_Cars import train as train_module
from CAM_Stanford_Cars.config import TrainConfig
from CAM_Stanford_Cars.dataset import stratified_split
from CAM_Stanford_Cars.distributed import DistInfo
from CAM_Stanford_Cars.main import config_from_args, get_args_parser
from CAM_Stanford_Cars.model import load_checkpoint
from CAM_Stanford_Cars.run_folder import epoch_score, read_metrics_log
from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars
from CAM_Stanford_Cars.train import NonFiniteLossError, build_scheduler, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = REPO_ROOT / "main.py"
SEED_CLASSES = ("BMW 3 Series Sedan 2012", "BMW ActiveHybrid 5 Sedan 2012")
SEED_FILTERS = ["--car_type", "Sedan", "--car_brand", "BMW", "--car_production_year", "2012"]


def tiny_config(root: Path, run_dir: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = dict(
        root=str(root),
        checkpoints_dir=str(run_dir),
        n_epochs=2,
        batch_size=4,
        image_size=64,
        pretrained=False,
        device="cpu",
        num_workers=0,
        progress=False,
        seed=3,
        lr=0.01,
        car_type="Sedan",
        car_brand="BMW",
        car_production_year=2012,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def one_epoch(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> train_module.RunResult:
    """One epoch of ``tiny_config``, read only: the run other tests compare theirs with."""
    return fit(tiny_config(synthetic_root, tmp_path_factory.mktemp("one_epoch"), n_epochs=1))


@pytest.fixture(scope="module")
def two_epochs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> train_module.RunResult:
    """Two uninterrupted epochs of ``tiny_config``, read only."""
    return fit(tiny_config(synthetic_root, tmp_path_factory.mktemp("two_epochs")))


def main_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(args)`` in this process (no interpreter start-up): its exit status, stdout and stderr."""
    from CAM_Stanford_Cars.main import main

    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors and --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_main(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(MAIN), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


def hub_cache_with_fake_weights(tmp_path: Path, weights: Path) -> Path:
    """A TORCH_HOME whose hub cache holds (random) ImageNet AlexNet weights."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(weights, home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    return home


@pytest.mark.slow
def test_the_seeds_command_runs_one_epoch(synthetic_root: Path, tmp_path: Path, fake_alexnet_weights: Path) -> None:
    """The README's training command, paths changed; ImageNet weights come from the hub cache."""
    run_dir = tmp_path / "path" / "to" / "checkpoints"
    home = hub_cache_with_fake_weights(tmp_path, fake_alexnet_weights)
    result = run_main(
        [
            "--n_epochs",
            "1",
            "--batch_size",
            "4",
            "--checkpoints_dir",
            str(run_dir),
            "--download_datasets",
            "true",
            "--root_datasets_dir",
            str(synthetic_root),
            *SEED_FILTERS,
            "--image_size",
            "64",
            "--num_workers",
            "0",
        ],
        cwd=tmp_path,
        env_extra={"TORCH_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    assert {"last.pt", "best.pt", "args.json", "metrics.jsonl", "training_curves.png", "test_metrics.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    model, checkpoint = load_checkpoint(run_dir / "best.pt")
    assert (
        checkpoint["car_type"] == "Sedan"
        and checkpoint["car_brand"] == "BMW"
        and checkpoint["car_production_year"] == 2012
    )
    assert checkpoint["class_names"] == ["BMW ActiveHybrid 5 Sedan 2012", "BMW 3 Series Sedan 2012"]
    assert model.fc.out_features == 2
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and 0.0 <= record["val_top1"] <= 1.0 and "val_maxboxacc" in record
    test_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert test_metrics["n_images"] > 0 and "maxboxacc_v2" in test_metrics


def test_same_seed_same_metrics(synthetic_root: Path, tmp_path: Path, one_epoch: train_module.RunResult) -> None:
    first = one_epoch
    second = fit(tiny_config(synthetic_root, tmp_path / "b", n_epochs=1))
    other = fit(tiny_config(synthetic_root, tmp_path / "c", n_epochs=1, seed=4))
    keys = ("train_loss", "train_top1", "val_loss", "val_top1")
    assert [first.history[0][k] for k in keys] == [second.history[0][k] for k in keys]
    assert first.history[0]["train_loss"] != other.history[0]["train_loss"]


# 10 train images at batch 4 make 3 steps an epoch: stop mid-epoch 1, at its end, mid-epoch 2.
@pytest.mark.parametrize("stop_after_steps", [2, 3, 4])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    synthetic_root: Path, tmp_path: Path, two_epochs: train_module.RunResult, stop_after_steps: int
) -> None:
    whole = two_epochs
    assert not whole.interrupted

    part_dir = tmp_path / "parts"
    first = fit(tiny_config(synthetic_root, part_dir), stop_after_steps=stop_after_steps)
    assert first.interrupted
    resumed = fit(tiny_config(synthetic_root, part_dir, resume=str(part_dir / "last.pt")))
    assert not resumed.interrupted

    a, _ = load_checkpoint(whole.last_checkpoint)
    b, checkpoint = load_checkpoint(resumed.last_checkpoint)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert checkpoint["epoch"] == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"], rel=1e-9)


def test_resume_refuses_a_different_run(synthetic_root: Path, tmp_path: Path) -> None:
    first = fit(tiny_config(synthetic_root, tmp_path / "r", n_epochs=2), stop_after_steps=2)
    with pytest.raises(ValueError, match="batch_size=4.*same value"):
        fit(tiny_config(synthetic_root, tmp_path / "r", batch_size=2, resume=str(first.last_checkpoint)))
    # The optimizer's saved state was built with these; a new value would be silently ignored.
    with pytest.raises(ValueError, match="lr=0.01.*same value"):
        fit(tiny_config(synthetic_root, tmp_path / "r", lr=0.5, resume=str(first.last_checkpoint)))
    # The saved best score was judged by the run's rule.
    with pytest.raises(ValueError, match="select_by='val_top1'.*same value"):
        fit(tiny_config(synthetic_root, tmp_path / "r", select_by="val_maxboxacc", resume=str(first.last_checkpoint)))
    # A checkpoint resumes the run in its own folder only.
    with pytest.raises(ValueError, match="--checkpoints_dir"):
        fit(tiny_config(synthetic_root, tmp_path / "elsewhere", resume=str(first.last_checkpoint)))
    assert not (tmp_path / "elsewhere").exists()


def test_a_new_run_keeps_off_an_earlier_run_unless_told_to_start_over(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    first = fit(tiny_config(synthetic_root, run_dir, n_epochs=1))
    before = first.last_checkpoint.read_bytes()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite true"):
        fit(tiny_config(synthetic_root, run_dir, n_epochs=1, seed=4))
    assert first.last_checkpoint.read_bytes() == before
    # A finished run has nothing left to resume.
    with pytest.raises(ValueError, match="already finished all 1 epochs.*--evaluate"):
        fit(tiny_config(synthetic_root, run_dir, n_epochs=1, resume=str(first.last_checkpoint)))
    # Starting over removes the earlier run's files, and only those.
    (run_dir / "best_test_metrics.json").write_text("{}")
    (run_dir / "notes.txt").write_text("mine")
    fit(tiny_config(synthetic_root, run_dir, n_epochs=1, seed=4, overwrite=True))
    assert not (run_dir / "best_test_metrics.json").exists()
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert first.last_checkpoint.read_bytes() != before
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "setting, value, named",
    [
        ("lr", float("inf"), "--lr must be a finite positive number"),
        ("momentum", -0.5, "--momentum must lie in"),
        ("momentum", float("nan"), "--momentum must lie in"),
        ("weight_decay", float("inf"), "--weight_decay"),
        ("warmup_epochs", float("inf"), "--warmup_epochs must be a finite"),
        ("backbone_lr_scale", float("nan"), "--backbone_lr_scale"),
        ("seed", 10**23, "--seed must be a whole number in"),
        ("image_size", 10_000, "--image_size must be at most 1024"),
        ("num_workers", 10_000, "--num_workers 10000 is far more"),
        ("checkpoints_dir", " ", "--checkpoints_dir is empty"),
        ("resume", "", "--resume is empty"),
        ("select_by", "val_top5", "--select_by must be val_top1 or val_maxboxacc"),
    ],
)
def test_settings_that_cannot_work_are_named_before_anything_runs(
    synthetic_root: Path, tmp_path: Path, setting: str, value: object, named: str
) -> None:
    config = tiny_config(synthetic_root, tmp_path / "r", **{setting: value})
    with pytest.raises(ValueError, match=named):
        fit(config)
    assert not (tmp_path / "r").exists()


def test_a_gpu_index_under_torchrun_is_refused(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cuda:1 puts every process on one GPU.*LOCAL_RANK"):
        fit(tiny_config(synthetic_root, tmp_path / "r", device="cuda:1"))


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_gpus_that_only_emulate_bf16_get_fp16_and_a_scaler(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: torch.dtype
) -> None:
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native_bf16 or including_emulation  # a T4 or V100 "supports" bf16 by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    assert runtime_module.amp_dtype(torch.device("cuda", 0)) == expected
    assert asked == [False]
    assert runtime_module.amp_dtype(torch.device("cpu")) is None


def test_a_damaged_metrics_log_is_named(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2, "lo')
    with pytest.raises(ValueError, match="metrics.jsonl' is damaged.*line 2"):
        read_metrics_log(log)


def test_evaluate_says_before_scoring_when_the_checkpoint_folder_is_not_writable(
    trained_run: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic_files_module.tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(evaluation_module, "evaluate", lambda *a, **k: pytest.fail("scored before checking the folder"))
    with pytest.raises(ValueError, match="best_test_metrics.json.*not writable.*Operation not permitted"):
        evaluation_module.evaluate_checkpoint(trained_run / "best.pt", root=synthetic_root, progress=False)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "nan"
    first = fit(tiny_config(synthetic_root, run_dir), stop_after_steps=1)
    assert first.interrupted
    good = (run_dir / "last.pt").read_bytes()

    class ExplodingLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return super().forward(logits, labels) * float("nan")

    monkeypatch.setattr(train_module.nn, "CrossEntropyLoss", ExplodingLoss)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        fit(tiny_config(synthetic_root, run_dir, resume=str(run_dir / "last.pt")))
    assert (run_dir / "last.pt").read_bytes() == good


def test_the_best_epoch_rule_is_named_and_val_maxboxacc_can_pick_another_epoch() -> None:
    epochs = [
        {"epoch": 1, "val_top1": 0.8, "val_loss": 0.50, "val_maxboxacc": 0.4},
        {"epoch": 2, "val_top1": 0.7, "val_loss": 0.60, "val_maxboxacc": 0.6},
        {"epoch": 3, "val_top1": 0.8, "val_loss": 0.45, "val_maxboxacc": 0.5},  # top-1 ties epoch 1, lower loss
        {"epoch": 4, "val_top1": 0.75, "val_loss": 0.70, "val_maxboxacc": 0.6},  # MaxBoxAcc ties epoch 2, higher top-1
    ]

    def best(select_by: str) -> int:
        return max(epochs, key=lambda record: epoch_score(record, select_by))["epoch"]

    assert best("val_top1") == 3
    assert best("val_maxboxacc") == 4
    # Without a validation split the latest epoch is the best, whatever the rule.
    assert epoch_score({"epoch": 5}, "val_maxboxacc") > epoch_score({"epoch": 4}, "val_maxboxacc")


def test_the_parser_fills_the_config_directly() -> None:
    parser = get_args_parser()
    default = config_from_args(parser.parse_args([]))
    assert default == TrainConfig() and default.select_by == "val_top1"
    config = config_from_args(
        parser.parse_args(["--select_by", "val_maxboxacc", "--root_datasets_dir", "cars", "--car_brand", "BMW,Audi"])
    )
    assert config.select_by == "val_maxboxacc" and config.root == "cars" and config.car_brand == ["BMW", "Audi"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--select_by", "val_top5"])


def test_stratified_split_keeps_every_class_on_both_sides() -> None:
    targets = [0] * 10 + [1] * 3 + [2] * 2
    train_idx, val_idx = stratified_split(targets, 0.2, seed=0)
    assert sorted(train_idx + val_idx) == list(range(15))
    assert {targets[i] for i in val_idx} == {0, 1, 2} == {targets[i] for i in train_idx}
    assert sum(targets[i] == 0 for i in val_idx) == 2
    assert stratified_split(targets, 0.2, seed=0) == (train_idx, val_idx)
    assert stratified_split(targets, 0.0, seed=0) == (list(range(15)), [])


def test_schedule_warms_up_then_decays_to_zero() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01)
    assert rates[2] == pytest.approx(1.0)
    assert all(rates[i] >= rates[i + 1] for i in range(2, len(rates) - 1))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


DDP_SCRIPT = """
import json, sys
from CAM_Stanford_Cars.config import TrainConfig
from CAM_Stanford_Cars.train import fit
for settings in json.loads(sys.argv[1]):
    stop = settings.pop("stop_after_steps")
    fit(TrainConfig(**settings), stop_after_steps=stop)
"""


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS``, as ``python -m torch.distributed.run``; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_two_ranks(tmp_path: Path, *runs: dict[str, object]) -> None:
    """One ``torchrun`` of two processes that run ``fit`` for each of ``runs`` in turn (each launch imports torch
    anew in three processes, which takes longer than these tiny runs)."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    torchrun(tmp_path, str(script), json.dumps(runs))


@pytest.mark.slow
def test_two_processes_with_gloo_resume_mid_epoch_as_if_never_stopped(tmp_path: Path) -> None:
    """Two ranks over gloo: a run stopped mid-epoch, resumed by the README's torchrun command (plus --resume), ends
    as the uninterrupted run does, and each epoch is one process's epoch split between the ranks."""
    # 24 train images (13 per class, one of each held out) at batch 1: 12 steps per rank, so the ranks agree to stop
    # at step 10, mid-epoch, with two steps left for the resumed run.
    root = write_synthetic_stanford_cars(
        tmp_path / "cars",
        class_names=SEED_CLASSES,
        n_train_per_class=13,
        n_test_per_class=1,
        image_size=(96, 64),
        seed=1,
    )
    settings: dict[str, object] = dict(
        root=str(root),
        car_type="Sedan",
        car_brand="BMW",
        car_production_year=2012,
        n_epochs=1,
        batch_size=1,
        image_size=64,
        pretrained=False,
        device="cpu",
        num_workers=0,
        progress=False,
        seed=5,
        lr=0.01,
        stop_after_steps=None,
    )
    # The uninterrupted run and the stopped one share a launch; the resumed run starts in new processes.
    stopped = tmp_path / "stopped"
    run_two_ranks(
        tmp_path,
        {**settings, "checkpoints_dir": str(tmp_path / "whole")},
        {**settings, "checkpoints_dir": str(stopped), "stop_after_steps": 1},
    )
    _, partial = load_checkpoint(stopped / "last.pt")
    assert partial["epoch_progress"]["step"] == 10
    # The saved running sums count both ranks' images, and each rank's RNG state is kept.
    assert partial["epoch_progress"]["sums"][2] == 20
    assert len(partial["rng_states"]) == 2
    assert read_metrics_log(stopped / "metrics.jsonl") == []  # stopped inside epoch 1
    args = [
        "--n_epochs",
        "1",
        "--batch_size",
        "1",
        "--checkpoints_dir",
        str(stopped),
        "--root_datasets_dir",
        str(root),
        *SEED_FILTERS,
        "--image_size",
        "64",
        "--num_workers",
        "0",
        "--pretrained",
        "false",
        "--device",
        "cpu",
        "--progress",
        "false",
        "--seed",
        "5",
        "--lr",
        "0.01",
        "--resume",
        str(stopped / "last.pt"),
    ]
    result = torchrun(tmp_path, str(MAIN), *args)
    # Only rank 0 writes and logs: one summary line, one metrics record.
    assert result.stdout.count("epoch 1/1") == 1
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1

    whole_model, whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    resumed_model, resumed = load_checkpoint(stopped / "last.pt")
    assert resumed["world_size"] == 2
    assert whole["metrics"]["train_images"] == 24  # 12 steps per rank: the stop at step 10 was mid-epoch
    for key in ("train_loss", "train_top1", "train_images", "val_loss", "val_top1"):
        assert resumed["metrics"][key] == whole["metrics"][key], key
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    # Same semantics as one process: every train image seen once per epoch (padded to the ranks),
    # and ceil(n / (2 * batch)) steps.
    single_settings = {key: value for key, value in settings.items() if key != "stop_after_steps"}
    single = fit(TrainConfig(**single_settings, checkpoints_dir=str(tmp_path / "single")))
    n_train = single.history[0]["train_images"]
    assert records[0]["train_images"] == n_train + (n_train % 2)
    steps_ddp = resumed["lr_scheduler"]["last_epoch"]
    assert steps_ddp == -(-n_train // 2)
    assert records[0]["val_n_images"] == single.history[0]["val_n_images"]


BAD_INPUTS = [
    (["--car_brand", "Trabant"], "Trabant"),
    (["--batch_size", "-4"], "--batch_size"),
    (["--car_production_year", "twenty"], "twenty"),
    (["--download_datasets", "maybe"], "maybe"),
    (["--warmup_epochs", "inf"], "--warmup_epochs"),
]


@pytest.mark.parametrize("args, named", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_exit_2(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    # In this process: the exit status and the message are main()'s and argparse's, wherever they run; a real
    # `python main.py` is refused bad input in test_missing_data_without_download_says_how_to_get_it.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"precious")
    code, _, err = main_in_process(
        [
            "--root_datasets_dir",
            str(synthetic_root),
            "--checkpoints_dir",
            str(run_dir),
            "--pretrained",
            "false",
            "--overwrite",
            "true",
            *args,
        ],
        capsys,
    )
    assert code == 2, err
    assert "Traceback" not in err
    assert named in err
    assert (run_dir / "last.pt").read_bytes() == b"precious"
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.pt"]


def test_classes_without_train_images_are_refused(synthetic_root: Path, tmp_path: Path) -> None:
    # The synthetic set lists all 196 names but has images for 8 classes only.
    with pytest.raises(ValueError, match="have no train images.*narrow"):
        fit(tiny_config(synthetic_root, tmp_path / "run", car_type=None, car_brand=None, car_production_year=None))
    assert not (tmp_path / "run").exists()


def test_missing_data_without_download_says_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--root_datasets_dir", str(tmp_path / "nothing_here"), "--checkpoints_dir", str(tmp_path / "run")]
    code, _, err = main_in_process(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert "nothing_here" in err and "--download_datasets" in err
    assert not (tmp_path / "run").exists()


def test_unwritable_checkpoint_folder(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = main_in_process(
        [
            "--root_datasets_dir",
            str(synthetic_root),
            "--checkpoints_dir",
            str(blocker / "run"),
            "--pretrained",
            "false",
            *SEED_FILTERS,
        ],
        capsys,
    )
    assert code == 2
    assert "not writable" in err and "Traceback" not in err


def test_help_reads_as_documentation(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main_in_process(["--help"], capsys)
    assert code == 0
    for flag in (
        "--n_epochs",
        "--car_production_year",
        "--download_datasets",
        "--resume",
        "--demo",
        "--list_filters",
        "--evaluate",
    ):
        assert flag in out
    assert "(default: 30)" in out


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        "--n_epochs",
        "200",
        "--batch_size",
        "2",
        "--checkpoints_dir",
        str(run_dir),
        "--root_datasets_dir",
        str(synthetic_root),
        "--image_size",
        "64",
        "--num_workers",
        "0",
        "--pretrained",
        "false",
        "--progress",
        "false",
        "--val_fraction",
        "0",
        *SEED_FILTERS,
    ]
    process = subprocess.Popen(
        [sys.executable, str(MAIN), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "--resume" in output and "Traceback" not in output
    _, checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint["epoch_progress"] is not None or checkpoint["epoch"] >= 1


def test_collate_in_the_training_process_equals_default_collate() -> None:
    torch.manual_seed(0)
    items = [(torch.rand(3, 8, 8), i, torch.rand(4)) for i in range(5)]
    ours = runtime_module.collate_batch(items)
    reference = torch.utils.data.default_collate(items)
    assert len(ours) == len(reference) == 3
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_loader_defaults_match_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    single = DistInfo()
    assert runtime_module.default_num_workers(single, torch.device("cpu")) == runtime_module.CPU_LOADER_WORKERS
    assert runtime_module.default_num_workers(single, torch.device("cuda")) == 1  # one core left for the step
    threads = torch.get_num_threads()
    try:
        assert runtime_module.configure_cpu_threads(single, torch.device("cpu")) == 2
        assert runtime_module.configure_cpu_threads(DistInfo(0, 2, 0), torch.device("cpu")) == 1
    finally:
        torch.set_num_threads(threads)


def test_training_with_an_image_cache_gives_the_same_run(
    synthetic_root: Path, tmp_path: Path, one_epoch: train_module.RunResult
) -> None:
    plain = one_epoch
    cached = fit(tiny_config(synthetic_root, tmp_path / "cached", n_epochs=1, cache_dir=str(tmp_path / "cache")))
    assert list((tmp_path / "cache").glob("*.npy"))
    assert plain.history[0]["train_loss"] == cached.history[0]["train_loss"]
    assert plain.test_metrics["top1"] == cached.test_metrics["top1"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(synthetic_root: Path, tmp_path: Path) -> None:
    # Batches of 2 split the 10 train, 2 validation and 6 test images evenly: one compilation, where a last batch of
    # another size would make torch.compile compile the network a second time (as long again on a CPU).
    eager = fit(tiny_config(synthetic_root, tmp_path / "eager", n_epochs=1, batch_size=2))
    compiled = fit(tiny_config(synthetic_root, tmp_path / "compiled", n_epochs=1, batch_size=2, compile=True))
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-4)
    assert compiled.test_metrics["maxboxacc"] == pytest.approx(eager.test_metrics["maxboxacc"], abs=1e-6)
    # The checkpoint holds the bare model's keys, loadable without torch.compile.
    model, checkpoint = load_checkpoint(compiled.best_checkpoint)
    assert checkpoint["args"]["compile"] is True
    assert not any("_orig_mod" in key or key.startswith("module.") for key in checkpoint["model"])
    eager_model, _ = load_checkpoint(eager.best_checkpoint)
    for name, tensor in eager_model.state_dict().items():
        assert torch.allclose(tensor, model.state_dict()[name], atol=1e-5), name
