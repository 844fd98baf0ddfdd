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

from ..errors import ModelCardError


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


def _rgb_fusion(in_channels: int, num_classes: int, tile_size: int, **kwargs: Any) -> nn.Module:
    return RGBTrunkFusionNet(in_channels, num_classes, tile_size, **kwargs)


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


#: Band positions in EuroSAT's 13-band order (B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A).
_EUROSAT_MS_RGB = (3, 2, 1)  # B04, B03, B02
#: Normalised differences (a - b) / (a + b) in the same order: NDVI (B08, B04), NDWI (B03, B08),
#: NDBI (B11, B08).
_EUROSAT_MS_INDICES = ((7, 3), (2, 7), (10, 7))
#: The shipped RGB network's input scaling (its card): DN * 255/2750, clip 0..255, (x - mean) / std.
_EUROSAT_RGB_MEAN = (87.6046303696866, 96.78854680489832, 103.84241338604434)
_EUROSAT_RGB_STD = (51.61660793705058, 34.933329697315806, 29.489537571283474)


class _SpectralFusion(nn.Module):
    """``relu(trunk + conv1x1(cat(trunk, branch)))``: the spectral branch's map corrects the RGB
    trunk's last feature map cell by cell. The 1x1 convolution starts at zero, so an untrained
    fusion returns the trunk's map unchanged (and the network the RGB network's logits)."""

    def __init__(self, trunk_channels: int, branch_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(trunk_channels + branch_channels, trunk_channels, 1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, trunk: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return self.relu(trunk + self.conv(torch.cat([trunk, branch], dim=1)))


class RGBTrunkFusionNet(nn.Module):
    """A multispectral classifier built on an RGB network: an RGB trunk (:func:`_resnet18_64`,
    meant to start from a network trained on many RGB tiles) reads three of the bands, a small
    spectral branch reads all bands plus normalised-difference indices computed in the network,
    and the two are fused on the trunk's last feature map before its classifier.

    **Input**: ``(N, in_channels, tile, tile)`` top-of-atmosphere reflectance (Sentinel-2 L1C
    digital numbers / 10000; the card's scaling does that), clipped to 0..1.

    * ``rgb``: the trunk, a ``resnet18_64`` (``trunk_width``, ``trunk_input_scale``). It gets
      bands ``rgb_bands`` (default B04, B03, B02 of EuroSAT's order) scaled as the RGB network's
      card scaled them: ``(clip(x * rgb_scale, 0, rgb_clip) - rgb_mean) / rgb_std`` (defaults:
      the shipped EuroSAT RGB network's, DN * 255/2750). Its batch-normalisation statistics
      stay fixed (the trunk is always in eval mode); with ``freeze_trunk`` its convolutions and
      batch norms are not trained either (only its final linear layer ``rgb.fc`` is).
    * ``branch``: per pixel, the bands (batch-normalised) and the ``indices``
      ``(x[a] - x[b]) / (x[a] + x[b] + 1e-4)`` (default NDVI, NDWI, NDBI) go through two 1x1
      convolutions (``branch_width`` channels, batch norm, ReLU), then are resized like the
      trunk's input and averaged over the trunk's 16 x 16-pixel cells, so each cell of the
      branch map lies over the same ground as the trunk's cell.
    * ``fusion``: ``relu(trunk_map + conv1x1(cat(trunk_map, branch_map)))`` (:class:`_SpectralFusion`,
      zero-initialised), then the trunk's global average pooling, dropout and ``rgb.fc``. The
      fused map is the layer Grad-CAM finds (the last one after the last convolution).

    Untrained fusion + a loaded RGB trunk = exactly the RGB network's logits. ``tile *
    trunk_input_scale`` must be a multiple of 16. All ReLUs are modules, out of place.
    """

    def __init__(self, in_channels: int, num_classes: int, tile_size: int = 64, trunk_width: int = 32,
                 trunk_input_scale: float = 1.0, rgb_bands: Any = _EUROSAT_MS_RGB,
                 rgb_scale: float = 10000 * 255 / 2750, rgb_clip: float = 255.0, rgb_mean: Any = _EUROSAT_RGB_MEAN,
                 rgb_std: Any = _EUROSAT_RGB_STD,
                 indices: Any = _EUROSAT_MS_INDICES, branch_width: int = 32, dropout: float = 0.2,
                 freeze_trunk: bool = True):
        super().__init__()
        rgb_bands = [int(b) for b in rgb_bands]
        indices = [(int(a), int(b)) for a, b in indices]
        used = rgb_bands + [b for pair in indices for b in pair]
        if len(rgb_bands) != 3 or any(not 0 <= b < in_channels for b in used):
            raise ModelCardError(f"rgb_fusion needs 3 rgb_bands and indices among the {in_channels} input bands "
                                 f"(0-based), got rgb_bands {rgb_bands}, indices {indices}")
        resized = int(tile_size * float(trunk_input_scale))
        if resized % 16:
            raise ModelCardError(f"rgb_fusion needs tile_size x trunk_input_scale to be a multiple of 16, "
                                 f"got {tile_size} x {trunk_input_scale}")
        if len(rgb_mean) != 3 or len(rgb_std) != 3 or any(float(s) <= 0 for s in rgb_std):
            raise ModelCardError("rgb_fusion needs 3 rgb_mean and 3 positive rgb_std values")
        self.rgb_bands = rgb_bands
        self.indices = indices
        self.rgb_scale, self.rgb_clip = float(rgb_scale), float(rgb_clip)
        self.register_buffer("rgb_mean", torch.tensor([float(v) for v in rgb_mean]).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor([float(v) for v in rgb_std]).view(1, 3, 1, 1))
        self.rgb = _resnet18_64(3, num_classes, tile_size, width=trunk_width, input_scale=trunk_input_scale)
        self.freeze_trunk = bool(freeze_trunk)
        if self.freeze_trunk:
            for name, parameter in self.rgb.named_parameters():
                if not name.startswith("fc."):
                    parameter.requires_grad_(False)
        branch_in = in_channels + len(indices)
        self.band_norm = nn.BatchNorm2d(in_channels)
        self.branch = nn.Sequential(
            nn.Conv2d(branch_in, branch_width, 1, bias=False), nn.BatchNorm2d(branch_width), nn.ReLU(inplace=False),
            nn.Conv2d(branch_width, branch_width, 1, bias=False), nn.BatchNorm2d(branch_width), nn.ReLU(inplace=False),
        )
        self.cell_pool = nn.AvgPool2d(16)
        self.fusion = _SpectralFusion(trunk_width * 8, branch_width)
        self.dropout = nn.Dropout(dropout)

    def train(self, mode: bool = True) -> "RGBTrunkFusionNet":
        super().train(mode)
        self.rgb.train(False)  # the trunk's batch-norm statistics stay those of its RGB training
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-4
        ratios = [(x[:, a:a + 1] - x[:, b:b + 1]) / (x[:, a:a + 1] + x[:, b:b + 1] + eps) for a, b in self.indices]
        branch = self.branch(torch.cat([self.band_norm(x)] + ratios, dim=1))
        branch = self.cell_pool(self.rgb.resize_input(branch))
        rgb = torch.cat([x[:, b:b + 1] for b in self.rgb_bands], dim=1)
        rgb = (torch.clamp(rgb * self.rgb_scale, 0.0, self.rgb_clip) - self.rgb_mean) / self.rgb_std
        t = self.rgb.relu(self.rgb.bn1(self.rgb.conv1(self.rgb.resize_input(rgb))))
        t = self.rgb.layer4(self.rgb.layer3(self.rgb.layer2(self.rgb.layer1(self.rgb.maxpool(t)))))
        fused = self.fusion(t, branch)
        return self.rgb.fc(self.dropout(torch.flatten(self.rgb.avgpool(fused), 1)))


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


class InputCorrector(nn.Module):
    """A small learned correction of a standardised tile ``(N, C, H, W)`` (the card's scaling
    already applied), put in front of a trained classifier to undo radiometric changes it was
    not trained for (a darker or hazier scene, sensor noise, a softer image).

    Two parts, both starting as the identity (their last layers are zero), so a trained
    classifier behind a fresh corrector gives exactly its own logits:

    * a global part: per-band statistics of the tile (mean, standard deviation, and mean absolute
      Laplacian-like detail, which noise raises and blur lowers) pass through a small MLP that
      gives each band a gain (``exp`` of its output) and an offset;
    * a local part: ``depth`` 3x3 convolutions of ``width`` channels, fed the re-levelled tile
      and the statistics broadcast over it, add a residual (denoising, sharpening).
    """

    def __init__(self, channels: int, width: int = 24, depth: int = 4):
        super().__init__()
        if depth < 2 or width < 4:
            raise ModelCardError(f"the input corrector needs depth >= 2 and width >= 4, not {depth} and {width}")
        stats = 3 * channels
        self.global_fit = nn.Sequential(nn.Linear(stats, 64), nn.ReLU(), nn.Linear(64, 2 * channels))
        layers: list[nn.Module] = [nn.Conv2d(channels + stats, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.local_fit = nn.Sequential(*layers)
        for last in (self.global_fit[-1], self.local_fit[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @staticmethod
    def statistics(x: torch.Tensor) -> torch.Tensor:
        """``(N, 3C)``: per band the mean, the standard deviation and the mean absolute
        difference from the 3x3 neighbourhood mean."""
        mean = x.mean(dim=(2, 3))
        std = torch.sqrt(((x - mean[:, :, None, None]) ** 2).mean(dim=(2, 3)) + 1e-6)
        local_mean = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        detail = (x - local_mean).abs().mean(dim=(2, 3))
        return torch.cat([mean, std, detail], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.statistics(x)
        gain, offset = self.global_fit(stats).chunk(2, dim=1)
        levelled = x * torch.exp(gain)[:, :, None, None] + offset[:, :, None, None]
        context = stats[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return levelled + self.local_fit(torch.cat([levelled, context], dim=1))


class CorrectedClassifier(nn.Module):
    """``classifier(corrector(x))``: a trained classifier behind an :class:`InputCorrector`
    (state dict keys ``corrector.*`` and ``classifier.*``). Its batch-norm layers, Grad-CAM
    layer and logits are the classifier's."""

    def __init__(self, corrector: nn.Module, classifier: nn.Module):
        super().__init__()
        self.corrector = corrector
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.corrector(x))


def _corrected(in_channels: int, num_classes: int, tile_size: int, classifier: str = "resnet18_64",
               classifier_kwargs: dict[str, Any] | None = None, corrector_width: int = 24,
               corrector_depth: int = 4) -> nn.Module:
    if classifier == "corrected":
        raise ModelCardError("a corrected network's classifier cannot itself be 'corrected'")
    return CorrectedClassifier(InputCorrector(in_channels, corrector_width, corrector_depth),
                               build_model(classifier, in_channels, num_classes, tile_size,
                                           **dict(classifier_kwargs or {})))


class TileGate(nn.Module):
    """The weight ``g`` in 0..1, shape ``(N, 1)``, of the first of two experts for each standardised
    tile ``(N, C, H, W)``: a per-tile alpha. It reads the tile's per-band statistics
    (:meth:`InputCorrector.statistics`: mean, standard deviation, local detail, which tell a dark,
    hazy, noisy or soft tile from a clean one) and a small convolutional summary of it. Its last
    layer starts at zero, so a fresh gate gives ``g = 0.5``, the mean-logit ensemble."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        if width < 4:
            raise ModelCardError(f"the tile gate needs width >= 4, not {width}")
        self.summary = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(3 * channels + width, 32), nn.ReLU(), nn.Linear(32, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat([InputCorrector.statistics(x), self.summary(x)], dim=1)
        return torch.sigmoid(self.head(features))


class GatedEnsemble(nn.Module):
    """Two trained classifiers of the same input mixed per tile, paper 2's ensemble
    ``L = a * L_1 + (1 - a) * L_2`` with ``a`` chosen for each tile by a :class:`TileGate`
    (state dict keys ``gate.*``, ``experts.0.*``, ``experts.1.*``). E.g. a network trained on clean
    tiles and one trained for robustness to radiometry: the gate learns which to trust. The gate
    runs first, so the automatically chosen Grad-CAM layer is the second expert's last one."""

    def __init__(self, gate: nn.Module, experts: list[nn.Module]):
        super().__init__()
        if len(experts) != 2:
            raise ModelCardError(f"a gated ensemble mixes exactly two experts, not {len(experts)}")
        self.gate = gate
        self.experts = nn.ModuleList(experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.gate(x)
        return weight * self.experts[0](x) + (1.0 - weight) * self.experts[1](x)


def _gated(in_channels: int, num_classes: int, tile_size: int, experts: list[dict[str, Any]] | None = None,
           gate_width: int = 16) -> nn.Module:
    if not experts or len(experts) != 2:
        raise ModelCardError("a gated ensemble needs 'experts': two {\"name\": ..., \"kwargs\": {...}} entries")
    built = []
    for expert in experts:
        name = expert.get("name") if isinstance(expert, dict) else None
        if not name or name == "gated":
            raise ModelCardError(f"each expert of a gated ensemble names a plain architecture, not {expert!r}")
        built.append(build_model(name, in_channels, num_classes, tile_size, **dict(expert.get("kwargs") or {})))
    return GatedEnsemble(TileGate(in_channels, gate_width), built)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "corrected": _corrected,
    "gated": _gated,
    "paper1_cnn": _paper1_cnn,
    "resnet18": _resnet18,
    "resnet18_64": _resnet18_64,
    "rgb_fusion": _rgb_fusion,
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
