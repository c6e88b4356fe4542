"""The CAM to deploy: a checkpoint exported as one ONNX graph that outputs the class scores and the CAM of each image's
predicted class, run by onnxruntime without PyTorch (``python main.py --export best.pt --to model.onnx``; see
docs/deploy.md).

    images (N, 3, S, S) RGB in [0, 1] -> logits (N, C), cam (N, h, w) = sum_k w_k^c f_k, c = argmax logits

The graph is the model's own ``model(images, True)``; beside it, ``model.json`` holds what a program needs to use it.
The export checks itself before it returns: onnxruntime runs the graph on a batch, and its outputs must equal PyTorch's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .atomic_files import atomic_write_text, file_in_the_way, unwritable_reason
from .checkpoint import cam_threshold_of, require_entries
from .model import load_checkpoint

__all__ = ["OPSET", "CamGraph", "check_export_target", "export_onnx"]

OPSET = 18  # a recent opset that onnxruntime's CPU provider runs
RTOL = 1e-4  # onnxruntime against PyTorch, relative to each output's largest magnitude
INSTALL = "pip install -e '.[onnx]'"


class CamGraph(nn.Module):
    """``images -> (logits, cam)``: ``model(images, True)``, the CAM of each image's predicted class computed in the
    same graph (no hooks, no gradient: two matrix products after the last convolution)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(images, True, check_input=False)


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        # A usage error (exit 2, before any work): the optional extra was not asked for at install time.
        raise ValueError(f"--export needs onnx and onnxruntime ({err.name} is not installed): {INSTALL}") from None
    return onnx, onnxruntime


def check_export_target(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or one ValueError naming it and the fix, without creating anything: a folder, a suffix
    other than .onnx, a missing or unwritable folder."""
    out, fix = Path(path), "give a file name ending in .onnx in an existing, writable folder, such as 'model.onnx'"
    if out.is_dir():
        raise ValueError(f"--to {str(out)!r} is a folder; {fix}")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--to {str(out)!r} does not end in .onnx; {fix}")
    if blocker := file_in_the_way(out):
        raise ValueError(f"--to {str(out)!r} cannot be written: {str(blocker)!r} is a file, not a folder; {fix}")
    if not out.parent.is_dir():
        raise ValueError(f"--to {str(out)!r}: the folder {str(out.parent)!r} does not exist; {fix}")
    if (reason := unwritable_reason(out.parent)) is not None:
        raise ValueError(f"--to {str(out)!r} is not writable ({reason}); {fix}")
    return out


def _max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


def export_onnx(checkpoint_path: str | os.PathLike, to: str | os.PathLike, check_batch: int = 2) -> dict[str, Any]:
    """Export the checkpoint's network with its CAM as ``to`` (ONNX, opset :data:`OPSET`, dynamic batch) and
    ``to.with_suffix(".json")`` (what a program needs: classes, input size and range, CAM threshold, outputs); both
    written only once onnxruntime's outputs on ``check_batch`` images equal PyTorch's (within 1e-4 relative).

    Returns:
        The ``model.json`` entries, plus ``onnx`` and ``json`` (the paths) and ``max_relative_error``.

    Raises:
        ValueError: onnx or onnxruntime not installed, a bad target (:func:`check_export_target`), both before any
            work; or outputs that differ.
        CheckpointError: ``checkpoint_path`` is not a checkpoint of this project.
    """
    out = check_export_target(to)
    onnx, onnxruntime = _onnx_modules()
    model, checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
    require_entries(checkpoint, ("image_size", "class_names"), checkpoint_path)
    size, graph = int(checkpoint["image_size"]), CamGraph(model.float())
    images = torch.rand(check_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = [tensor.numpy() for tensor in graph(images)]
    threshold, source = cam_threshold_of(checkpoint)
    about = {
        "arch": checkpoint["arch"],
        "class_names": list(checkpoint["class_names"]),
        "image_size": size,
        "input": {
            "name": "images",
            "shape": ["N", 3, size, size],
            "dtype": "float32",
            "range": "RGB in [0, 1], resized to image_size x image_size (the whole photo, not a crop)",
            "normalization": "none outside the graph: it subtracts ImageNet's mean and divides by its std itself",
        },
        "outputs": {
            "logits": {
                "shape": ["N", len(checkpoint["class_names"])],
                "meaning": "class scores (softmax: probabilities)",
            },
            "cam": {
                "shape": ["N", *want[1].shape[1:]],
                "meaning": "raw CAM of the predicted class (min-max normalise, upsample, cut at cam_threshold)",
            },
        },
        "cam_threshold": threshold,
        "cam_threshold_source": "validation" if source == "val" else source,
        "opset": OPSET,
    }
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        draft = Path(scratch) / out.name
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                graph,
                (images,),
                draft,
                input_names=["images"],
                output_names=["logits", "cam"],
                dynamic_axes={name: {0: "N"} for name in ("images", "logits", "cam")},
                opset_version=OPSET,
                dynamo=False,
            )
        onnx.checker.check_model(str(draft))
        session = onnxruntime.InferenceSession(str(draft), providers=["CPUExecutionProvider"])
        got = session.run(["logits", "cam"], {"images": images.numpy()})
        error = max(_max_relative_error(g, w) for g, w in zip(got, want))
        if not error <= RTOL:
            raise ValueError(
                f"the exported graph's outputs differ from PyTorch's by {error:.2e} (relative, more than {RTOL:g}); "
                "nothing was written"
            )
        os.replace(draft, out)
    json_path = out.with_suffix(".json")
    atomic_write_text(json_path, json.dumps(about, indent=2) + "\n")
    return {**about, "onnx": str(out), "json": str(json_path), "max_relative_error": error}
