"""Built-in network architectures, named in a model card's ``architecture.name``.

Every builder takes ``in_channels`` (number of bands), ``num_classes`` and ``tile_size``
(model pixels) plus the card's ``architecture.kwargs`` and returns an ``nn.Module`` mapping a
float32 tensor of shape ``(N, in_channels, tile_size, tile_size)`` to logits ``(N, num_classes)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import ModelCardError


class Paper1CNN(nn.Module):
    """Paper 1's spatial CNN: a convolution with 32 kernels, four hidden layers of 64 kernels
    each followed by 2x2 max pooling, flatten, and one dense layer to the classes.

    Batch normalisation after every convolution (not in the paper) makes CPU training stable.
    """

    def __init__(self, in_channels: int, num_classes: int, tile_size: int = 64, dropout: float = 0.3):
        super().__init__()
        if tile_size % 16:
            raise ModelCardError("paper1_cnn needs a tile_size divisible by 16 (four 2x2 poolings)")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=False),
        ]
        channels = 32
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, 64, 3, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=False),
                nn.MaxPool2d(2),
            ]
            channels = 64
        self.features = nn.Sequential(*layers)
        side = tile_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * side * side, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _paper1_cnn(in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    return Paper1CNN(in_channels, num_classes, tile_size, **kwargs)


def _resnet18(in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    for module in model.modules():  # captum and friends break on in-place ReLUs
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "paper1_cnn": _paper1_cnn,
    "resnet18": _resnet18,
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
