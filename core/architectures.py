"""Built-in network architectures, named in a model card's ``architecture.name``.

Every builder takes ``in_channels`` (number of bands), ``num_classes`` and ``tile_size``
(model pixels) plus the card's ``architecture.kwargs`` and returns an ``nn.Module`` mapping a
float32 tensor of shape ``(N, in_channels, tile_size, tile_size)`` to logits ``(N, num_classes)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn

from .errors import ModelCardError


def paper1_trunk(in_channels: int, width: int = 64) -> nn.Sequential:
    """Paper 1's convolutional trunk: a 3x3 convolution with 32 kernels, then four blocks of a
    3x3 convolution with ``width`` kernels and 2x2 max pooling; batch normalisation and an
    out-of-place ReLU after every convolution. ``(N, C, H, W)`` -> ``(N, width, H/16, W/16)``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=False),
    ]
    channels = 32
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
        ]
        channels = width
    return nn.Sequential(*layers)


class Paper1CNN(nn.Module):
    """Paper 1's spatial CNN: a convolution with 32 kernels, four hidden layers of 64 kernels
    each followed by 2x2 max pooling, flatten, and one dense layer to the classes.

    Batch normalisation after every convolution (not in the paper) makes CPU training stable.
    """

    def __init__(self, in_channels: int, num_classes: int, tile_size: int = 64, dropout: float = 0.3):
        super().__init__()
        if tile_size % 16:
            raise ModelCardError("paper1_cnn needs a tile_size divisible by 16 (four 2x2 poolings)")
        self.features = paper1_trunk(in_channels)
        side = tile_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * side * side, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SpatialSpectralNet(nn.Module):
    """Paper 1's spatial-spectral network: a convolutional branch for texture and a per-pixel
    branch for cross-band spectral relationships, fused before the classifier.

    * ``spatial`` (texture): paper 1's CNN trunk, a 3x3 convolution with 32 kernels, then four
      blocks of a 3x3 convolution with 64 kernels and 2x2 max pooling (batch normalisation after
      every convolution), then global average pooling -> 64 features.
    * ``spectral`` (cross-band): 1x1 convolutions across the bands of each pixel
      (``in_channels -> 32 -> 64 -> 64``, batch normalisation and ReLU after each), so it sees
      every pixel's spectrum but no neighbourhood, then global average pooling -> 64 features.
    * ``classifier``: the two feature vectors concatenated (128), dropout, one linear layer.

    Input ``(N, in_channels, tile_size, tile_size)`` float32, output logits
    ``(N, num_classes)``. ``tile_size`` must be at least 16 (four 2x2 poolings); thanks to the
    global pooling it need not be divisible by 16. All ReLUs are out of place (attribution
    methods need that).
    """

    def __init__(self, in_channels: int, num_classes: int, tile_size: int = 64, dropout: float = 0.3,
                 spatial_width: int = 64, spectral_width: int = 64):
        super().__init__()
        if tile_size < 16:
            raise ModelCardError("spatial_spectral needs a tile_size of at least 16 pixels (four 2x2 poolings)")
        self.spatial = paper1_trunk(in_channels, spatial_width)
        spectral: list[nn.Module] = []
        channels = in_channels
        for width in (32, spectral_width, spectral_width):
            spectral += [nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=False)]
            channels = width
        self.spectral = nn.Sequential(*spectral)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(spatial_width + spectral_width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.pool(self.spatial(x)), self.pool(self.spectral(x))], dim=1)
        return self.classifier(fused)


