"""GAP networks and their class activation maps (CAM), after Zhou et al. 2016, "Learning Deep Features for
Discriminative Localization". A backbone gives K feature maps ``f``; global average pooling (GAP) and a linear
layer ``(W, b)`` give the logits. For images ``x`` (B, 3, H, W), with ``w_k^c = W[c, k]``:

    f = forward_features(x)                          # (B, K, h, w): 13x13 for AlexNet, 14x14 for the others at 224
    y_c = sum_k w_k^c * mean_{x,y} f_k(x, y) + b_c   # forward_head: (B, C)
    M_c(x, y) = sum_k w_k^c f_k(x, y)                # class_activation_maps: (B, C, h, w)

GAP is linear, so ``y_c = mean_{x,y} M_c(x, y) + b_c``: the CAM is the logit before it is averaged over
space, one einsum on features the forward pass already computed (no hooks).
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import models

from .checkpoint import CheckpointError, read_checkpoint
from .safe_load import TorchFileError, first_line, safe_torch_load

__all__ = [
    "ALEXNET_WEIGHTS_URL",
    "ARCH",
    "ARCHS",
    "BACKBONES",
    "IMAGENET_ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_INPUT_SIZE",
    "VGG16GAP",
    "AlexNetGAP",
    "ClassIndex",
    "GAPNet",
    "ImageNetResNet",
    "PretrainedSpec",
    "PretrainedWeightsError",
    "ResNetGAP",
    "build_model",
    "check_positive_int",
    "create_model",
    "imagenet_model",
    "load_checkpoint",
]

ARCH = "alexnet_gap"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_INPUT_SIZE = 64
ALEXNET_WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # the hub cache keeps its name
PretrainedSpec = bool | str | os.PathLike | None
ClassIndex = int | Sequence[int] | Tensor


class PretrainedWeightsError(RuntimeError):
    """ImageNet AlexNet weights were asked for and could not be had."""


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int (a bool is not), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class GAPNet(nn.Module):
    """A backbone, global average pooling and one linear layer ``fc``: the network whose CAM is exact. A subclass
    builds ``_features`` (normalised images -> f), ``fc``, lists its new layers and its ImageNet weights files.

    Args:
        num_classes: C, at least 1.
        pretrained: ``True`` for torchvision's ImageNet weights from the torch hub cache (downloaded if absent), a
            path to a local copy, or ``False``/``None`` for random init.
    """

    arch: str
    title: str  # the backbone's name in messages
    weights: tuple[Any, ...] = ()  # torchvision's weights enums the backbone accepts; the first is downloaded
    # True for torchvision's ImageNet classifier as it is: the file fills the whole network, fc included, and no
    # training command's --pretrained flag is there to name in the messages.
    imagenet_head = False
    cam_channels: int

    def __init__(self, num_classes: int, **model_args: int) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), *model_args.items()):
            check_positive_int(name, value)
        self.num_classes = num_classes
        self.model_args = {"num_classes": num_classes, **model_args}  # what rebuilds it from a checkpoint
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _init_new_layers(self, pretrained: PretrainedSpec) -> None:
        """N(0, 0.01) for ``fc``, as the CAM paper (``cam_conv`` keeps PyTorch's default init); then ImageNet
        weights if asked."""
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if pretrained:
            self.load_imagenet_features(None if pretrained is True else pretrained)

    def new_layers(self) -> list[nn.Module]:
        """The layers the CAM network adds to the ImageNet backbone."""
        raise NotImplementedError

    def new_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the layers the CAM paper adds (not in the ImageNet backbone)."""
        return [p for layer in self.new_layers() for p in layer.parameters()]

    def _load_backbone(self, state: Mapping[str, Tensor]) -> None:
        """Copy a torchvision ImageNet state dict into the backbone's layers (``RuntimeError`` if it does not fit)."""
        raise NotImplementedError

    def load_imagenet_features(self, weights_path: str | os.PathLike | None = None) -> None:
        """Copy torchvision's ImageNet weights (a local file, or the hub cache's for None) into the backbone.

        Raises:
            PretrainedWeightsError: If the weights cannot be had, read, or fitted to the layers.
        """
        urls = [w.url for w in self.weights]
        cached = [Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1] for url in urls]
        hub_file = next((path for path in cached if path.is_file()), cached[0])
        how_to = f"Download {urls[0]} on a machine with internet, then either put it in {hub_file.parent} " + (
            "or pass its path."
            if self.imagenet_head
            else "or pass its path (--pretrained PATH); or train from scratch (--pretrained false)."
        )
        path = hub_file if weights_path is None else Path(weights_path).expanduser()
        if weights_path is None:
            try:
                if not hub_file.is_file():
                    hub_file.parent.mkdir(parents=True, exist_ok=True)
                    torch.hub.download_url_to_file(urls[0], str(hub_file), progress=True)
            except (OSError, RuntimeError, ValueError) as err:
                raise PretrainedWeightsError(
                    f"Could not get ImageNet {self.title} weights ({first_line(err)}). {how_to}"
                ) from None
            how_to = f"Delete it to download it again, or: {how_to}"  # a damaged cached copy gets a local file's errors
        name = repr(str(path))
        if path.is_dir():
            raise PretrainedWeightsError(
                f"Pretrained weights path {name} is a folder; pass the weights file in it "
                f"(e.g. {str(path / hub_file.name)!r}). {how_to}"
            )
        if not path.is_file():
            raise PretrainedWeightsError(f"Pretrained weights file {name} does not exist. {how_to}")
        try:
            state = safe_torch_load(path, torch.device("cpu"))
        except TorchFileError as err:
            what = (
                f"{name} is not a torch weights file"
                if err.kind == "not_torch"
                else f"Could not read pretrained weights {name}"
            )
            raise PretrainedWeightsError(f"{what} ({err}). {how_to}") from None
        if not isinstance(state, Mapping):
            raise PretrainedWeightsError(f"{name} holds no state dict. {how_to}")
        try:
            self._load_backbone(state)
        except RuntimeError as err:
            layers, or_else = (
                ("layers", "") if self.imagenet_head else ("convolutional layers", " or train from scratch")
            )
            raise PretrainedWeightsError(
                f"The weights in {name} do not fit {self.title}'s {layers}: {err}. Use "
                f"torchvision's ImageNet weights ({urls[0]}){or_else}."
            ) from None

    def forward_features(self, x: Tensor, *, check_input: bool = True) -> Tensor:
        """The last feature map ``f``: (B, 3, H, W) RGB in [0, 1], H, W >= 64 -> (B, K, h, w).

        ``check_input=False`` skips :meth:`check_images`, for images already checked: the library's loops check a
        batch once, then run the model on it, or on masked or noisy copies of it, many times.
        """
        if check_input:
            self.check_images(x)
        return self._features((x - self.mean) / self.std)

    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pooling and the linear layer: (B, K, h, w) -> logits (B, C)."""
        return self.fc(features.mean(dim=(2, 3)))

    def class_activation_maps(self, features: Tensor, class_idx: ClassIndex | None = None) -> Tensor:
        """Raw maps ``M_c(x, y) = sum_k w_k^c f_k(x, y)``: no bias, softmax or normalisation.

        Args:
            features: (B, K, h, w) from :meth:`forward_features`.
            class_idx: ``None`` for every class, an int for one class for all, or B ints, one per sample.

        Returns:
            (B, C, h, w) for every class, or (B, h, w) for one per sample; float32 under autocast too (float64
            for float64).

        Raises:
            ValueError: If ``features`` is not (B, K, h, w), or ``class_idx`` is out of range.
        """
        if not isinstance(features, Tensor) or features.ndim != 4 or features.shape[1] != self.cam_channels:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"features must be (B, {self.cam_channels}, h, w) as forward_features returns, got {shape}"
            )
        index = None if class_idx is None else self.class_index(class_idx, features.shape[0], features.device)
        return self.cam(features, index)

    def cam(self, features: Tensor, index: Tensor | None) -> Tensor:
        """:meth:`class_activation_maps` for trusted input: ``index`` is None or a valid (B,) long tensor."""
        dtype = torch.promote_types(features.dtype, torch.float32)
        # Autocast would run the einsum in bf16/fp16 again; the maps are small, so full precision costs nothing.
        with torch.autocast(features.device.type, enabled=False):
            features, weight = features.to(dtype), self.fc.weight.to(dtype)  # (B, K, h, w), (C, K)
            if index is None:
                return torch.einsum("ck,bkhw->bchw", weight, features)  # (B, C, h, w)
            return torch.einsum("bk,bkhw->bhw", weight[index], features)  # (B, h, w)

    def forward(
        self, x: Tensor, return_cam: bool = False, class_idx: ClassIndex | None = None, *, check_input: bool = True
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Classify RGB images in [0, 1] and, with ``return_cam``, return their CAM from the same forward pass.

        Args:
            x: (B, 3, H, W), H, W >= 64, floating point of the model's dtype, on its device.
            return_cam: Also return the CAM (``model(x, True)`` works).
            class_idx: Whose map: ``None`` for each sample's predicted class, an int for all, or B ints.
            check_input: ``False`` for images already checked (:meth:`forward_features`).

        Returns:
            Logits (B, C), or ``(logits, cam)`` with cam (B, h, w) in float32 (float64 for a float64 model).

        Raises:
            TypeError, ValueError: If ``x`` is not as above, or ``class_idx`` is out of range.
        """
        features = self.forward_features(x, check_input=check_input)
        logits = self.forward_head(features)
        if not return_cam:
            return logits
        # The predicted class is valid by construction: no check and no host sync.
        index = logits.argmax(dim=1) if class_idx is None else self.class_index(class_idx, len(x), features.device)
        return logits, self.cam(features, index)

    def check_images(self, x: Any) -> None:
        """Refuse input the convolutions would fail on deep inside torch (metadata only: no GPU sync).

        Raises:
            TypeError: If ``x`` is not a tensor.
            ValueError: If ``x`` is not (B, 3, H, W) with H, W >= 64, floating point, on the model's device and of
                a dtype its weights take.
        """
        if not isinstance(x, Tensor):
            how = "from_numpy" if type(x).__module__ == "numpy" else "as_tensor"
            raise TypeError(
                f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}; use torch.{how}(images)"
            )
        device, dtype = self.mean.device, self.fc.weight.dtype
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {x.shape[-2]}x{x.shape[-1]}; "
                "resize them (e.g. image_size=224)"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"images must be floating point RGB in [0, 1], got dtype {x.dtype}; "
                "convert 0..255 pixel values with images.float() / 255"
            )
        if x.device != device:
            raise ValueError(
                f"images are on {x.device} but the model is on {device}; move them with images.to({str(device)!r})"
            )
        # Normalising promotes half images to the buffers' dtype, but float64 stays float64 and a float32 conv
        # refuses it.
        if torch.promote_types(x.dtype, self.mean.dtype) != dtype and not torch.is_autocast_enabled(x.device.type):
            how = "images.float()" if dtype == torch.float32 else f"images.to({dtype})"
            raise ValueError(
                f"images have dtype {x.dtype} but the model's weights are {dtype}; convert them with {how}"
            )

    def class_index(self, class_idx: ClassIndex, batch_size: int, device: torch.device) -> Tensor:
        """``class_idx`` as a (B,) long tensor on ``device``, checked against the classes."""
        span = f"[0, {self.num_classes - 1}]"
        if isinstance(class_idx, str | bytes):
            raise ValueError(
                f"class_idx must be an int or one int per sample, got the string {class_idx!r}; "
                "map class names to indices with the dataset's class_to_idx"
            )
        if isinstance(class_idx, int) and not isinstance(class_idx, bool) and not 0 <= class_idx < self.num_classes:
            raise ValueError(f"class_idx values must lie in {span}, got {class_idx}")  # before as_tensor: no int128
        try:
            index = torch.as_tensor(class_idx, device=device)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise ValueError(
                f"class_idx must be an int, or one int in {span} per sample, got {reprlib.repr(class_idx)} ({err})"
            ) from None
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"class_idx must hold integers, got dtype {index.dtype}")
        index = index.long().expand(batch_size) if index.ndim == 0 else index.long()
        if index.shape != (batch_size,):
            raise ValueError(
                f"class_idx must be an int or one class per sample ({batch_size}), got shape {tuple(index.shape)}"
            )
        if ((index < 0) | (index >= self.num_classes)).any():  # one host sync: evaluation passes labels every batch
            raise ValueError(
                f"class_idx values must lie in {span}, "
                f"got {index.tolist() if batch_size <= 16 else 'values outside it'}"
            )
        return index


