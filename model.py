"""The GAP-modified AlexNet, its class activation map, and self-describing checkpoints.

The network follows Zhou et al. 2016, "Learning Deep Features for Discriminative Localization":
AlexNet's convolutional layers without the last max-pool, one added 3x3 convolution with 1024
units, global average pooling (GAP) and a single linear layer. Because GAP is the only thing
between the last feature map ``f`` and the linear layer ``(W, b)``, the logit of class ``c`` is

    y_c = sum_k W[c, k] * mean_{x,y} f_k(x, y) + b_c = mean_{x,y} M_c(x, y) + b_c,

where ``M_c(x, y) = sum_k W[c, k] f_k(x, y)`` is the class activation map (CAM). The CAM therefore
costs one small tensor contraction on features the forward pass has already computed.

Example:
    >>> model = AlexNetGAP(num_classes=3)
    >>> logits, cam = model(torch.rand(2, 3, 224, 224), True)
    >>> logits.shape, cam.shape
    (torch.Size([2, 3]), torch.Size([2, 13, 13]))
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CHECKPOINT_FORMAT_VERSION, read_checkpoint, require_entries, save_checkpoint, unwrap_model
from .files import CheckpointError, _first_line, _safe_torch_load, _short_repr, _TorchFileError, atomic_file

logger = logging.getLogger(__name__)

ARCH = "alexnet_gap"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT_SIZE = 64
# torchvision's ImageNet AlexNet: the file name its hub cache uses, and where it comes from.
ALEXNET_WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

PretrainedSpec = bool | str | os.PathLike | None


class PretrainedWeightsError(RuntimeError):
    """ImageNet AlexNet weights were asked for and could not be had."""


class AlexNetGAP(nn.Module):
    """AlexNet with global average pooling and a class activation map.

    Layers: torchvision's ``alexnet().features`` without its last max-pool (so ImageNet weights
    load by key), the CAM paper's added ``Conv2d(256, 1024, 3, stride=1, padding=1)`` + ReLU,
    global average pooling, and ``Linear(1024, num_classes)``. At 224x224 input the feature map,
    and so the CAM, is 13x13.

    The model takes RGB images in [0, 1] and applies the ImageNet normalisation itself; the mean
    and std are buffers saved with the weights.

    Args:
        num_classes: Number of output classes, at least 1.
        pretrained: ``True`` to start the convolutional layers from torchvision's ImageNet
            AlexNet (torch hub cache, downloaded if absent), a path to a local copy of those
            weights, or ``False``/``None`` for random initialisation.
        cam_channels: Units of the added convolution (1024 in the paper).

    Raises:
        ValueError: If ``num_classes`` or ``cam_channels`` is not a positive integer.
        PretrainedWeightsError: If pretrained weights were asked for and cannot be had.
    """

    def __init__(self, num_classes: int, pretrained: PretrainedSpec = False, cam_channels: int = 1024) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("cam_channels", cam_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_classes = num_classes
        self.cam_channels = cam_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        # Index-for-index torchvision's AlexNet.features[:12], so its state dict keys match.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.cam_conv = nn.Sequential(
            nn.Conv2d(256, cam_channels, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(cam_channels, num_classes)
        self._init_layers()
        if pretrained:
            self.load_imagenet_features(None if pretrained is True else pretrained)

    arch = ARCH

    @property
    def model_args(self) -> dict[str, int]:
        """The constructor arguments that rebuild this architecture (pretrained excluded)."""
        return {"num_classes": self.num_classes, "cam_channels": self.cam_channels}

    def new_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the layers the CAM paper adds (not in ImageNet AlexNet)."""
        return [*self.cam_conv.parameters(), *self.fc.parameters()]

    def _init_layers(self) -> None:
        # He initialisation keeps the signal's scale through the ReLU stack; with PyTorch's
        # default init a from-scratch AlexNet without batch norm idles for epochs at the majority
        # class. Pretrained runs overwrite the convolutional part.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def load_imagenet_features(self, weights_path: str | os.PathLike | None = None) -> None:
        """Copy torchvision's ImageNet AlexNet weights into the convolutional layers.

        Args:
            weights_path: A local ``alexnet-owt-7be5be79.pth`` (or any torchvision AlexNet state
                dict). ``None`` takes it from the torch hub cache, downloading it if absent.

        Raises:
            PretrainedWeightsError: If the file is missing or unreadable, the download fails, or
                the weights do not fit AlexNet's convolutional layers.
        """
        state = _read_alexnet_state_dict(weights_path)
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(features, strict=True)
        except RuntimeError as err:
            raise PretrainedWeightsError(
                f"The weights in {weights_path or 'the torch hub cache'} do not fit AlexNet's "
                f"convolutional layers: {err}. Use torchvision's ImageNet AlexNet "
                f"({ALEXNET_WEIGHTS_URL}) or train from scratch (pretrained=False)."
            ) from None

    def forward_features(self, x: Tensor) -> Tensor:
        """Last convolutional feature map.

        Args:
            x: RGB images in [0, 1], shape (B, 3, H, W) with H, W >= 64.

        Returns:
            Feature map ``f``, shape (B, K, h, w) with K = cam_channels (13x13 at 224x224).
        """
        self._check_images(x)
        x = (x - self.mean) / self.std
        return self.cam_conv(self.features(x))

    def _check_images(self, x: Any) -> None:
        """Refuse input the convolutions would fail on deep inside torch.

        Only metadata is read (type, shape, dtype, device), never values: a check such as
        ``x.max()`` would wait for the GPU on every batch.
        """
        if not isinstance(x, Tensor):
            how = "torch.from_numpy(images)" if type(x).__module__ == "numpy" else "torch.as_tensor(images)"
            raise TypeError(
                f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}; use {how}"
            )
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got "
                f"{x.shape[-2]}x{x.shape[-1]}; resize them (e.g. image_size=224)"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"images must be floating point RGB in [0, 1], got dtype {x.dtype}; "
                "convert 0..255 pixel values with images.float() / 255"
            )
        if x.device != self.mean.device:
            raise ValueError(
                f"images are on {x.device} but the model is on {self.mean.device}; "
                f"move them with images.to({str(self.mean.device)!r})"
            )
        # Under autocast the convolutions cast their input themselves. Without it, the
        # normalisation promotes float16/bfloat16 images to the buffers' dtype, which is the
        # weights' dtype, but float64 images stay float64 and a float32 convolution refuses them.
        weight_dtype = self.features[0].weight.dtype
        normalised_dtype = torch.promote_types(x.dtype, self.mean.dtype)
        if normalised_dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            how = "images.float()" if weight_dtype == torch.float32 else f"images.to({weight_dtype})"
            raise ValueError(
                f"images have dtype {x.dtype} but the model's weights are {weight_dtype}; convert them with {how}"
            )

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pooling and the linear layer.

        Args:
            features: (B, K, h, w) from :meth:`forward_features`.

        Returns:
            Logits, shape (B, C).
        """
        return self.fc(features.mean(dim=(2, 3)))

    def class_activation_maps(
        self, features: Tensor, class_idx: int | Sequence[int] | Tensor | None = None
    ) -> Tensor:
        """Raw class activation maps ``M_c(x, y) = sum_k W[c, k] f_k(x, y)``.

        No bias, no softmax on the weights, no normalisation: ``mean_{x,y} M_c + b_c`` is exactly
        the logit of class ``c``. The maps are computed in float32 (float64 for a float64 model)
        even under autocast, so a bf16/fp16 forward pass still returns maps ``.numpy()`` and the
        localisation code take as they are.

        Args:
            features: (B, K, h, w) from :meth:`forward_features`.
            class_idx: ``None`` for the maps of every class, an int for the same class for all
                samples, or B ints (list or (B,) integer tensor), one per sample.

        Returns:
            (B, C, h, w) for every class, or (B, h, w) for the chosen class of each sample;
            float32, or float64 for float64 features.

        Raises:
            ValueError: If ``features`` is not (B, K, h, w) with K = ``cam_channels``, or
                ``class_idx`` is out of range or has the wrong length.
        """
        if not isinstance(features, Tensor) or features.ndim != 4 or features.shape[1] != self.cam_channels:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"features must be (B, {self.cam_channels}, h, w) as forward_features returns, got {shape}"
            )
        index = None if class_idx is None else self._class_index(class_idx, features.shape[0], features.device)
        return self._cams(features, index)

    def _cams(self, features: Tensor, index: Tensor | None) -> Tensor:
        """:meth:`class_activation_maps` without the checks; ``index`` is None or valid (B,) long."""
        dtype = torch.promote_types(features.dtype, torch.float32)
        # Autocast would run the einsum in bf16/fp16 again; the maps are small, so full precision
        # costs nothing and keeps the returned map a dtype numpy and the metrics accept.
        with torch.autocast(features.device.type, enabled=False):
            features = features.to(dtype)
            weight = self.fc.weight.to(dtype)  # (C, K)
            if index is None:
                return torch.einsum("ck,bkhw->bchw", weight, features)  # (B, C, h, w)
            return torch.einsum("bk,bkhw->bhw", weight[index], features)  # (B, h, w)

    def forward(
        self, x: Tensor, return_cam: bool = False, class_idx: int | Sequence[int] | Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classify, and optionally return the CAM from the same forward pass.

        Args:
            x: RGB images in [0, 1], shape (B, 3, H, W), H, W >= 64.
            return_cam: Also return the class activation map (``model(x, True)`` works).
            class_idx: Class whose map to return: ``None`` for each sample's predicted class,
                an int for the same class for all, or B ints (list or tensor), one per sample.

        Returns:
            Logits (B, C); with ``return_cam``, ``(logits, cam)`` with cam (B, h, w). The logits
            have the dtype autocast gives them; the cam is always float32 (float64 for a float64
            model).

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: If ``x`` is not (B, 3, H, W) floating point of the model's dtype on its
                device, or ``class_idx`` is out of range or has the wrong length.
        """
        features = self.forward_features(x)
        logits = self.forward_head(features)
        if not return_cam:
            return logits
        if class_idx is None:
            index = logits.argmax(dim=1)
        else:
            index = self._class_index(class_idx, batch_size=x.shape[0], device=x.device)
        return logits, self._cams(features, index)

    def _class_index(self, class_idx: int | Sequence[int] | Tensor, batch_size: int, device: torch.device) -> Tensor:
        """``class_idx`` as a (B,) long tensor on ``device``, checked against the classes."""
        if isinstance(class_idx, str | bytes):
            raise ValueError(
                f"class_idx must be an int or one int per sample, got the string {class_idx!r}; "
                "map class names to indices with the dataset's class_to_idx"
            )
        if isinstance(class_idx, int) and not isinstance(class_idx, bool) and not 0 <= class_idx < self.num_classes:
            # Checked before torch.as_tensor, which cannot hold ints beyond 64 bits.
            raise ValueError(f"class_idx values must lie in [0, {self.num_classes - 1}], got {class_idx}")
        try:
            index = torch.as_tensor(class_idx, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise ValueError(
                f"class_idx must be an int, or one int in [0, {self.num_classes - 1}] per sample "
                f"(list or tensor), got {_short_repr(class_idx)} ({err})"
            ) from None
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"class_idx must hold integers, got dtype {index.dtype}")
        index = index.long()
        if index.ndim == 0:
            index = index.expand(batch_size)
        if index.shape != (batch_size,):
            raise ValueError(
                f"class_idx must be an int or one class per sample ({batch_size}), "
                f"got shape {tuple(index.shape)}"
            )
        # One host sync for both bounds (the evaluation loop passes labels here every batch).
        low, high = torch.stack(torch.aminmax(index)).tolist() if batch_size else (0, 0)
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"class_idx values must lie in [0, {self.num_classes - 1}], "
                f"got {index.tolist() if batch_size <= 16 else 'values outside it'}"
            )
        return index


