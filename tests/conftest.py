"""Shared fixtures: tiny seeded models, and no test ever reaches the network."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per test process: the workers share the machine's cores

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if any test opens a network connection (loopback is allowed for gloo)."""
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if (
            self.family == socket.AF_UNIX
            or str(host) in {"127.0.0.1", "localhost", "::1"}
            or str(host).startswith("127.")
        ):
            return real_connect(self, address)
        raise RuntimeError(f"test tried to reach the network ({address!r})")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache per test, so no test depends on what this machine downloaded."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    torch.hub.set_dir(str(home / "hub"))
    return home


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Stanford Cars (8 classes, the two BMW 2012 sedans among them), shared
    read-only by the tests of a session."""
    from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars

    return write_synthetic_stanford_cars(
        tmp_path_factory.mktemp("synthetic_cars"),
        n_train_per_class=6,
        n_test_per_class=3,
        image_size=(320, 208),
        seed=0,
    )


@pytest.fixture
def fake_alexnet_weights(tmp_path: Path) -> Path:
    """A torchvision AlexNet state dict with random values, saved where a local file would be."""
    from torchvision.models import alexnet

    torch.manual_seed(123)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet().state_dict(), path)
    return path


def pytest_report_header(config: pytest.Config) -> str:
    cuda = torch.cuda.is_available()
    return f"torch {torch.__version__}, threads {torch.get_num_threads()}, CUDA {cuda}, CPUs {os.cpu_count()}"


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run on the seed's filters (two BMW 2012 sedans); returns its folder."""
    from CAM_Stanford_Cars.config import TrainConfig
    from CAM_Stanford_Cars.train import fit

    run_dir = tmp_path_factory.mktemp("trained_run")
    fit(
        TrainConfig(
            root=str(synthetic_root),
            checkpoints_dir=str(run_dir),
            car_type="Sedan",
            car_brand="BMW",
            car_production_year=2012,
            n_epochs=1,
            batch_size=4,
            image_size=96,
            pretrained=False,
            device="cpu",
            num_workers=0,
            progress=False,
            seed=0,
        )
    )
    return run_dir


@pytest.fixture
def cam_checkpoint(synthetic_root: Path, tmp_path: Path) -> Path:
    """An untrained checkpoint on the seed's filters (the two BMW 2012 sedans), 64x64 images and 8 CAM channels
    (Score-CAM runs one forward pass per channel)."""
    from CAM_Stanford_Cars.checkpoint import save_checkpoint
    from CAM_Stanford_Cars.dataset import StanfordCarsCAM
    from CAM_Stanford_Cars.model import AlexNetGAP

    filters = {"car_type": "Sedan", "car_brand": "BMW", "car_production_year": 2012}
    classes = StanfordCarsCAM(synthetic_root, split="test", **filters).classes
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=len(classes), cam_channels=8)
    return save_checkpoint(
        tmp_path / "run" / "best.pt",
        model,
        class_names=classes,
        image_size=64,
        args={"root": str(synthetic_root)},
        **filters,
    )