def _paper1_cnn(in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    return Paper1CNN(in_channels, num_classes, tile_size, **kwargs)


def _spatial_spectral(in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    return SpatialSpectralNet(in_channels, num_classes, tile_size, **kwargs)


def _resnet18(in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for module in model.modules():  # captum and friends break on in-place ReLUs
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def _resnet18_64(in_channels: int, num_classes: int, tile_size: int, width: int = 64, input_scale: float = 1.0,
                 **kwargs: Any) -> nn.Module:
    """torchvision ResNet-18 (random init) adapted to small tiles such as EuroSAT's 64 px:
    the 7x7 stride-2 stem is kept but the 3x3 max pool after it is dropped, so ``layer1``
    runs at ``tile_size / 2`` (32x32 for 64 px) instead of ``tile_size / 4``; global average
    pooling makes any ``tile_size`` >= 32 work. ``width``: channels of ``layer1`` (64 =
    torchvision's ResNet-18; 32 = half width, about a quarter of the computation), doubled in
    each later stage. ``input_scale``: the tile is first resized bilinearly by this factor
    inside the network (1.5: a 64 px tile runs as 96 px, 2.25 times the computation, and the
    last feature map, hence a Grad-CAM heatmap, has 6x6 cells instead of 4x4); the network
    still takes ``tile_size`` pixels and has the same weights for any factor. All ReLUs out of
    place (attribution methods)."""
    from torchvision.models.resnet import BasicBlock

    if tile_size < 32:
        raise ModelCardError("resnet18_64 needs a tile_size of at least 32 pixels")
    if width < 8:
        raise ModelCardError("resnet18_64 needs a width of at least 8 channels")
    if not 0.5 <= input_scale <= 4.0:
        raise ModelCardError(f"resnet18_64 needs an input_scale between 0.5 and 4, not {input_scale}")
    model = _resized_input_resnet_class()(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)
    model.input_scale = float(input_scale)
    if in_channels != 3 or width != 64:
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    if width != 64:
        # torchvision's ResNet builds its stages with fixed 64..512 channels: rebuild them
        # with its own block and stage builder, then apply its weight initialisation again
        model.bn1 = nn.BatchNorm2d(width)
        model.inplanes = width
        model.layer1 = model._make_layer(BasicBlock, width, 2)
        model.layer2 = model._make_layer(BasicBlock, width * 2, 2, stride=2)
        model.layer3 = model._make_layer(BasicBlock, width * 4, 2, stride=2)
        model.layer4 = model._make_layer(BasicBlock, width * 8, 2, stride=2)
        model.fc = nn.Linear(width * 8, num_classes)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
    model.maxpool = nn.Identity()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


@functools.lru_cache(maxsize=None)
def _resized_input_resnet_class() -> type:
    from torchvision.models.resnet import ResNet

    class ResizedInputResNet(ResNet):
        """torchvision's ResNet that first resizes its input bilinearly by ``input_scale``
        (no weights of its own, so state dicts are those of a plain ResNet)."""

        input_scale = 1.0

        def resize_input(self, x: torch.Tensor) -> torch.Tensor:
            """``x`` ``(B, C, H, W)`` resized by ``input_scale`` (unchanged at 1): what the
            trunk sees, also for callers that run the trunk's layers themselves."""
            if self.input_scale == 1.0:
                return x
            return nn.functional.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(self.resize_input(x))

    return ResizedInputResNet


class DihedralTTA(nn.Module):
    """Wraps a classifier: the logits averaged over the 8 dihedral transforms of the input
    (identity, three 90-degree rotations, and the same four after a horizontal flip) --
    test-time augmentation inside a single forward pass (exports to ONNX). The identity pass
    runs LAST, so in an unrolled export (ONNX -> onnx2torch) the automatically chosen Grad-CAM
    layer is that of the untransformed tile (its heatmap is in the input's frame)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for flip, k in [(True, 0), (True, 1), (True, 2), (True, 3), (False, 1), (False, 2), (False, 3), (False, 0)]:
            xt = torch.flip(x, dims=(-1,)) if flip else x
            for _ in range(k):  # rot90 by transpose + flip (aten::rot90 has no ONNX export)
                xt = torch.flip(xt.transpose(-2, -1), dims=(-2,))
            logits = self.model(xt)
            total = logits if total is None else total + logits
        return total / 8.0


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "paper1_cnn": _paper1_cnn,
    "resnet18": _resnet18,
    "resnet18_64": _resnet18_64,
    "spatial_spectral": _spatial_spectral,
}


def build_model(name: str, in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    """Build an untrained network by its card name (see :data:`ARCHITECTURES`)."""
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        raise ModelCardError(
            f"unknown architecture '{name}'; built-in ones are: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return builder(in_channels, num_classes, tile_size, **kwargs)
