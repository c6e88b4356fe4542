"""Command line: train a CAM network on Stanford Cars (``torchrun --nproc_per_node N main.py ...`` for N
processes), ``--demo``, ``--list_filters``, ``--evaluate CHECKPOINT``. It only parses arguments; the work
is done by ``train.py`` and ``demo.py``. ``python main.py --help`` lists every flag."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence

# With torch's default spinning wait, its threads stall for whole scheduler slices whenever
# another process holds a core. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _exit_interrupted(*_: object) -> None:
    print("main.py: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


_EXIT_ON_CTRL_C = __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _EXIT_ON_CTRL_C:
    # A KeyboardInterrupt raised inside a library's import can be swallowed there and surface as another error (numpy:
    # "cannot load module more than once"); nothing is written yet, so a Ctrl-C while importing just exits.
    signal.signal(signal.SIGINT, _exit_interrupted)

try:  # imported as a module (the console script), a Ctrl-C while the libraries import is one line too
    if __package__ in (None, ""):
        # Run as a script: make the clone importable as the package, whatever its folder is called.
        import _bootstrap

        _bootstrap.ensure_package()

    from CAM_Stanford_Cars.cams import METHODS
    from CAM_Stanford_Cars.checkpoint import CheckpointError
    from CAM_Stanford_Cars.cli import (
        HelpFormatter,
        OneLineParser,
        bool_flag,
        positive_int,
        pretrained_flag,
        text_list,
        year_list,
    )
    from CAM_Stanford_Cars.compare import compare_methods, format_methods_table
    from CAM_Stanford_Cars.config import SELECT_BY, TrainConfig
    from CAM_Stanford_Cars.data.common import DatasetError
    from CAM_Stanford_Cars.data.names import format_filter_summary
    from CAM_Stanford_Cars.dataset import StanfordCarsCAM
    from CAM_Stanford_Cars.demo import run_demo
    from CAM_Stanford_Cars.distributed import shutdown_distributed
    from CAM_Stanford_Cars.evaluation import PROTOCOLS, evaluate_checkpoint
    from CAM_Stanford_Cars.export import export_onnx
    from CAM_Stanford_Cars.localization import format_metrics_table
    from CAM_Stanford_Cars.model import ARCHS, PretrainedWeightsError
    from CAM_Stanford_Cars.report import check_report_path, write_maps_report, write_report
    from CAM_Stanford_Cars.saved_maps import open_map_folder, score_map_folder
    from CAM_Stanford_Cars.train import NonFiniteLossError, fit
except KeyboardInterrupt:
    _exit_interrupted()
if _EXIT_ON_CTRL_C:
    signal.signal(signal.SIGINT, signal.default_int_handler)

__all__ = [
    "DEFAULTS",
    "check_commands",
    "config_from_args",
    "error_line",
    "get_args_parser",
    "main",
    "run",
    "run_score_maps",
]

DEFAULTS = TrainConfig()
# Failures of the machine rather than of the user's input: exit status 1.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM}


def get_args_parser() -> argparse.ArgumentParser:
    """The parser of ``main.py``, for other launchers to reuse; each training flag's ``dest`` is a field of
    :class:`TrainConfig` (``--root_datasets_dir`` fills ``root``)."""
    parser = OneLineParser(
        prog="main.py",
        formatter_class=HelpFormatter,
        description="Train a GAP-AlexNet with class activation maps on (a filtered) Stanford Cars.",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--root_datasets_dir",
        dest="root",
        default=None,
        metavar="DIR",
        help=f"folder holding Stanford Cars, or where to put it "
        f"(default: {DEFAULTS.root}; for --evaluate, the checkpoint's)",
    )
    data.add_argument(
        "--download_datasets",
        type=bool_flag,
        default=DEFAULTS.download_datasets,
        metavar="BOOL",
        help="fetch Stanford Cars from a public mirror when root holds no readable copy",
    )
    data.add_argument(
        "--car_type",
        type=text_list,
        default=None,
        metavar="TYPE",
        help="body type(s) to keep, e.g. Sedan or Sedan,Coupe (default: all)",
    )
    data.add_argument(
        "--car_brand",
        type=text_list,
        default=None,
        metavar="BRAND",
        help="brand(s) to keep, e.g. BMW or 'Land Rover,Audi' (default: all)",
    )
    data.add_argument(
        "--car_production_year",
        type=year_list,
        default=None,
        metavar="YEAR",
        help="year(s) to keep, e.g. 2012 or 2011,2012 (default: all)",
    )
    data.add_argument(
        "--image_size",
        type=positive_int,
        default=DEFAULTS.image_size,
        help="side of the square images the network sees",
    )
    data.add_argument(
        "--val_fraction",
        type=float,
        default=DEFAULTS.val_fraction,
        help="share of each class's train images held out to choose the best epoch",
    )
    data.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="DataLoader workers (default: 1 on CPU, cores per process - 1 on GPU)",
    )
    data.add_argument(
        "--cache_dir",
        default=None,
        metavar="DIR",
        help="keep decoded images in memory-mapped files here, reused across epochs and runs (default: no cache)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--n_epochs",
        type=positive_int,
        default=DEFAULTS.n_epochs,
        help="number of epochs; with --resume of a finished run, more epochs continue it on the cosine of N epochs",
    )
    train.add_argument(
        "--batch_size", type=positive_int, default=DEFAULTS.batch_size, help="images per batch (per process)"
    )
    train.add_argument(
        "--arch",
        choices=ARCHS,
        default=DEFAULTS.arch,
        help="backbone: the CAM paper's AlexNet-GAP or VGG16-GAP, or a ResNet with layer4 at stride 1",
    )
    train.add_argument(
        "--pretrained",
        type=pretrained_flag,
        default=DEFAULTS.pretrained,
        metavar="BOOL|PATH",
        help="start from torchvision's ImageNet weights of --arch (torch hub cache or download), "
        "a local weights file, or false for scratch",
    )
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default=DEFAULTS.optimizer, help="optimizer")
    train.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate of the new layers")
    train.add_argument(
        "--backbone_lr_scale",
        type=float,
        default=DEFAULTS.backbone_lr_scale,
        help="learning-rate factor of the pretrained layers",
    )
    train.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum (Nesterov)")
    train.add_argument("--weight_decay", type=float, default=DEFAULTS.weight_decay, help="weight decay (not on biases)")
    train.add_argument(
        "--warmup_epochs", type=float, default=DEFAULTS.warmup_epochs, help="linear warm-up before the cosine decay"
    )
    train.add_argument(
        "--label_smoothing", type=float, default=DEFAULTS.label_smoothing, help="label smoothing of the loss"
    )
    train.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seed of the split, order and augmentation (CPU runs repeat exactly)",
    )
    train.add_argument(
        "--device", default=DEFAULTS.device, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    train.add_argument(
        "--amp",
        type=bool_flag,
        default=DEFAULTS.amp,
        metavar="BOOL",
        help="mixed precision on CUDA (bf16 where supported)",
    )
    train.add_argument(
        "--channels_last",
        type=bool_flag,
        default=DEFAULTS.channels_last,
        metavar="BOOL",
        help="channels-last memory format on CUDA",
    )
    train.add_argument(
        "--compile", type=bool_flag, default=DEFAULTS.compile, metavar="BOOL", help="torch.compile the model"
    )
    train.add_argument(
        "--eval_test_every_epoch",
        type=bool_flag,
        default=DEFAULTS.eval_test_every_epoch,
        metavar="BOOL",
        help="also report test metrics each epoch (never used to choose anything)",
    )
    train.add_argument(
        "--select_by",
        choices=SELECT_BY,
        default=DEFAULTS.select_by,
        help="best-epoch rule: validation top-1 (ties: lower val loss) or validation MaxBoxAcc (ties: higher top-1)",
    )
    train.add_argument("--progress", type=bool_flag, default=DEFAULTS.progress, metavar="BOOL", help="progress bars")
    run = parser.add_argument_group("checkpoints and runs")
    run.add_argument(
        "--checkpoints_dir",
        default=DEFAULTS.checkpoints_dir,
        metavar="DIR",
        help="folder for last.pt, best.pt, args.json, metrics.jsonl and plots",
    )
    run.add_argument(
        "--resume", default=None, metavar="PATH", help="continue the run saved in this checkpoint (its last.pt)"
    )
    run.add_argument(
        "--overwrite",
        type=bool_flag,
        default=DEFAULTS.overwrite,
        metavar="BOOL",
        help="start over in a --checkpoints_dir that holds a run, deleting its checkpoints and logs",
    )
    other = parser.add_argument_group("other commands")
    other.add_argument(
        "--demo",
        action="store_true",
        help="write a synthetic Stanford Cars, train on it on CPU, and draw CAMs: no download",
    )
    other.add_argument(
        "--demo_dir",
        default=None,
        metavar="DIR",
        help="folder for the demo's data and run (default: a new temporary folder)",
    )
    other.add_argument(
        "--list_filters",
        action="store_true",
        help="list the brands, types and years in the data, with image counts, and exit",
    )
    other.add_argument(
        "--evaluate",
        default=None,
        metavar="CHECKPOINT",
        help="score a checkpoint's classification and CAM localisation, and exit",
    )
    other.add_argument(
        "--export",
        default=None,
        metavar="CHECKPOINT",
        help="write the checkpoint's network with its CAM as one ONNX graph (--to model.onnx) and model.json beside "
        "it, checked against PyTorch with onnxruntime, and exit",
    )
    other.add_argument("--to", default=None, metavar="PATH.onnx", help="with --export: the ONNX file to write")
    other.add_argument(
        "--score_maps",
        default=None,
        metavar="DIR",
        help="score the maps in DIR (<image_id>.npy per image, any tool's) on the boxes of the --split the filters "
        "select, and exit",
    )
    _add_evaluate_options(other)
    return parser


def _add_evaluate_options(other: argparse._ArgumentGroup) -> None:
    """The options of ``--evaluate``."""
    other.add_argument("--split", choices=("train", "test"), default=None, help="split for --evaluate (default: test)")
    other.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="cam",
        help="how --evaluate scores boxes: this project's (the CAM paper's wording) "
        "or clovaai/wsolevaluation's exactly (needs OpenCV)",
    )
    other.add_argument(
        "--methods",
        type=text_list,
        default=None,
        metavar="NAMES",
        help=f"with --evaluate: score these CAM methods side by side ({', '.join(METHODS)}, or all); scorecam "
        "runs one forward pass per feature channel (1,024 for AlexNet-GAP), so it is by far the slowest",
    )
    other.add_argument(
        "--report",
        default=None,
        metavar="PATH.html",
        help="with --evaluate or --score_maps: also write one self-contained HTML page of every image's CAM, boxes "
        "and scores",
    )
    other.add_argument(
        "--cam_curve_interval",
        type=float,
        choices=(0.01, 0.001),
        default=0.01,
        help="threshold step of --protocol wsolevaluation (0.001: its training default)",
    )
    other.add_argument(
        "--save_maps",
        default=None,
        metavar="DIR",
        help="with --evaluate: also write every image's map as DIR/<method>/<image_id>.npy, with the split's "
        "metadata and predictions.csv in clovaai/wsolevaluation's layout",
    )
    other.add_argument(
        "--predictions",
        default=None,
        metavar="FILE.csv",
        help="with --score_maps: image_id,class rows (a name, or an index of the 196) a classifier predicted, for "
        "Top-1 and Top-1 Loc",
    )
    other.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="with --score_maps: also score GT-known and Top-1 Loc at this CAM threshold",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The library's typed config from the parsed flags (each field is a flag's ``dest``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**values, "root": DEFAULTS.root if values["root"] is None else values["root"]})


def check_commands(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for flags that ask for two commands at once or name an empty path."""
    commands = [
        flag
        for flag, given in (
            ("--demo", args.demo),
            ("--list_filters", args.list_filters),
            ("--evaluate", args.evaluate is not None),
            ("--score_maps", args.score_maps is not None),
            ("--export", args.export is not None),
        )
        if given
    ]
    if len(commands) > 1:
        raise ValueError(f"{' and '.join(commands)} are separate commands; run them one at a time")
    scoring = args.evaluate is not None or args.score_maps is not None
    for flag, given, allowed, of in (
        ("--split", args.split is not None, scoring, "--evaluate or --score_maps"),
        ("--protocol", args.protocol != "cam", scoring, "--evaluate or --score_maps"),
        ("--cam_curve_interval", args.cam_curve_interval != 0.01, scoring, "--evaluate or --score_maps"),
        ("--methods", args.methods is not None, args.evaluate is not None, "--evaluate"),
        ("--report", args.report is not None, scoring, "--evaluate or --score_maps"),
        ("--save_maps", args.save_maps is not None, args.evaluate is not None, "--evaluate"),
        ("--predictions", args.predictions is not None, args.score_maps is not None, "--score_maps"),
        ("--threshold", args.threshold is not None, args.score_maps is not None, "--score_maps"),
        ("--to", args.to is not None, args.export is not None, "--export"),
    ):
        if given and not allowed:
            raise ValueError(f"{flag} is an option of {of}; add it, or leave {flag} out")
    if args.export is not None and args.to is None:
        raise ValueError("--export needs --to PATH.onnx, the file to write (model.json is written beside it)")
    for flag, value in (
        ("--evaluate", args.evaluate),
        ("--export", args.export),
        ("--to", args.to),
        ("--score_maps", args.score_maps),
        ("--save_maps", args.save_maps),
        ("--demo_dir", args.demo_dir),
        ("--cache_dir", args.cache_dir),
    ):
        if value is not None and not value.strip():
            raise ValueError(f"{flag} is empty; pass a path, or leave {flag} out")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the command the flags ask for; returns the exit status."""
    check_commands(args)
    comparison = None
    if args.evaluate is not None and args.methods is not None:
        names = [args.methods] if isinstance(args.methods, str) else args.methods
        comparison = compare_methods(
            args.evaluate,
            args.root,
            args.split or "test",
            METHODS if names == ["all"] else names,
            args.batch_size,
            args.device,
            args.num_workers,
            args.progress,
            save_maps=args.save_maps,
        )
        print(format_methods_table(comparison))
        print("\n".join(f"{kind}: {path}" for kind, path in comparison["files"].items()))
    if args.evaluate is not None and args.report is not None:
        metrics = write_report(
            args.evaluate,
            args.report,
            args.root,
            args.split or "test",
            args.batch_size,
            args.device,
            args.num_workers,
            args.progress,
            methods=comparison,
        )
        print(f"{format_metrics_table(metrics)}\nreport: {metrics['report']} ({metrics['n_cards']} images)")
        return 0
    if comparison is not None:
        return 0
    if args.evaluate is not None:
        metrics = evaluate_checkpoint(
            args.evaluate,
            args.root,
            args.split or "test",
            args.batch_size,
            args.device,
            args.num_workers,
            args.progress,
            args.download_datasets,
            args.protocol,
            args.cam_curve_interval,
            args.save_maps,
        )
        print(format_metrics_table(metrics))
        return 0
    if args.score_maps is not None:
        return run_score_maps(args)
    if args.export is not None:
        result = export_onnx(args.export, args.to)
        print(
            f"ONNX graph: {result['onnx']} (outputs logits and cam; onnxruntime agrees within "
            f"{result['max_relative_error']:.1e})\nits description: {result['json']}"
        )
        return 0
    args.root = DEFAULTS.root if args.root is None else args.root
    if args.list_filters:
        dataset = StanfordCarsCAM(args.root, split="train", download_datasets=args.download_datasets)
        print(format_filter_summary(dataset.root))
        return 0
    if args.demo:
        # The demo has its own settings; --n_epochs, when changed from its default, shortens it.
        n_epochs = None if args.n_epochs == DEFAULTS.n_epochs else args.n_epochs
        result = run_demo(args.demo_dir, progress=args.progress, seed=args.seed, n_epochs=n_epochs, arch=args.arch)
        print(
            f"\nDemo finished. Checkpoint: {result.checkpoint}\nCAM figure: {result.figure}\n"
            f"Run folder: {result.run_dir}"
        )
        return 0
    result = fit(config_from_args(args))
    if result.interrupted:
        return 130
    print(f"\nBest checkpoint: {result.best_checkpoint}\nLast checkpoint: {result.last_checkpoint}")
    return 0


def run_score_maps(args: argparse.Namespace) -> int:
    """``--score_maps DIR``: the maps in DIR scored on the split's boxes, and with ``--report`` their page."""
    if args.report is not None:
        check_report_path(args.report)  # before any work
    filters = {name: getattr(args, name) for name in ("car_type", "car_brand", "car_production_year")}
    root = DEFAULTS.root if args.root is None else args.root
    maps = open_map_folder(args.score_maps, root, args.split or "test", filters, args.predictions, args.image_size)
    scoring = {"batch_size": args.batch_size, "num_workers": args.num_workers, "progress": args.progress}
    if args.report is not None:
        metrics = write_maps_report(
            args.report, maps, args.protocol, args.threshold, cam_curve_interval=args.cam_curve_interval, **scoring
        )
    else:
        metrics = score_map_folder(maps, args.protocol, args.cam_curve_interval, args.threshold, **scoring)
    report = {key: metrics.pop(key) for key in ("report", "n_cards") if key in metrics}
    print(f"{format_metrics_table(metrics)}\nmetrics: {maps.folder / 'metrics.json'}")
    if report:
        print(f"report: {report['report']} ({report['n_cards']} images)")
    return 0


def error_line(err: BaseException) -> str:
    """``err``'s message; for one raised in a DataLoader worker, the worker's own message without torch's traceback."""
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python main.py`` and the ``cam-stanford-cars`` command."""
    args = get_args_parser().parse_args(argv)
    is_main = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s", stream=sys.stdout)
    try:
        return run(args)
    except (
        ValueError,
        OSError,
        ImportError,
        DatasetError,
        CheckpointError,
        PretrainedWeightsError,
        NonFiniteLossError,
    ) as err:
        print(f"main.py: error: {error_line(err)}", file=sys.stderr)
        environment = (
            isinstance(err, NonFiniteLossError | ImportError) or getattr(err, "errno", None) in ENVIRONMENT_ERRNOS
        )
        return 1 if environment else 2
    except KeyboardInterrupt:
        print("main.py: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
