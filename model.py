"""The GAP network and its class activation map (CAM), after Zhou et al. 2016, "Learning Deep
Features for Discriminative Localization".

AlexNet's convolutional layers (without the last max-pool) and one added 3x3 convolution give a
feature map ``f`` of K channels; global average pooling (GAP) and one linear layer ``(W, b)``
give the logits. For images ``x`` of shape (B, 3, H, W):

    f = forward_features(x)                                   # (B, K, h, w), 13x13 at 224x224
    y_c = sum_k w_k^c * mean_{x,y} f_k(x, y) + b_c            # forward_head: (B, C)
    M_c(x, y) = sum_k w_k^c f_k(x, y)                         # class_activation_maps: (B, C, h, w)

with ``w_k^c = W[c, k]``. Because GAP is the only step between ``f`` and the linear layer,
``y_c = mean_{x,y} M_c(x, y) + b_c``: the CAM is the logit before it is averaged over space, and
costs one einsum on features the forward pass has already computed (no hooks).

Example:
    >>> model = AlexNetGAP(num_classes=3)
    >>> logits, cam = model(torch.rand(2, 3, 224, 224), True)
    >>> logits.shape, cam.shape
    (torch.Size([2, 3]), torch.Size([2, 13, 13]))
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# Checkpoint and file helpers lived here once; they stay importable from the model.
from .checkpoint import CHECKPOINT_FORMAT_VERSION, read_checkpoint, require_entries, save_checkpoint, unwrap_model
from .files import CheckpointError, _first_line, _safe_torch_load, _TorchFileError, atomic_file, default_file_mode, file_in_the_way

__all__ = [
    "ALEXNET_WEIGHTS_URL", "ARCH", "BACKBONES", "CHECKPOINT_FORMAT_VERSION", "IMAGENET_MEAN", "IMAGENET_STD",
    "MIN_INPUT_SIZE", "AlexNetGAP", "CheckpointError", "PretrainedSpec", "PretrainedWeightsError", "atomic_file",
    "build_model", "default_file_mode", "file_in_the_way", "load_checkpoint", "require_entries", "save_checkpoint",
    "unwrap_model",
]

ARCH = "alexnet_gap"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT_SIZE = 64
# torchvision's ImageNet AlexNet; the hub cache keeps it under this file name.
ALEXNET_WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

PretrainedSpec = bool | str | os.PathLike | None
ClassIndex = int | Sequence[int] | Tensor


class PretrainedWeightsError(RuntimeError):
    """ImageNet AlexNet weights were asked for and could not be had."""


class AlexNetGAP(nn.Module):
    """AlexNet with global average pooling and a class activation map.

    torchvision's ``alexnet().features`` without its last max-pool (so ImageNet weights load by
    key), the CAM paper's ``Conv2d(256, K, 3, padding=1)`` + ReLU, GAP and ``Linear(K, C)``.
    Takes RGB in [0, 1]; the ImageNet mean and std are buffers saved with the weights.

    Args:
        num_classes: C, at least 1.
        pretrained: ``True`` for torchvision's ImageNet AlexNet from the torch hub cache
            (downloaded if absent), a path to a local copy, or ``False``/``None`` for random init.
        cam_channels: K, the units of the added convolution (1024 in the paper).

    Raises:
        ValueError: If ``num_classes`` or ``cam_channels`` is not a positive integer.
        PretrainedWeightsError: If pretrained weights were asked for and cannot be had.
    """

    arch = ARCH

    def __init__(self, num_classes: int, pretrained: PretrainedSpec = False, cam_channels: int = 1024) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("cam_channels", cam_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_classes, self.cam_channels = num_classes, cam_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        # Index for index torchvision's AlexNet.features[:12], so its state dict keys match.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        )
        self.cam_conv = nn.Sequential(nn.Conv2d(256, cam_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cam_channels, num_classes)
        # He init keeps the signal's scale through the ReLU stack: with PyTorch's default init a
        # from-scratch AlexNet without batch norm idles for epochs at the majority class.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if pretrained:
            self.load_imagenet_features(None if pretrained is True else pretrained)

    @property
    def model_args(self) -> dict[str, int]:
        """The constructor arguments that rebuild this architecture (pretrained excluded)."""
        return {"num_classes": self.num_classes, "cam_channels": self.cam_channels}

    def new_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the layers the CAM paper adds (not in ImageNet AlexNet)."""
        return [*self.cam_conv.parameters(), *self.fc.parameters()]

    def load_imagenet_features(self, weights_path: str | os.PathLike | None = None) -> None:
        """Copy torchvision's ImageNet AlexNet weights (a local ``alexnet-owt-7be5be79.pth``, or the
        torch hub cache's for ``None``) into the convolutional layers.

        Raises:
            PretrainedWeightsError: If the file is missing or unreadable, the download fails, or
                the weights do not fit AlexNet's convolutional layers.
        """
        state = _read_alexnet_state_dict(weights_path)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        try:
            self.features.load_state_dict(features, strict=True)
        except RuntimeError as err:
            raise PretrainedWeightsError(
                f"The weights in {weights_path or 'the torch hub cache'} do not fit AlexNet's convolutional layers: "
                f"{err}. Use torchvision's ImageNet AlexNet ({ALEXNET_WEIGHTS_URL}) or train from scratch (pretrained=False)."
            ) from None

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map ``f``: (B, 3, H, W) RGB in [0, 1], H, W >= 64 -> (B, K, h, w)."""
        self._check_images(x)
        return self.cam_conv(self.features((x - self.mean) / self.std))

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pooling and the linear layer: (B, K, h, w) -> logits (B, C)."""
        return self.fc(features.mean(dim=(2, 3)))

    def class_activation_maps(self, features: Tensor, class_idx: ClassIndex | None = None) -> Tensor:
        """Raw class activation maps ``M_c(x, y) = sum_k w_k^c f_k(x, y)``.

        No bias, softmax or normalisation: ``mean_{x,y} M_c + b_c`` is exactly the logit of class
        ``c``. Float32 (float64 for float64 features) even under autocast, so numpy and the
        localisation metrics take the maps of a bf16/fp16 forward pass as they are.

        Args:
            features: (B, K, h, w) from :meth:`forward_features`.
            class_idx: ``None`` for every class, an int for one class for all, or B ints (list or
                (B,) integer tensor), one per sample.

        Returns:
            (B, C, h, w) for every class, or (B, h, w) for the chosen class of each sample.

        Raises:
            ValueError: If ``features`` is not (B, K, h, w), or ``class_idx`` is out of range.
        """
        if not isinstance(features, Tensor) or features.ndim != 4 or features.shape[1] != self.cam_channels:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must be (B, {self.cam_channels}, h, w) as forward_features returns, got {shape}")
        index = None if class_idx is None else self._class_index(class_idx, features.shape[0], features.device)
        return self._cams(features, index)

    def _cams(self, features: Tensor, index: Tensor | None) -> Tensor:
        """:meth:`class_activation_maps` for a valid (B,) long ``index`` or None, unchecked."""
        dtype = torch.promote_types(features.dtype, torch.float32)
        # Autocast would run the einsum in bf16/fp16 again; the maps are small, so full precision
        # costs nothing and keeps them a dtype numpy and the metrics accept.
        with torch.autocast(features.device.type, enabled=False):
            features, weight = features.to(dtype), self.fc.weight.to(dtype)  # (B, K, h, w), (C, K)
            if index is None:
                return torch.einsum("ck,bkhw->bchw", weight, features)  # (B, C, h, w)
            return torch.einsum("bk,bkhw->bhw", weight[index], features)  # (B, h, w)

    def forward(
        self, x: Tensor, return_cam: bool = False, class_idx: ClassIndex | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classify, and optionally return the CAM from the same forward pass.

        Args:
            x: RGB images in [0, 1], shape (B, 3, H, W), H, W >= 64.
            return_cam: Also return the class activation map (``model(x, True)`` works).
            class_idx: Whose map: ``None`` for each sample's predicted class, an int for the same
                class for all, or B ints (list or tensor), one per sample.

        Returns:
            Logits (B, C), in the dtype autocast gives them; with ``return_cam``,
            ``(logits, cam)`` with cam (B, h, w) in float32 (float64 for a float64 model).

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: If ``x`` is not (B, 3, H, W) floating point of the model's dtype on its
                device, or ``class_idx`` is out of range.
        """
        features = self.forward_features(x)
        logits = self.forward_head(features)
        if not return_cam:
            return logits
        index = logits.argmax(dim=1) if class_idx is None else self._class_index(class_idx, x.shape[0], x.device)
        return logits, self._cams(features, index)

    def _check_images(self, x: Any) -> None:
        """Refuse input the convolutions would fail on deep inside torch.

        Reads metadata only: a value check such as ``x.max()`` would wait for the GPU every batch.
        """
        if not isinstance(x, Tensor):
            how = "from_numpy" if type(x).__module__ == "numpy" else "as_tensor"
            raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}; use torch.{how}(images)")
        device, weight_dtype = self.mean.device, self.features[0].weight.dtype
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            size = f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}"
            raise ValueError(f"images must be at least {size}, got {x.shape[-2]}x{x.shape[-1]}; resize them (e.g. image_size=224)")
        if not x.is_floating_point():
            raise ValueError(
                f"images must be floating point RGB in [0, 1], got dtype {x.dtype}; "
                "convert 0..255 pixel values with images.float() / 255"
            )
        if x.device != device:
            raise ValueError(f"images are on {x.device} but the model is on {device}; move them with images.to({str(device)!r})")
        # Without autocast the normalisation promotes float16/bfloat16 images to the buffers'
        # (= the weights') dtype, but float64 images stay float64 and a float32 convolution refuses them.
        if torch.promote_types(x.dtype, self.mean.dtype) != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            how = "images.float()" if weight_dtype == torch.float32 else f"images.to({weight_dtype})"
            raise ValueError(f"images have dtype {x.dtype} but the model's weights are {weight_dtype}; convert them with {how}")

    def _class_index(self, class_idx: ClassIndex, batch_size: int, device: torch.device) -> Tensor:
        """``class_idx`` as a (B,) long tensor on ``device``, checked against the classes."""
        span = f"[0, {self.num_classes - 1}]"
        if isinstance(class_idx, str | bytes):
            raise ValueError(
                f"class_idx must be an int or one int per sample, got the string {class_idx!r}; "
                "map class names to indices with the dataset's class_to_idx"
            )
        if isinstance(class_idx, int) and not isinstance(class_idx, bool) and not 0 <= class_idx < self.num_classes:
            # Before torch.as_tensor, which cannot hold ints beyond 64 bits.
            raise ValueError(f"class_idx values must lie in {span}, got {class_idx}")
        try:
            index = torch.as_tensor(class_idx, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise ValueError(f"class_idx must be an int, or one int in {span} per sample, got {reprlib.repr(class_idx)} ({err})") from None
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"class_idx must hold integers, got dtype {index.dtype}")
        index = index.long().expand(batch_size) if index.ndim == 0 else index.long()
        if index.shape != (batch_size,):
            raise ValueError(f"class_idx must be an int or one class per sample ({batch_size}), got shape {tuple(index.shape)}")
        # One host sync for both bounds: the evaluation loop passes labels here every batch.
        low, high = torch.stack(torch.aminmax(index)).tolist() if batch_size else (0, 0)
        if low < 0 or high >= self.num_classes:
            got = index.tolist() if batch_size <= 16 else "values outside it"
            raise ValueError(f"class_idx values must lie in {span}, got {got}")
        return index


def _read_alexnet_state_dict(weights_path: str | os.PathLike | None) -> dict[str, Tensor]:
    """torchvision's AlexNet state dict from a local file or the torch hub cache (downloaded if absent)."""
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_URL.rsplit("/", 1)[1]
    how_to = (
        f"Download {ALEXNET_WEIGHTS_URL} on a machine with internet, then either put it in {hub_file.parent} "
        "or pass its path (--pretrained PATH); or train from scratch (--pretrained false)."
    )
    if weights_path is None:
        if not hub_file.is_file():
            try:
                hub_file.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(ALEXNET_WEIGHTS_URL, str(hub_file), progress=True)
            except (OSError, RuntimeError, ValueError) as err:
                raise PretrainedWeightsError(f"Could not get ImageNet AlexNet weights ({_first_line(err)}). {how_to}") from None
        # The cached copy is read like a local file, so a damaged one gets the same one-line error.
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
        name = repr(str(path))
        what = f"{name} is not a torch weights file" if err.kind == "not_torch" else f"Could not read pretrained weights {name}"
        raise PretrainedWeightsError(f"{what} ({err}). {how_to}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict", state.get("model")), Mapping):
        state = state.get("state_dict", state.get("model"))  # a training checkpoint around the weights
    if not isinstance(state, Mapping):
        raise PretrainedWeightsError(f"{str(path)!r} holds no state dict. {how_to}")
    return dict(state)


# The registry of backbones a checkpoint's "arch" may name: adding a network is one entry.
BACKBONES: dict[str, type[nn.Module]] = {ARCH: AlexNetGAP}


def build_model(arch: str, model_args: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from the architecture name and arguments a checkpoint stores.

    Raises:
        CheckpointError: If ``arch`` is not in :data:`BACKBONES` or its arguments do not fit it.
    """
    if arch not in BACKBONES:
        raise CheckpointError(f"unknown architecture {arch!r}; this version knows {', '.join(map(repr, BACKBONES))}")
    try:
        return BACKBONES[arch](**dict(model_args))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the arguments {dict(model_args)} do not fit architecture {arch!r}: {err}") from None


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a file written by :func:`save_checkpoint`, and nothing else.

    Read with ``torch.load(weights_only=True)``: nothing in the file runs. ``map_location=None``
    means CPU, so a file saved on a GPU loads anywhere.

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
