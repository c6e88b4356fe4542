"""examples/quickstart.ipynb: stored without outputs, and runs top to bottom on the synthetic data.

The notebook runs in a real Jupyter kernel (nbclient + ipykernel, from the ``test`` extra). The
kernel is the one ipykernel itself describes, started with this interpreter (``sys.executable``):
kernel specs installed on the machine (a user's ``python3`` pointing at another Python, or the
``python`` on PATH) are not consulted, so a fresh CI venv runs it against its own install.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "examples" / "quickstart.ipynb"
# Seconds any one cell may take; the whole notebook takes about 30 s on two busy CPU cores.
CELL_TIMEOUT = 300


def _load_json() -> dict[str, Any]:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def _source(cell: dict[str, Any]) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _cell_with(cells: list[Any], text: str) -> Any:
    matches = [cell for cell in cells if cell["cell_type"] == "code" and text in _source(cell)]
    assert len(matches) == 1, f"expected one code cell containing {text!r}, found {len(matches)}"
    return matches[0]


def _pngs(cell: Any) -> list[Image.Image]:
    images = []
    for output in cell["outputs"]:
        data = output.get("data", {})
        if "image/png" in data:
            images.append(Image.open(io.BytesIO(base64.b64decode(data["image/png"]))))
    return images


def _text(cell: Any) -> str:
    parts = []
    for output in cell["outputs"]:
        if output["output_type"] == "stream":
            parts.append(output["text"] if isinstance(output["text"], str) else "".join(output["text"]))
        elif "text/plain" in output.get("data", {}):
            parts.append(str(output["data"]["text/plain"]))
    return "".join(parts)


def test_notebook_is_stored_without_outputs() -> None:
    notebook = _load_json()
    assert notebook["nbformat"] == 4
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None, _source(cell)[:80]
    # Every code cell is explained by the markdown cell before it.
    for before, cell in zip(notebook["cells"], notebook["cells"][1:]):
        if cell["cell_type"] == "code":
            assert before["cell_type"] == "markdown", _source(cell)[:80]


def test_notebook_explains_cam_and_the_metrics() -> None:
    text = "\n".join(_source(cell) for cell in _load_json()["cells"] if cell["cell_type"] == "markdown")
    assert r"M_c(x, y) = \sum_k w_k^c" in text
    for metric in ("GT-known Loc", "Top-1 Loc", "MaxBoxAcc", "MaxBoxAccV2"):
        assert f"**{metric}**" in text, metric


def run_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], skip: str | None = None) -> Any:
    """Execute the notebook in a fresh kernel with settings ``env``, leaving out the code cell that contains ``skip``
    (if given); returns the executed notebook."""
    try:
        import nbformat
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
        from nbclient import NotebookClient
    except ImportError as err:
        pytest.fail(f"running the notebook needs nbclient, nbformat and ipykernel ({err}): pip install -e '.[test]'")

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # CI exports MPLBACKEND=Agg; the kernel must keep its inline backend to display figures.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    examples_before = sorted(p.name for p in NOTEBOOK.parent.iterdir())

    # No kernel dirs: only ipykernel's own "python3" spec, which runs sys.executable.
    kernel_manager = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    assert kernel_manager.kernel_spec.argv[0] == sys.executable
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if skip is not None:
        notebook.cells.remove(_cell_with(notebook.cells, skip))
    client = NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raises

    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o["output_type"] == "error"], _source(cell)[:80]
    install = _cell_with(notebook.cells, "%pip install")
    assert "CAM_Stanford_Cars from" in _text(install)
    assert "Successfully installed" not in _text(install)  # installed already: nothing reinstalled
    # Everything went to CAM_QUICKSTART_DIR: nothing in the repository or the working directory.
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == examples_before
    assert not list(workdir.iterdir()), "the notebook wrote into its working directory"
    return notebook


def check_figures_and_metrics(notebook: Any, out_dir: Path, n_test_images: int) -> None:
    overlay = _cell_with(notebook.cells, "visualize_cam(")
    figures = _pngs(overlay)
    assert len(figures) == 1, "the CAM grid should be displayed once"
    assert figures[0].width > 400 and figures[0].height > 200
    saved = out_dir / "cams.png"
    assert saved.is_file() and saved.stat().st_size > 10_000

    table = _text(_cell_with(notebook.cells, "format_metrics_table("))
    for label in ("Top-1 accuracy", "GT-known Loc", "Top-1 Loc", "MaxBoxAcc", "MaxBoxAccV2"):
        assert label in table, label
    assert f"images: {n_test_images} " in table

    curves = _cell_with(notebook.cells, "plot_training_curves(")
    assert len(_pngs(curves)) == 1


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "out"
    notebook = run_notebook(
        tmp_path,
        monkeypatch,
        {
            # A small, one-epoch synthetic run, written under tmp_path only: one validation and one train image per
            # class, and one test image (the CAM grid still shows eight; the methods compare nine, not sixteen).
            "CAM_QUICKSTART_DIR": str(out_dir),
            "CAM_QUICKSTART_DATA": str(tmp_path / "no_real_data"),
            "CAM_QUICKSTART_EPOCHS": "1",
            "CAM_QUICKSTART_TRAIN_PER_CLASS": "2",
            "CAM_QUICKSTART_TEST_PER_CLASS": "1",
            "CAM_QUICKSTART_COMPARE_IMAGES": "2",
        },
    )
    assert "data: synthetic" in _text(_cell_with(notebook.cells, "DOWNLOAD = "))
    check_figures_and_metrics(notebook, out_dir, n_test_images=9)  # 9 BMW 2012 classes x 1 test image
    assert (out_dir / "demo" / "run" / "best.pt").is_file()


@pytest.mark.slow
def test_quickstart_notebook_trains_on_the_real_data_where_present(
    fake_alexnet_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real-data branch: the seed's filters and settings, ImageNet weights from the hub cache."""
    from CAM_Stanford_Cars.synthetic import TINY_CLASS_NAMES, write_synthetic_stanford_cars

    # A Stanford Cars in the real format: the two BMW 2012 sedans and a Jeep the filters leave out. Few images, as
    # the seed's settings train and score at 224 px: one train, one validation and one test image per class.
    real_root = write_synthetic_stanford_cars(
        tmp_path / "real_cars",
        class_names=TINY_CLASS_NAMES,
        n_train_per_class=2,
        n_test_per_class=1,
        image_size=(320, 208),
        seed=0,
    )
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(fake_alexnet_weights, checkpoints / fake_alexnet_weights.name)
    out_dir = tmp_path / "out"
    notebook = run_notebook(
        tmp_path,
        monkeypatch,
        {
            "CAM_QUICKSTART_DIR": str(out_dir),
            "CAM_QUICKSTART_DATA": str(real_root),
            "CAM_QUICKSTART_EPOCHS": "1",
            "TORCH_HOME": str(tmp_path / "torch_home"),
        },
        # The last cell scores CAM methods on whatever checkpoint the cells before made: it ran on the synthetic run's
        # in test_quickstart_notebook_runs_top_to_bottom, and is most of a run's time (RISE's forward passes).
        skip="compare_methods(",
    )
    assert f"data: {real_root}" in _text(_cell_with(notebook.cells, "DOWNLOAD = "))
    check_figures_and_metrics(notebook, out_dir, n_test_images=2)  # the two BMW 2012 sedans x 1 test image
    from CAM_Stanford_Cars.model import load_checkpoint

    _, checkpoint = load_checkpoint(out_dir / "run" / "best.pt")
    assert (checkpoint["car_type"], checkpoint["car_brand"], checkpoint["car_production_year"]) == (
        "Sedan",
        "BMW",
        2012,
    )
    assert checkpoint["args"]["batch_size"] == 4 and checkpoint["args"]["pretrained"] is True