def _read_alexnet_state_dict(weights_path: str | os.PathLike | None) -> dict[str, Tensor]:
    """torchvision AlexNet state dict from a local file or the torch hub cache."""
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_URL.rsplit("/", 1)[1]
    how_to = (
        f"Download {ALEXNET_WEIGHTS_URL} on a machine with internet, then either put it in "
        f"{hub_file.parent} or pass its path (--pretrained PATH); "
        "or train from scratch (--pretrained false)."
    )
    if weights_path is None and not hub_file.is_file():
        try:
            return torch.hub.load_state_dict_from_url(ALEXNET_WEIGHTS_URL, progress=True, weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as err:
            raise PretrainedWeightsError(f"Could not get ImageNet AlexNet weights ({_first_line(err)}). {how_to}") from None
    if weights_path is None:
        # The hub's copy, read like a local file so a damaged one gets the same one-line error.
        path, how_to = hub_file, f"Delete it to download it again, or: {how_to}"
    else:
        path = Path(weights_path).expanduser()
    if path.is_dir():
        raise PretrainedWeightsError(
            f"Pretrained weights path {str(path)!r} is a folder; pass the weights file in it "
            f"(e.g. {str(path / hub_file.name)!r}). {how_to}"
        )
    if not path.is_file():
        raise PretrainedWeightsError(f"Pretrained weights file {str(path)!r} does not exist. {how_to}")
    try:
        state = _safe_torch_load(path, torch.device("cpu"))
    except _TorchFileError as err:
        raise PretrainedWeightsError(
            f"{str(path)!r} is not a torch weights file ({err}). {how_to}" if err.kind == "not_torch"
            else f"Could not read pretrained weights {str(path)!r} ({err}). {how_to}"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict", state.get("model")), Mapping):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, Mapping):
        raise PretrainedWeightsError(f"{str(path)!r} holds no state dict. {how_to}")
    return dict(state)


# --------------------------------------------------------------------------------------------
# Reading torch files safely




def build_model(arch: str, model_args: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from the architecture name and arguments a checkpoint stores."""
    if arch != ARCH:
        raise CheckpointError(f"unknown architecture {arch!r}; this version knows {ARCH!r}")
    return AlexNetGAP(**dict(model_args))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint file alone.

    The file is read with ``torch.load(weights_only=True)``: a checkpoint carrying a pickled
    object that would run code is refused, and nothing in it runs.

    Args:
        path: A file written by :func:`save_checkpoint`.
        map_location: Device for the model and tensors; ``None`` means CPU, so a file saved on a
            GPU loads anywhere and the model takes CPU batches straight from a DataLoader.

    Returns:
        ``(model, checkpoint)``: the model in eval mode, and the checkpoint dict (``class_names``,
        ``car_type``, ``car_brand``, ``car_production_year``, ``image_size``, ``epoch``, ...).

    Raises:
        CheckpointError: If the file is not a readable checkpoint of this project (see
            :func:`CAM_Stanford_Cars.checkpoint.read_checkpoint` for the other errors).
    """
    checkpoint, device = read_checkpoint(path, map_location)
    model = build_model(checkpoint["arch"], checkpoint["model_args"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit its architecture: {err}") from None
    return model.to(device).eval(), checkpoint
