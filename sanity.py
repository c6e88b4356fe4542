"""Checks of a saliency map beyond its box, as the field now expects them side by side (docs/metrics.md):

- ``average_drop`` and ``increase_in_confidence`` (Chattopadhyay et al. 2018, Grad-CAM++): the class probability of
  the image multiplied by its map (normalised, then upsampled), against the image's own; as torchcam 0.5's
  ``ClassificationMetric``. Lower drop and higher increase: the map keeps what the network uses.
- ``energy_pointing_game`` (Wang et al. 2020, Score-CAM): the share of the map's energy (normalised at the evaluation
  size) inside the true box. Higher: the map is on the object.
- ``randomization_spearman`` (Adebayo et al. 2018, model-parameter randomisation): the Spearman rank correlation of
  each image's map with the map the same method makes once the classifier is re-initialised (a fixed seed); the
  cascade (classifier, then classifier and last block) in ``randomization_cascade``. Lower: the map depends on what
  the network learned; a map that does not change (correlation 1) fails the check.

:class:`MapChecks` is a sink of the scoring pass (:mod:`.scoring`), one row of sums per method.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

from .cams import compute_cams
from .localization import normalize_cams
from .model import GAPNet
from .scoring import ScoredBatch

__all__ = [
    "RANDOMIZATION_SEED",
    "MapChecks",
    "confidence_change",
    "energy_in_boxes",
    "randomized",
    "spearman_per_image",
]

RANDOMIZATION_SEED = 0
STAGES = ("classifier", "last_block")  # the cascade: each stage re-initialises its layers and those before it


def confidence_change(model: GAPNet, images: Tensor, maps: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, Average Drop's ``ReLU(p - p_masked) / (p + 1e-7)`` and whether ``p_masked > p`` (Increase in
    Confidence), ``p`` the softmax probability of ``labels`` for ``images`` and ``p_masked`` for ``images`` times
    ``maps`` min-max normalised (eps 1e-8) and upsampled bilinearly, as torchcam 0.5's ``ClassificationMetric``."""
    with torch.no_grad():
        low = maps.amin(dim=(1, 2), keepdim=True)
        span = maps.amax(dim=(1, 2), keepdim=True) - low
        masks = F.interpolate(((maps - low) / (span + 1e-8))[:, None].float(), size=images.shape[-2:], mode="bilinear")
        probabilities = model(torch.cat([images, images * masks.to(images.dtype)]), check_input=False)
        probabilities = probabilities.float().softmax(dim=1).gather(1, labels.repeat(2)[:, None]).view(2, -1)
    plain, masked = probabilities
    return (plain - masked).relu() / (plain + 1e-7), masked > plain