class _ConvGAP(GAPNet):
    """A backbone of plain convolutions (``features``, torchvision's keys), the CAM paper's added ``cam_conv`` and
    ``fc``."""

    def __init__(
        self,
        num_classes: int,
        pretrained: PretrainedSpec,
        cam_channels: int,
        features: nn.Sequential,
        feature_channels: int,
    ) -> None:
        super().__init__(num_classes, cam_channels=cam_channels)
        self.cam_channels = cam_channels
        self.features = features
        self.cam_conv = nn.Sequential(nn.Conv2d(feature_channels, cam_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cam_channels, num_classes)
        # He init for every backbone convolution (as torchvision's VGG): with PyTorch's default init a from-scratch
        # network without batch norm idles for epochs at the majority class.
        for conv in (m for m in self.features if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self._init_new_layers(pretrained)

    def new_layers(self) -> list[nn.Module]:
        return [self.cam_conv, self.fc]

    def _load_backbone(self, state: Mapping[str, Tensor]) -> None:
        own = self.features.state_dict().keys()  # the file's later layers (pool5, the classifier) are not ours
        self.features.load_state_dict(
            {
                k.removeprefix("features."): v
                for k, v in state.items()
                if k.startswith("features.") and k.removeprefix("features.") in own
            }
        )

    def _features(self, x: Tensor) -> Tensor:
        return self.cam_conv(self.features(x))


class AlexNetGAP(_ConvGAP):
    """AlexNet's convolutions (torchvision's ``alexnet().features[:12]``, so ImageNet weights load by key), the CAM
    paper's ``Conv2d(256, K, 3, padding=1)`` + ReLU, GAP and ``Linear(K, C)``; normalises RGB in [0, 1] itself.

    Args:
        num_classes, cam_channels: C, and K the units of the added convolution (1024 in the paper); each at least 1.
        pretrained: As :class:`GAPNet`.

    Raises:
        ValueError: If ``num_classes`` or ``cam_channels`` is not a positive integer.
        PretrainedWeightsError: If pretrained weights were asked for and cannot be had.
    """

    arch, title = ARCH, "AlexNet"
    weights = (models.AlexNet_Weights.IMAGENET1K_V1,)

    def __init__(self, num_classes: int, pretrained: PretrainedSpec = False, cam_channels: int = 1024) -> None:
        features = nn.Sequential(  # index for index torchvision's AlexNet.features[:12], so state dict keys match
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        super().__init__(num_classes, pretrained, cam_channels, features, feature_channels=256)


class VGG16GAP(_ConvGAP):
    """The CAM paper's VGGnet-GAP, as clovaai/wsolevaluation builds it: VGG16's convolutions up to conv5_3 (pool5
    removed: a 14x14 map at 224), ``Conv2d(512, K, 3, padding=1)`` + ReLU, GAP and ``Linear(K, C)``.

    Args:
        num_classes, cam_channels, pretrained: As :class:`AlexNetGAP` (torchvision's ImageNet VGG16).
    """

    arch, title = "vgg16_gap", "VGG16"
    weights = (models.VGG16_Weights.IMAGENET1K_V1,)

    def __init__(self, num_classes: int, pretrained: PretrainedSpec = False, cam_channels: int = 1024) -> None:
        features = models.vgg.make_layers(models.vgg.cfgs["D"])[:-1]  # torchvision's VGG16 features, less pool5
        super().__init__(num_classes, pretrained, cam_channels, features, feature_channels=512)


class ResNetGAP(GAPNet):
    """torchvision's ResNet with ``layer4`` at stride 1 (a 14x14 map at 224, as wsolevaluation's ResNet-CAM), GAP and
    ``Linear(K, C)``: its own last block is the CAM's feature map, K = 512 (ResNet-18) or 2048 (ResNet-50).

    Args:
        num_classes, pretrained: As :class:`GAPNet`.
        depth: 18 or 50.
    """

    arch = "resnet_gap"

    def __init__(self, num_classes: int, pretrained: PretrainedSpec = False, depth: int = 50) -> None:
        if depth not in RESNETS:
            raise ValueError(f"depth must be one of {sorted(RESNETS)}, got {depth!r}")
        super().__init__(num_classes, depth=depth)
        self.arch, self.title, self.weights = f"resnet{depth}_gap", f"ResNet-{depth}", RESNETS[depth][1]
        resnet = RESNETS[depth][0]()
        if not self.imagenet_head:  # layer4 at stride 1: its stride-2 convolution and its shortcut's
            for module in resnet.layer4[0].modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)
        self.features = nn.Sequential(*list(resnet.children())[:-2])  # conv1 .. layer4: torchvision's keys, renumbered
        self.cam_channels = resnet.fc.in_features
        self.fc = nn.Linear(self.cam_channels, num_classes)
        self._init_new_layers(pretrained)

    def new_layers(self) -> list[nn.Module]:
        return [self.fc]

    def _load_backbone(self, state: Mapping[str, Tensor]) -> None:
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        prefix = {name: str(i) for i, name in enumerate(names)}
        loaded = self.features.load_state_dict(
            {
                f"{prefix[k.split('.')[0]]}.{k.split('.', 1)[1]}": v
                for k, v in state.items()
                if k.split(".")[0] in prefix
            },
            strict=False,
        )
        missing = [k for k in loaded.missing_keys if not k.endswith("num_batches_tracked")]  # older files lack these
        if missing or loaded.unexpected_keys:
            raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys {loaded.unexpected_keys[:3]}")

    def _features(self, x: Tensor) -> Tensor:
        return self.features(x)


RESNETS = {  # depth: (torchvision builder, ImageNet weights it accepts, the default first)
    18: (models.resnet18, (models.ResNet18_Weights.IMAGENET1K_V1,)),
    50: (models.resnet50, (models.ResNet50_Weights.IMAGENET1K_V2, models.ResNet50_Weights.IMAGENET1K_V1)),
}


class ImageNetResNet(ResNetGAP):
    """torchvision's ImageNet ResNet classifier as it is: its own layers with ``layer4`` at stride 2 (a 7x7 map at
    224), its own GAP and 1000-way ``fc``, so ``M_c = sum_k w_k^c f_k`` is the exact CAM of torchvision's logits.
    It takes RGB in [0, 1] and normalises it itself, as every :class:`GAPNet`; :func:`imagenet_model` builds it with
    its weights.

    Args:
        depth: 18 or 50.
        pretrained: As :class:`GAPNet`: the ImageNet file fills the backbone and ``fc``.
    """

    imagenet_head = True

    def __init__(self, depth: int = 50, pretrained: PretrainedSpec = False) -> None:
        super().__init__(num_classes=1000, pretrained=pretrained, depth=depth)
        self.arch = f"resnet{depth}"

    def new_layers(self) -> list[nn.Module]:
        return []

    def _load_backbone(self, state: Mapping[str, Tensor]) -> None:
        super()._load_backbone(state)
        head = {name: state.get(f"fc.{name}") for name, _ in self.fc.named_parameters()}
        if any(not isinstance(v, Tensor) or v.shape != getattr(self.fc, k).shape for k, v in head.items()):
            raise RuntimeError(f"fc.weight and fc.bias are not those of a Linear({self.cam_channels}, 1000)")
        self.fc.load_state_dict(head)


IMAGENET_ARCHS = ("resnet18", "resnet50")


def imagenet_model(arch: str, weights: str | os.PathLike | None = None) -> tuple[GAPNet, list[str]]:
    """torchvision's ImageNet classifier ``arch`` (``"resnet18"``, ``"resnet50"``) as a CAM network, and its classes.

    Args:
        arch: One of :data:`IMAGENET_ARCHS`.
        weights: torchvision's ImageNet weights file for ``arch``; None for the torch hub cache's copy
            (``torch.hub.get_dir()/checkpoints/resnet50-11ad3fa6.pth`` and the like), downloaded if absent.

    Returns:
        ``(model, class_names)``: an :class:`ImageNetResNet` in eval mode on the CPU, and its 1000 class names from
        torchvision's weights metadata (``"tench"`` first).

    Raises:
        ValueError: If ``arch`` is not one of :data:`IMAGENET_ARCHS`.
        PretrainedWeightsError: If the weights cannot be had, read, or fitted to the network.

    Example:
        >>> model, classes = imagenet_model("resnet18", "resnet18-f37072fd.pth")
        >>> logits, cam = model(images, return_cam=True)  # images (B, 3, H, W) in [0, 1]: (B, 1000), (B, h, w)
        >>> classes[int(logits[0].argmax())]
    """
    if arch not in IMAGENET_ARCHS:
        raise ValueError(f"--imagenet must be one of {', '.join(IMAGENET_ARCHS)}, got {arch!r}")
    model = ImageNetResNet(depth=int(arch.removeprefix("resnet")))
    model.load_imagenet_features(weights)
    return model.eval(), list(model.weights[0].meta["categories"])


# The backbones a checkpoint's "arch" may name, and ``--arch`` without its "_gap": adding a network is one entry.
BACKBONES: dict[str, Any] = {
    ARCH: AlexNetGAP,
    "vgg16_gap": VGG16GAP,
    "resnet18_gap": partial(ResNetGAP, depth=18),
    "resnet50_gap": partial(ResNetGAP, depth=50),
}
ARCHS = tuple(name.removesuffix("_gap") for name in BACKBONES)


def create_model(arch: str, num_classes: int, pretrained: PretrainedSpec = False) -> GAPNet:
    """A new network of ``arch`` (``"alexnet"``, ``"vgg16"``, ``"resnet18"``, ``"resnet50"``) for ``num_classes``
    classes."""
    name = arch if arch in BACKBONES else f"{arch}_gap"
    if name not in BACKBONES:
        raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return BACKBONES[name](num_classes=num_classes, pretrained=pretrained)


def build_model(arch: str, model_args: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from a checkpoint's architecture name and arguments.

    Raises:
        CheckpointError: If ``arch`` is not in :data:`BACKBONES` or its arguments do not fit it.
    """
    if arch not in BACKBONES:
        raise CheckpointError(
            f"unknown architecture {arch!r}; this version knows {', '.join(map(repr, BACKBONES))}: "
            "was it written by a newer CAM_Stanford_Cars?"
        )
    try:
        return BACKBONES[arch](**dict(model_args))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the arguments {dict(model_args)} do not fit architecture {arch!r}: {err}") from None


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a :func:`save_checkpoint` file alone, read safely (``weights_only=True``).

    Returns:
        ``(model, checkpoint)``: the model in eval mode on ``map_location`` (CPU for None), and the dict
        (``class_names``, the filters ``car_type``, ``car_brand``, ``car_production_year``, ``image_size``, ...).

    Raises:
        CheckpointError: If the file is not a checkpoint of this project (others: ``checkpoint.read_checkpoint``).
    """
    checkpoint, device = read_checkpoint(path, map_location)
    model = build_model(checkpoint["arch"], checkpoint["model_args"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit its architecture: {err}") from None
    return model.to(device).eval(), checkpoint
