"""The exported CAM (``python main.py --export``): images/s of the ONNX graph in onnxruntime against the PyTorch model
(``model(images, True)``: logits and CAM) on the CPU, batch 1 and 32, side by side."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench_helpers import Sizes, side_by_side
from bench_train_step import new_model
from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.export import export_onnx

BATCHES = (1, 32)


def onnx_speed(sizes: Sizes) -> dict[str, Any]:
    """``value``: onnxruntime's images/s over PyTorch's at batch 32 (CPU, one process, the machine's threads)."""
    import onnxruntime

    model = new_model(196, torch.device("cpu")).eval()
    s = sizes.image_size
    with tempfile.TemporaryDirectory(prefix="cam_export_") as scratch:
        checkpoint = save_checkpoint(
            Path(scratch) / "best.pt", model, class_names=[f"class {k}" for k in range(196)], image_size=s
        )
        exported = export_onnx(checkpoint, Path(scratch) / "model.onnx")
        session = onnxruntime.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
        rates: dict[str, dict[str, float]] = {}
        for batch in (min(b, sizes.export_max_batch) for b in BATCHES):
            images = torch.rand(batch, 3, s, s, generator=torch.Generator().manual_seed(batch))
            array = images.numpy()

            def torch_run(images: torch.Tensor = images) -> None:
                with torch.inference_mode():
                    model(images, True, check_input=False)

            def onnx_run(array: Any = array) -> None:
                session.run(["logits", "cam"], {"images": array})

            times = side_by_side({"pytorch": torch_run, "onnxruntime": onnx_run}, sizes.repeats, torch.device("cpu"))
            rates[str(batch)] = {name: batch / statistics.median(t) for name, t in times.items()}
    largest = rates[max(rates, key=int)]
    return {
        "value": largest["onnxruntime"] / largest["pytorch"],
        "images_per_s": rates,
        "image_size": s,
        "arch": "alexnet (untrained)",
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