def energy_in_boxes(maps: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Per image, the share of the map's energy inside its box: ``maps`` upsampled to ``size`` and min-max normalised
    (:func:`~.localization.normalize_cams`), a pixel inside when its centre lies in the float box ``[x1, y1, x2,
    y2]``. NaN for an image without a box or with an all-zero (constant) map."""
    normalized = normalize_cams(maps.detach().cpu(), size).double()  # (B, H, W)
    rows = torch.arange(size[0], dtype=torch.float64) + 0.5
    cols = torch.arange(size[1], dtype=torch.float64) + 0.5
    boxes = boxes.double()
    inside_x = (cols[None] >= boxes[:, 0:1]) & (cols[None] < boxes[:, 2:3])  # (B, W)
    inside_y = (rows[None] >= boxes[:, 1:2]) & (rows[None] < boxes[:, 3:4])  # (B, H)
    inside = (normalized * (inside_y[:, :, None] & inside_x[:, None, :])).sum(dim=(1, 2))
    total = normalized.sum(dim=(1, 2))
    return torch.where((total > 0) & ~boxes.isnan().any(dim=1), inside / total.where(total > 0, 1.0), math.nan)


def last_block(model: GAPNet) -> nn.Module:
    """The last block before the global average pooling: the CAM layer (AlexNet-GAP, VGG16-GAP) or ResNet's
    layer4."""
    return model.cam_conv if hasattr(model, "cam_conv") else model.features[-1]


def randomized(model: GAPNet, stage: str, seed: int = RANDOMIZATION_SEED) -> GAPNet:
    """A copy of ``model`` with the layers of ``stage`` and the stages before it (:data:`STAGES`) re-initialised by
    their ``reset_parameters`` (PyTorch's default initialisation) under ``seed``; ``model`` is untouched."""
    copied = copy.deepcopy(model).eval()
    layers = [copied.fc] + ([last_block(copied)] if stage == "last_block" else [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in layers:
            for module in layer.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return copied


def spearman_per_image(a: Tensor, b: Tensor) -> np.ndarray:
    """(B,) Spearman rank correlation of each pair of maps (ties ranked by their mean, as scipy); NaN where a map is
    constant."""
    a, b = a.detach().double().flatten(1).cpu().numpy(), b.detach().double().flatten(1).cpu().numpy()
    out = np.full(a.shape[0], np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = spearmanr(x, y).statistic
    return out


def _nanmean(arrays: list[np.ndarray]) -> float:
    joined = np.concatenate(arrays) if arrays else np.array([])
    return float(np.nanmean(joined)) if np.isfinite(joined).any() else math.nan


class MapChecks:
    """A sink of the scoring pass: for each method (source) the sums of :func:`confidence_change`,
    :func:`energy_in_boxes` and the randomisation test, on each image's map of its true class. :meth:`rows` gives the
    means (NaN-skipping for the energy and the correlations).

    Args:
        model: The trained network.
        methods: The methods whose maps the pass's sources give (a source per method, named as the method).
        maps_of: ``(model, images, method, labels) -> maps``: how a randomised copy makes the method's maps (by default
            :func:`~.cams.compute_cams`).
    """

    def __init__(
        self,
        model: GAPNet,
        methods: Sequence[str],
        maps_of: Callable[[GAPNet, Tensor, str, Tensor], Tensor] | None = None,
    ) -> None:
        self.methods = list(methods)
        self.copies = {stage: randomized(model, stage) for stage in STAGES}
        self.model, self.maps_of = model, maps_of or (lambda m, x, method, y: compute_cams(m, x, method, class_idx=y))
        self.sums = {m: {"drop": 0.0, "increase": 0.0, "images": 0} for m in self.methods}
        self.values: dict[str, dict[str, list[np.ndarray]]] = {
            m: {"energy": [], **{stage: [] for stage in STAGES}} for m in self.methods
        }

    def update(self, batch: ScoredBatch) -> None:
        for method in self.methods:
            maps = batch.maps[method].to(batch.images.device)
            drop, increase = confidence_change(self.model, batch.images, maps, batch.labels)
            sums = self.sums[method]
            sums["drop"] += float(drop.sum())
            sums["increase"] += float(increase.sum())
            sums["images"] += int(drop.numel())
            values = self.values[method]
            values["energy"].append(energy_in_boxes(maps, batch.true_boxes, batch.image_size).numpy())
            for stage, copied in self.copies.items():
                other = self.maps_of(copied, batch.images, method, batch.labels)
                values[stage].append(spearman_per_image(maps, other))

    def rows(self) -> dict[str, dict[str, object]]:
        """Per method: ``average_drop``, ``increase_in_confidence``, ``energy_pointing_game``,
        ``randomization_spearman`` (the classifier stage) and ``randomization_cascade`` (every stage)."""
        out: dict[str, dict[str, object]] = {}
        for method in self.methods:
            sums, values = self.sums[method], self.values[method]
            means = {key: _nanmean(arrays) for key, arrays in values.items()}
            out[method] = {
                "average_drop": sums["drop"] / max(sums["images"], 1),
                "increase_in_confidence": sums["increase"] / max(sums["images"], 1),
                "energy_pointing_game": means["energy"],
                "randomization_spearman": means["classifier"],
                "randomization_cascade": {stage: means[stage] for stage in STAGES},
            }
        return out
