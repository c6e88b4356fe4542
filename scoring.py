"""The scoring pass: the one loop that walks a loader, runs the model once per batch, asks each source for its maps
and hands the scored batch to each sink.

    batches -> features, logits -> each source's maps (B, h, w) -> every sink.update(batch)

A **source** turns a batch into raw maps: the model's own CAM (:func:`model_cam`) or another method of
:func:`~.cams.compute_cams` (:func:`method_maps`), or for photos with no true class, of the predicted or a chosen class
(:func:`chosen_maps`), or maps read from files (:mod:`.saved_maps`, with no model). A **sink** consumes scored
batches: a box meter (:class:`BoxScores`), the loss (:class:`LossSum`), RISE deletion/insertion
(:class:`Faithfulness`), the time each source took (:class:`SourceSeconds`), the first images for a figure
(:class:`FirstImages`), the report's cards, map files. A sink with ``state_tensor()``/``load_state_tensor()`` is
summed over the processes of a distributed run at the end. ``--evaluate``, ``--evaluate --methods``,
``--evaluate --report`` and ``--score_maps`` are each a choice of sources and sinks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .cams import compute_cams, deletion_insertion
from .checkpoint import unwrap_model
from .distributed import DistInfo, all_reduce_sum
from .localization import boxes_from_cams
from .model import GAPNet
from .runtime import accumulator_dtype, autocast_context


@dataclass(eq=False)
class ScoredBatch:
    """One batch of the pass: what the loader gave, the model's class scores, and each source's maps."""

    images: Tensor  # (B, 3, S, S) on the pass's device
    labels: Tensor  # (B,) true classes, on the device
    true_boxes: Tensor  # (B, 4) on the CPU, in the image's pixels; a NaN row where an image has none
    features: Tensor | None  # (B, K, h, w) float32, on the device; None for maps read from files
    logits: Tensor  # (B, C) float32, on the device
    first: int  # the index in the pass of the batch's first image
    ids: Any = None  # the loader's fourth item, when it yields one: what each image is (e.g. its file)
    threshold: float | None = None  # the CAM threshold for :meth:`boxes`
    given: dict[str, Tensor] = field(default_factory=dict)  # the loader's fifth item: maps and logits read from files
    maps: dict[str, Tensor] = field(default_factory=dict)  # source name -> (B, h, w) raw maps, on the CPU
    seconds: dict[str, float] = field(default_factory=dict)  # source name -> seconds its maps took
    _boxes: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.given["maps"].shape[-2:] if "maps" in self.given else self.images.shape[-2:])

    @cached_property
    def logits_cpu(self) -> Tensor:
        return self.logits.cpu()

    @cached_property
    def labels_cpu(self) -> Tensor:
        return self.labels.cpu()

    def boxes(self, source: str) -> Tensor:
        """(B, 4) boxes of ``source``'s maps at the pass's CAM threshold, computed once for all the sinks that ask."""
        if source not in self._boxes:
            self._boxes[source] = boxes_from_cams(self.maps[source], self.image_size, self.threshold)
        return self._boxes[source]


Source = Callable[[GAPNet, ScoredBatch], Tensor]  # (model, batch) -> (B, h, w) raw maps


class Sink(Protocol):
    def update(self, batch: ScoredBatch) -> None: ...


def model_cam(target: str = "true") -> Source:
    """The model's CAM ``M_c = sum_k w_k^c f_k`` of each image's ``"true"`` or ``"predicted"`` class, from the
    pass's features (float32, so the maps are full precision under autocast too)."""

    def source(model: GAPNet, batch: ScoredBatch) -> Tensor:
        index = batch.labels if target == "true" else batch.logits.argmax(dim=1)
        with torch.no_grad():
            return model.class_activation_maps(batch.features, index)

    return source


def method_maps(method: str) -> Source:
    """``method``'s maps of each image's true class (:func:`~.cams.compute_cams`)."""
    return lambda model, batch: compute_cams(model, batch.images, method, class_idx=batch.labels)


def chosen_maps(method: str = "cam", class_idx: int | None = None) -> Source:
    """``method``'s maps of each image's predicted class, or of class ``class_idx`` for all: for images with no true
    class (photos)."""
    if method != "cam":
        return lambda model, batch: compute_cams(model, batch.images, method, class_idx=class_idx)
    if class_idx is None:
        return model_cam("predicted")

    def source(model: GAPNet, batch: ScoredBatch) -> Tensor:
        with torch.no_grad():
            return model.class_activation_maps(batch.features, class_idx)

    return source


