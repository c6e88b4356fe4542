"""Class activation maps of a :class:`~.model.GAPNet` by eight methods, and RISE's deletion/insertion metric.

Each method weighs the K feature maps ``f = forward_features(x)`` (B, K, h, w) for a class c, with ``y_c`` the logit:

- ``cam``: CAM (Zhou et al. 2016), ``sum_k W[c, k] f_k``: the model's own map, exact for a GAP-linear head.
- ``gradcam``: Grad-CAM (Selvaraju et al. 2017), ``ReLU(sum_k mean_ij(dy_c/df_k) f_k)``.
- ``gradcampp``: Grad-CAM++ (Chattopadhay et al. 2018), Grad-CAM with positive gradients weighted per pixel by alpha.
- ``xgradcam``: XGrad-CAM (Fu et al. 2020), ``ReLU(sum_k (sum_ij f_k dy_c/df_k / sum_ij f_k) f_k)``.
- ``layercam``: Layer-CAM (Jiang et al. 2021), ``ReLU(sum_k ReLU(dy_c/df_k) * f_k)``, weights per pixel.
- ``scorecam``: Score-CAM (Wang et al. 2020), each map weighted by the class probability of the image masked by it.
- ``smoothgradcampp``: SmoothGrad-CAM++ (Omeiza et al. 2019), Grad-CAM++ with gradient moments averaged over noisy
  copies.
- ``finercam``: Finer-CAM (Zhang et al. 2025), Grad-CAM of the class against the K classes whose logits are closest
  to its own (:func:`finer_target`): what tells it from its look-alikes, not where the object is.

Gradients are taken of ``forward_head`` with respect to the features (``torch.autograd.grad``): no hooks, no backward
pass through the backbone, no ``.grad`` on any parameter. For a GAP-linear head ``dy_c/df_k(i, j) = W[c, k] / (h w)`` is
constant, so Grad-CAM = XGrad-CAM = ReLU(CAM) / (h w), and SmoothGrad-CAM++ = Grad-CAM++ whatever the noise.

Where torchcam 0.5 (``torchcam.methods``) differs, by definition or by accident:

- Grad-CAM++: torchcam divides alpha's numerator with ``alpha[mask].div_(...)``, which divides a copy (boolean indexing
  copies), so its alpha is ``(dy/df)^2``, not the paper's ``(dy/df)^2 / (2 (dy/df)^2 + sum_ab f(a, b) (dy/df)^3)``.
- SmoothGrad-CAM++: torchcam weighs by the last noisy sample's ReLU gradient and combines the last noisy sample's
  features; the paper averages the gradients and explains the clean image (here: mean gradient, clean features). Both
  use mean second/third powers in alpha (torchcam's "correction" of the paper's first-derivative numerator, kept: it
  is Grad-CAM++'s alpha). torchcam adds eps=1e-8 to alpha's denominator, not small against squared gradients
  (W / (h w))^2, ~1e-9 to 1e-7 at 14x14; here a zero denominator gives alpha 0, as the Grad-CAM++ authors' code.
- Score-CAM: torchcam normalises each map before upsampling and weighs by a softmax over channels of the masked logits;
  the paper (Algorithm 1, and its authors' code) normalises the upsampled map and weighs by the class probability,
  a softmax over classes, skipping constant maps. Here: the paper.
- XGrad-CAM: torchcam adds eps=1e-8 to ``sum_ij f_k``; here a zero sum (an all-zero map, which adds nothing) gives 0.

Finer-CAM follows its authors' reference implementation (pytorch-grad-cam 1.5.7's ``FinerCAM`` over ``GradCAM`` with
``FinerWeightedTarget``): the comparison classes are the K nearest by ``|y_j - y_c|`` (above or below), each weighted by
its softmax probability, and those weights are differentiated along with the logits (they are part of the target, not
constants); the denominator carries their eps of 1e-9. On a GAP-linear head its gradient is the head's alone, as for
Grad-CAM: no backward pass through the backbone.

Same as torchcam: Grad-CAM++ differentiates the logit, not the paper's ``exp(y_c)`` (the exp cancels in alpha and is a
positive factor per image in the weights); Grad-CAM++, XGrad-CAM and SmoothGrad-CAM++ end with a ReLU, as Grad-CAM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from .model import ClassIndex, GAPNet, check_positive_int

__all__ = ["FINER_ALPHA", "FINER_K", "METHODS", "compute_cams", "deletion_insertion", "finer_target"]

Target = Callable[[Tensor, Tensor], Tensor]  # (logits (B, C), classes (B,)) -> (B,) the score a gradient explains

METHODS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "smoothgradcampp", "finercam")
FINER_K, FINER_ALPHA = 3, 1.0  # Finer-CAM's comparison classes and comparison strength (the reference's defaults)
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion baseline (klen=11, nsig=5 in the authors' code)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, each module's own mode restored after (also after an exception; frozen BN stays frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _head_gradient(model: GAPNet, features: Tensor, index: Tensor, target: Target | None = None) -> Tensor:
    """``d score / d f`` (B, K, h, w), the score ``y_c`` of class ``index`` (B,) or ``target(logits, index)`` (B,):
    through the head alone, so parameters get no ``.grad``."""
    # inference_mode(False) + clone: works when the caller runs under torch.inference_mode() too.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
        feats, index = features.clone().requires_grad_(True), index.clone()
        logits = model.forward_head(feats)
        scores = logits.gather(1, index[:, None]) if target is None else target(logits, index)
        (grad,) = torch.autograd.grad(scores.sum(), feats)  # samples are independent: sum = per-sample
    return grad


def finer_target(k: int = FINER_K, alpha: float = FINER_ALPHA) -> Target:
    """Finer-CAM's score of class c against its look-alikes: ``sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9)`` over
    the ``k`` classes j != c whose logits are nearest to ``y_c`` (fewer where there are fewer classes), ``p`` the
    softmax of the logits (differentiated too, as in the reference)."""

    def score(logits: Tensor, index: Tensor) -> Tensor:
        own = logits.gather(1, index[:, None])  # (B, 1)
        distance = (logits - own).abs().detach().scatter(1, index[:, None], -1.0)  # the class itself first
        nearest = distance.argsort(dim=1, stable=True)[:, 1 : 1 + k]  # (B, k)
        weights = logits.softmax(dim=1).gather(1, nearest)
        return (weights * (own - alpha * logits.gather(1, nearest))).sum(dim=1) / (weights.sum(dim=1) + 1e-9)

    return score


def _combine(weights: Tensor, features: Tensor) -> Tensor:
    """ReLU(sum_k w_k f_k): (B, K) weights and (B, K, h, w) features -> (B, h, w)."""
    with torch.autocast(features.device.type, enabled=False):  # autocast would run the einsum in bf16/fp16 again
        return torch.einsum("bk,bkhw->bhw", weights, features).relu()


def _gradcampp_weights(d1: Tensor, d2: Tensor, d3: Tensor, features: Tensor) -> Tensor:
    """Grad-CAM++'s ``w_k = sum_ij alpha_k(i, j) ReLU(d1)``, alpha = d2 / (2 d2 + sum_ab f_k(a, b) d3) (0 where the
    denominator is 0); without the paper's ``exp(y_c)`` factor (module docstring), which overflows float32 for
    y_c > 88."""
    denom = 2 * d2 + features.sum(dim=(2, 3), keepdim=True) * d3
    nonzero = denom != 0
    alpha = torch.where(nonzero, d2 / torch.where(nonzero, denom, 1), 0)
    return (alpha * d1.relu()).sum(dim=(2, 3))


def _score_weights(model: GAPNet, images: Tensor, features: Tensor, index: Tensor, batch_size: int) -> Tensor:
    """Score-CAM's weights (B, K): softmax probability of class ``index`` for ``images * s(Up(f_k))``, s a min-max
    normalisation of the upsampled map; 0 for a constant map (the authors' code skips it). B * K forward passes."""
    n, k = features.shape[:2]
    maps = features.flatten(0, 1)[:, None]  # (B*K, 1, h, w): one mask per (sample, channel) pair
    samples = torch.arange(n, device=images.device).repeat_interleave(k)
    classes = index.repeat_interleave(k)
    weights = []
    for start in range(0, n * k, batch_size):  # batch_size masked images per forward pass bounds memory
        part = slice(start, start + batch_size)
        up = F.interpolate(maps[part], size=images.shape[-2:], mode="bilinear", align_corners=False)
        low, high = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        constant = (high <= low).flatten()
        mask = (up - low) / torch.where(high > low, high - low, 1)
        masked = images[samples[part]] * mask.to(images.dtype)  # copies of checked images: checked once, above
        probs = model(masked, check_input=False).float().softmax(dim=1)
        weights.append(torch.where(constant, 0, probs.gather(1, classes[part, None]).squeeze(1)))
    return torch.cat(weights).view(n, k).to(features.dtype)


def compute_cams(
    model: GAPNet,
    images: Tensor,
    method: str = "cam",
    class_idx: ClassIndex | None = None,
    *,
    batch_size: int = 64,
    n_samples: int = 4,
    std: float = 0.15,
    finer_k: int = FINER_K,
    finer_alpha: float = FINER_ALPHA,
) -> Tensor:
    """Class activation maps by ``method``, at the feature resolution, raw (not normalised), in eval mode.

    Score-CAM runs one forward pass per (image, channel) pair, B * K in all (K = 1,024 for AlexNet-GAP and VGG16-GAP,
    512 / 2,048 for ResNet-18 / 50), ``batch_size`` masked images at a time; SmoothGrad-CAM++ runs ``n_samples``
    forward passes of the batch. The other methods run one forward pass and, for gradients, only the head's backward.

    Args:
        model: A :class:`~.model.GAPNet`; its train/eval mode is restored on return, also after an exception.
        images: (B, 3, H, W) RGB in [0, 1] (the model normalises).
        method: One of :data:`METHODS`.
        class_idx: ``None`` for each image's predicted class, an int for all, or B ints.
        batch_size: Score-CAM's masked images per forward pass.
        n_samples: SmoothGrad-CAM++'s noisy copies.
        std: SmoothGrad-CAM++'s Gaussian noise std in [0, 1] pixel units (SmoothGrad's 15% of the input range).
        finer_k, finer_alpha: Finer-CAM's number of look-alike classes and comparison strength (:func:`finer_target`).

    Returns:
        (B, h, w) maps, float32 (float64 for a float64 model); ``cam`` is exactly the model's own CAM.

    Raises:
        ValueError: For an unknown method, a bad ``batch_size``/``n_samples``/``std``, or ``class_idx`` out of range.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    batch_size, n_samples = check_positive_int("batch_size", batch_size), check_positive_int("n_samples", n_samples)
    if not isinstance(std, int | float) or isinstance(std, bool) or not std >= 0:
        raise ValueError(f"std must be a non-negative number, got {std!r}")
    finer_k = check_positive_int("finer_k", finer_k)
    if not isinstance(finer_alpha, int | float) or isinstance(finer_alpha, bool) or not math.isfinite(finer_alpha):
        raise ValueError(f"finer_alpha must be a finite number such as 1, got {finer_alpha!r}")
    with _eval_mode(model):
        with torch.no_grad():
            features = model.forward_features(images)
            logits = model.forward_head(features)
        index = (
            logits.argmax(dim=1) if class_idx is None else model.class_index(class_idx, len(images), features.device)
        )
        if method == "cam":  # the very computation of model(x, True): equal bit for bit
            return model.cam(features, index)
        features = features.to(torch.promote_types(features.dtype, torch.float32))  # full precision under autocast
        if method == "scorecam":
            with torch.no_grad():
                return _combine(_score_weights(model, images, features, index, batch_size), features)
        if method == "smoothgradcampp":
            d1, d2, d3 = (torch.zeros_like(features) for _ in range(3))
            for _ in range(n_samples):  # moments of the gradient over noisy copies; features stay the clean image's
                with torch.no_grad():
                    noisy = model.forward_features(images + std * torch.randn_like(images), check_input=False)
                grad = _head_gradient(model, noisy.to(features.dtype), index)
                d1, d2, d3 = d1 + grad, d2 + grad**2, d3 + grad**3
            return _combine(_gradcampp_weights(d1 / n_samples, d2 / n_samples, d3 / n_samples, features), features)
        target = finer_target(finer_k, finer_alpha) if method == "finercam" else None
        grad = _head_gradient(model, features, index, target)
        with torch.no_grad():
            if method in ("gradcam", "finercam"):  # Finer-CAM is Grad-CAM of its target
                return _combine(grad.mean(dim=(2, 3)), features)
            if method == "gradcampp":
                return _combine(_gradcampp_weights(grad, grad**2, grad**3, features), features)
            if method == "xgradcam":
                total = features.sum(dim=(2, 3))  # (B, K); 0 only for an all-zero map, which adds nothing
                weights = (grad * features).sum(dim=(2, 3)) / total.where(total != 0, 1)
                return _combine(torch.where(total != 0, weights, 0), features)
            return (grad.relu() * features).sum(dim=1).relu()  # layercam: weights per pixel


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    class_idx: ClassIndex | None = None,
    steps: int = 20,
    baseline: str = "zeros",
) -> dict[str, Tensor]:
    """RISE's deletion and insertion (Petsiuk et al. 2018), batched, as torchcam 0.5's ``DeletionInsertionMetric``.

    Pixels are ranked by ``maps`` upsampled bilinearly to the image size (ties: lower index first, stable sort).
    Deletion replaces the top-ranked pixels (all channels) by the baseline; insertion starts from the baseline and
    puts them back. At point i, ``min(i * ceil(N / steps), N)`` of the N pixels are changed (torchcam's schedule: the
    last points repeat N where N / steps does not divide evenly). The curve is the softmax probability of the map's
    class; the AUC is the trapezoid rule over the fraction of pixels changed (0..1). One forward pass of 2B images
    per point, in eval mode (restored after).

    Args:
        model: Maps (B, 3, H, W) images to logits (B, C), with ``class_index`` as :class:`~.model.GAPNet`'s; a
            GAPNet checks ``images`` once, not on each pass.
        images: (B, 3, H, W) RGB in [0, 1].
        maps: (B, h, w) saliency, e.g. from :func:`compute_cams`; only the ranking matters.
        class_idx: The maps' class: ``None`` for the predicted class, an int, or B ints.
        steps: Intervals of the curves (steps + 1 points); torchcam's default 20.
        baseline: ``"zeros"`` (torchcam's default; black here, as the model normalises, not the mean colour of zeros
            of a normalised input) or ``"blur"`` (RISE's insertion baseline: Gaussian blur, kernel 11, sigma 5,
            torchvision's reflect padding where RISE pads with zeros), for both curves (RISE pairs zeros for
            deletion, blur for insertion).

    Returns:
        ``deletion_auc``, ``insertion_auc`` (B,), ``deletion_curve``, ``insertion_curve`` (B, steps + 1), and
        ``fractions`` (steps + 1,), the curves' x values.

    Raises:
        ValueError: For a bad ``maps`` shape, ``steps``, ``baseline`` or ``class_idx``, or images a GAPNet refuses.
    """
    steps = check_positive_int("steps", steps)
    if baseline not in ("zeros", "blur"):
        raise ValueError(f"baseline must be 'zeros' or 'blur', got {baseline!r}")
    forward = model
    if isinstance(model, GAPNet):  # checked once here, not on each of the steps + 1 passes below
        model.check_images(images)
        forward = partial(model, check_input=False)
    if not isinstance(maps, Tensor) or maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps must be (B, h, w) with B = {images.shape[0]}, got {getattr(maps, 'shape', type(maps))}")
    n, _, height, width = images.shape
    pixels = height * width
    with _eval_mode(model), torch.no_grad():
        index = forward(images).argmax(dim=1) if class_idx is None else model.class_index(class_idx, n, images.device)
        saliency = F.interpolate(
            maps[:, None].to(images.device, torch.float32), size=(height, width), mode="bilinear", align_corners=False
        )
        ranks = (
            saliency.flatten(1).argsort(dim=1, descending=True, stable=True).argsort(dim=1).view(n, 1, height, width)
        )
        base = (
            torch.zeros_like(images)
            if baseline == "zeros"
            else gaussian_blur(images, [BLUR_KERNEL] * 2, [BLUR_SIGMA] * 2)
        )
        stride = math.ceil(pixels / steps)
        counts = [min(i * stride, pixels) for i in range(steps + 1)]
        curves = []
        for count in counts:
            changed = ranks < count  # (B, 1, H, W): the top `count` pixels
            batch = torch.cat([torch.where(changed, base, images), torch.where(changed, images, base)])
            probs = forward(batch).float().softmax(dim=1)
            curves.append(probs.gather(1, index.repeat(2)[:, None]).view(2, n))
        deletion, insertion = torch.stack(curves, dim=2).unbind(0)  # (B, steps + 1) each
        fractions = torch.tensor(counts, dtype=torch.float32, device=images.device) / pixels
    return {
        "deletion_auc": torch.trapezoid(deletion, fractions, dim=1),
        "deletion_curve": deletion,
        "fractions": fractions,
        "insertion_auc": torch.trapezoid(insertion, fractions, dim=1),
        "insertion_curve": insertion,
    }
