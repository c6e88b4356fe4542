"""The scoring pass: every command that scores maps goes through it, and gives what it gave before it existed."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from CAM_Stanford_Cars.checkpoint import save_checkpoint
from CAM_Stanford_Cars.compare import compare_methods
from CAM_Stanford_Cars.data.class_names import STANFORD_CARS_CLASS_NAMES
from CAM_Stanford_Cars.dataset import StanfordCarsCAM
from CAM_Stanford_Cars.evaluation import evaluate_checkpoint
from CAM_Stanford_Cars.model import AlexNetGAP
from CAM_Stanford_Cars.report import write_report
from CAM_Stanford_Cars.scoring import ScoredBatch, SourceSeconds, method_maps, model_cam, score
from CAM_Stanford_Cars.synthetic import write_synthetic_stanford_cars

# What --evaluate (both protocols), --evaluate --methods all and --evaluate --report gave on this checkpoint when each
# walked the data in its own loop; regenerate only for an intended change of the scores.
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "scoring_outputs.json"
FILTERS = {"car_type": "Sedan", "car_brand": "BMW", "car_production_year": 2012}


def decisive_checkpoint(folder: Path) -> tuple[Path, Path]:
    """Synthetic data and an untrained 8-channel AlexNet-GAP whose head is scaled up, so that no prediction is a
    near tie that float noise could flip."""
    names = [name for name in STANFORD_CARS_CLASS_NAMES if name.startswith("BMW") and name.endswith("Sedan 2012")]
    root = write_synthetic_stanford_cars(
        folder / "data", names, n_train_per_class=1, n_test_per_class=3, image_size=(160, 104), seed=0
    )
    classes = StanfordCarsCAM(root, split="test", **FILTERS).classes
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=len(classes), cam_channels=8)
    with torch.no_grad():
        model.fc.weight.mul_(1e4)
    checkpoint = folder / "run" / "best.pt"
    save_checkpoint(checkpoint, model, class_names=classes, image_size=64, args={"root": str(root)}, **FILTERS)
    return checkpoint, root


def scoring_outputs(checkpoint: Path, root: Path) -> dict[str, Any]:
    """The scores of every command that walks the data, without paths and timings."""
    common = {"device": "cpu", "num_workers": 0, "progress": False}
    out: dict[str, Any] = {}
    for protocol in ("cam", "wsolevaluation"):
        copy = Path(shutil.copy(checkpoint, checkpoint.with_name(f"{protocol}.pt")))
        out[f"evaluate_{protocol}"] = evaluate_checkpoint(copy, root, protocol=protocol, **common)
    methods = compare_methods(checkpoint, root, figure_images=0, steps=3, **common)
    out["methods"] = {
        name: {k: v for k, v in row.items() if k != "ms_per_image"} for name, row in methods["methods"].items()
    }
    report = checkpoint.with_name("report.html")
    out["report"] = write_report(checkpoint, report, root, **common)
    page = report.read_text()
    out["report_cards"] = re.findall(r'<div class="card" ([^>]*)>', page)
    out["report_per_class"] = re.findall(r"<h2>Per class</h2>(<table>.*?</table>)", page)
    for result in (out["evaluate_cam"], out["evaluate_wsolevaluation"], out["report"]):
        for key in ("checkpoint", "report"):
            result.pop(key, None)
    return out


def assert_close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(got) and math.isnan(want)), path
    else:
        assert got == want, path


def test_every_command_scores_as_before_the_pass(tmp_path: Path) -> None:
    """Methods and columns added since (finercam; the sanity checks) are scored beside the others and leave the
    older rows and columns as they were."""
    checkpoint, root = decisive_checkpoint(tmp_path)
    got, want = scoring_outputs(checkpoint, root), json.loads(GOLDEN.read_text())
    assert set(got["methods"]) - set(want["methods"]) == {"finercam"}
    new_columns = {"average_drop", "increase_in_confidence", "energy_pointing_game", "randomization_spearman"}
    assert set(got["methods"]["cam"]) - set(want["methods"]["cam"]) == {*new_columns, "randomization_cascade"}
    got["methods"] = {name: {key: got["methods"][name][key] for key in row} for name, row in want["methods"].items()}
    assert_close(got, want)


class Collect:
    def __init__(self) -> None:
        self.batches: list[ScoredBatch] = []

    def update(self, batch: ScoredBatch) -> None:
        self.batches.append(batch)


def test_the_pass_hands_each_batch_once_to_every_sink_with_each_sources_maps() -> None:
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=3, cam_channels=8).eval()
    images, labels = torch.rand(5, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1])
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0]]).repeat(5, 1)
    loader = [(images[:3], labels[:3], boxes[:3]), (images[3:], labels[3:], boxes[3:])]
    collect, seconds = Collect(), SourceSeconds()
    sources = {"cam": model_cam(), "predicted": model_cam("predicted"), "gradcam": method_maps("gradcam")}
    score(model, loader, sources, [collect, seconds], torch.device("cpu"), threshold=0.5)
    assert [b.first for b in collect.batches] == [0, 3]
    first = collect.batches[0]
    with torch.no_grad():
        features = model.forward_features(images[:3])
        logits = model.forward_head(features)
        want = model.class_activation_maps(features, labels[:3])
        want_predicted = model.class_activation_maps(features, logits.argmax(dim=1))
    torch.testing.assert_close(first.maps["cam"], want)
    torch.testing.assert_close(first.maps["predicted"], want_predicted)
    assert first.maps["gradcam"].shape == want.shape and first.boxes("cam").shape == (3, 4)
    assert first.boxes("cam") is first.boxes("cam")  # computed once for every sink that asks
    assert set(seconds.seconds) == set(sources) and all(s > 0 for s in seconds.seconds.values())