def score(
    model: nn.Module | None,
    loader: Iterable[tuple[Tensor, Tensor, Tensor]],
    sources: Mapping[str, Source],
    sinks: Sequence[Sink],
    device: torch.device,
    *,
    threshold: float | None = None,
    amp: bool = True,
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
    progress: bool = False,
    desc: str = "score",
) -> None:
    """Walk ``loader`` once: features (under autocast when ``amp``), then the head in float32 (in bf16 close logits
    tie or swap), each source's maps (timed), and every sink's ``update``; at the end, sum the sinks' states over
    the processes of a distributed run.

    Args:
        model: The network; ``None`` to score maps read from files (:mod:`.saved_maps`), whose loader also yields a
            fifth item, ``{"maps": (B, S, S), "logits": (B, C)}``.
        loader: Yields ``(images (B, 3, S, S), labels (B,), boxes (B, 4))``, boxes in the image's pixels (NaN rows
            where an image has none), and optionally a fourth item, the batch's ``ids``.
        sources: Name -> :data:`Source`; each batch's ``maps[name]``.
        threshold: The CAM threshold of :meth:`ScoredBatch.boxes`.
    """
    dist_info = dist_info or DistInfo()
    bare = unwrap_model(model).eval() if model is not None else None
    first = 0
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and dist_info.is_main), leave=False)
    for images, labels, boxes, *rest in bar:
        ids, given = (rest[0] if rest else None), (rest[1] if len(rest) > 1 else {})
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if bare is None:  # maps read from files: the loader gives the class scores too
            features, logits = None, given["logits"].to(device)
        else:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                with autocast_context(device, amp):
                    # A loader's batches are alike: the first is checked, the rest trusted.
                    features = bare.forward_features(images, check_input=first == 0).float()
                logits = bare.forward_head(features)  # (B, C)
        batch = ScoredBatch(images, labels, boxes, features, logits, first, ids, threshold, given=given)
        for name, source in sources.items():
            start = time.perf_counter()
            batch.maps[name] = source(bare, batch).cpu()  # (B, h, w)
            batch.seconds[name] = time.perf_counter() - start
        for sink in sinks:
            sink.update(batch)
        first += images.shape[0]
    if dist_info.distributed:
        for sink in sinks:
            if hasattr(sink, "state_tensor"):
                sink.load_state_tensor(all_reduce_sum(sink.state_tensor().to(device), dist_info).cpu())


class BoxScores:
    """Feeds ``source``'s maps of the true class to a box meter (:class:`~.localization.LocalizationMeter` or
    :class:`~.wsolevaluation.WsolevaluationMeter`)."""

    def __init__(self, meter: Any, source: str = "cam") -> None:
        self.meter, self.source = meter, source

    def update(self, batch: ScoredBatch) -> None:
        self.meter.update(
            batch.logits_cpu, batch.labels_cpu, batch.maps[self.source], batch.true_boxes, batch.image_size
        )

    def state_tensor(self) -> Tensor:
        return self.meter.state_tensor()

    def load_state_tensor(self, state: Tensor) -> None:
        self.meter.load_state_tensor(state)


class LossSum:
    """The mean of ``criterion`` over the images."""

    def __init__(self, criterion: nn.Module, device: torch.device) -> None:
        self.criterion = criterion
        self.total = torch.zeros(2, device=device, dtype=accumulator_dtype(device))  # loss sum, images

    def update(self, batch: ScoredBatch) -> None:
        n = batch.labels.shape[0]
        self.total[0] += self.criterion(batch.logits, batch.labels).to(self.total.dtype) * n
        self.total[1] += n

    def state_tensor(self) -> Tensor:
        return self.total

    def load_state_tensor(self, state: Tensor) -> None:
        self.total = state

    def result(self) -> float:
        total, count = self.total.tolist()
        return total / max(count, 1)


class Faithfulness:
    """Summed RISE deletion and insertion AUCs of each source's maps (:func:`~.cams.deletion_insertion`)."""

    def __init__(self, model: GAPNet, sources: Sequence[str], steps: int = 20) -> None:
        self.model, self.steps = model, steps
        self.sums = {name: {"deletion_auc": 0.0, "insertion_auc": 0.0} for name in sources}

    def update(self, batch: ScoredBatch) -> None:
        for name, sums in self.sums.items():
            aucs = deletion_insertion(self.model, batch.images, batch.maps[name], batch.labels, steps=self.steps)
            for key in sums:
                sums[key] += float(aucs[key].sum())


class SourceSeconds:
    """The seconds each source took, summed over the batches (CUDA work included)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def update(self, batch: ScoredBatch) -> None:
        for name, seconds in batch.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class FirstImages:
    """The first ``n`` images of the pass, their true boxes and each source's maps (for a figure)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.images: Tensor | None = None
        self.true_boxes: Tensor | None = None
        self.maps: dict[str, Tensor] = {}

    def update(self, batch: ScoredBatch) -> None:
        if self.images is None:
            self.images, self.true_boxes = batch.images[: self.n].cpu(), batch.true_boxes[: self.n]
            self.maps = {name: maps[: self.n] for name, maps in batch.maps.items()}
