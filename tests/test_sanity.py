"""sanity.py: Average Drop / Increase in Confidence against torchcam, the energy pointing game on a hand-computed
case, and the model-parameter randomisation test (repeatable; 1 for a map that ignores the weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from CAM_Stanford_Cars.cams import compute_cams
from CAM_Stanford_Cars.model import AlexNetGAP
from CAM_Stanford_Cars.sanity import MapChecks, confidence_change, energy_in_boxes, randomized
from CAM_Stanford_Cars.scoring import method_maps, score


def _model(classes: int = 4) -> AlexNetGAP:
    torch.manual_seed(0)
    model = AlexNetGAP(num_classes=classes, cam_channels=8).eval()
    nn.init.normal_(model.fc.weight, std=1.0)
    return model


def test_average_drop_and_increase_in_confidence_agree_with_torchcam() -> None:
    metrics = pytest.importorskip("torchcam.metrics")
    methods = pytest.importorskip("torchcam.methods")
    model = _model()
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    extractor = methods.CAM(model, model.cam_conv, fc_layer=model.fc, input_shape=(3, 64, 64))
    try:
        metric = metrics.ClassificationMetric(extractor, lambda logits: logits.softmax(dim=-1))
        metric.update(images, class_idx=labels.tolist())
        expected = metric.summary()
    finally:
        extractor.remove_hooks()
    drop, increase = confidence_change(model, images, compute_cams(model, images, "cam", class_idx=labels), labels)
    assert drop.mean().item() == pytest.approx(expected["avg_drop"], abs=0.02)
    assert increase.float().mean().item() == pytest.approx(expected["conf_increase"], abs=0.02)
    assert 0 < drop.mean().item() < 1


def test_energy_pointing_game_by_hand() -> None:
    # 4 x 4 maps at the evaluation size (no resize), min 0 and max 1 (normalising changes nothing):
    # a 2 x 2 block of 1 at the top left and one 0.5 at the bottom right: energy 4.5.
    cam = torch.zeros(4, 4)
    cam[:2, :2] = 1.0
    cam[3, 3] = 0.5
    maps = torch.stack([cam, cam, cam, torch.full((4, 4), 2.0)])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],  # the block: 4 of 4.5
            [0.0, 0.0, 1.4, 4.0],  # column 0 only (centre 0.5 in, centre 1.5 out): 2 of 4.5
            [math.nan] * 4,  # no box
            [0.0, 0.0, 4.0, 4.0],  # a constant map has no energy to share
        ]
    )
    got = energy_in_boxes(maps, boxes, (4, 4))
    assert got[:2].tolist() == pytest.approx([4 / 4.5, 2 / 4.5]) and got[2:].isnan().all()


def test_randomization_is_repeatable_and_one_for_a_map_that_ignores_the_weights() -> None:
    model = _model()
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3])
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0]]).repeat(4, 1)
    loader = [(images, labels, boxes)]

    def run(**kwargs: object) -> dict:
        checks = MapChecks(model, ["cam", "gradcam"], **kwargs)
        score(model, loader, {m: method_maps(m) for m in ("cam", "gradcam")}, [checks], torch.device("cpu"))
        return checks.rows()

    first, second = run(), run()
    assert first == second  # a fixed seed: the same re-initialised weights every run
    assert -1 <= first["cam"]["randomization_spearman"] < 0.99
    assert list(first["cam"]["randomization_cascade"]) == ["classifier", "last_block"]
    # A "method" whose map comes from the trained network whatever weights it is given ignores them: 1.
    ignoring = run(maps_of=lambda copied, x, method, y: compute_cams(model, x, method, class_idx=y))
    for row in ignoring.values():
        assert row["randomization_spearman"] == pytest.approx(1.0)
        assert list(row["randomization_cascade"].values()) == pytest.approx([1.0, 1.0])
    assert first["cam"]["average_drop"] == ignoring["cam"]["average_drop"]  # the other columns do not change


def test_randomized_copies_leave_the_model_alone() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = randomized(model, "classifier")
    both = randomized(model, "last_block")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(head.fc.weight, model.fc.weight) and torch.equal(head.fc.weight, both.fc.weight)
    assert torch.equal(head.cam_conv[0].weight, model.cam_conv[0].weight)
    assert not torch.equal(both.cam_conv[0].weight, model.cam_conv[0].weight)
    assert np.array_equal(head.features[0].weight.detach().numpy(), model.features[0].weight.detach().numpy())
