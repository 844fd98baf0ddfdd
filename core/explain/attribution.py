"""Explain a patch classifier: Grad-CAM, guided backpropagation and Guided Grad-CAM, batched.

Entry points: :func:`load_explainer` (a model file -> :class:`Explainer`) and
:meth:`Explainer.explain` (a scaled float32 batch ``(N, bands, H, W)`` -> attributions).

Methods (Selvaraju et al. 2017; Springenberg et al. 2015), all for one *target* class per tile
(the predicted class, or a class the user names) and all on the gradient of the model's raw
output for that class (the logit, or the probability for a card with ``output: probabilities``):

* ``gradcam`` -- Grad-CAM: at the Grad-CAM layer (below), channel weights are the spatial means
  of the gradients, the map is ``ReLU(sum_k w_k A_k)``, upsampled *bilinearly* to the tile
  (``captum.attr.LayerAttribution.interpolate(..., "bilinear")``, ``align_corners=False``).
  It has no band dimension: its attribution has one band.
* ``guided_backprop`` -- guided backpropagation: the gradient at the input where every ReLU
  passes back only positive gradients (and only where its input was positive).
* ``guided_gradcam`` -- Guided Grad-CAM: guided backpropagation times the bilinearly upsampled
  Grad-CAM map, element-wise, per band (the original method; captum's ``GuidedGradCam`` uses
  nearest-neighbour upsampling by default, here bilinear is used as in the paper).

Two engines compute the same numbers:

* ``"fused"`` (default): one forward pass gives the logits (hence the predicted class), the
  Grad-CAM activations and the graph for two backward passes: a plain one down to the Grad-CAM
  layer and a guided one down to the input. Guidance is switched on for the second pass only,
  through forward hooks on the ``nn.ReLU`` modules that route them through a ReLU whose
  backward is guided on demand. captum's ``GuidedGradCam`` needs two forward passes (plus one to
  find the predicted class), so this is about twice as fast; the tests check both agree.
* ``"captum"``: ``captum.attr.LayerGradCam`` + ``LayerAttribution.interpolate(..., "bilinear")``,
  ``GuidedBackprop`` and ``GuidedGradCam(interpolate_mode="bilinear")`` -- the reference.

Both need ``nn.ReLU`` *modules* (a ``torch.nn.functional.relu`` inside ``forward`` is not
guided; the same limitation as captum's). The explainer works on a deep copy of the network
with every ``nn.ReLU`` set to ``inplace=False``: in-place ReLUs (torchvision ResNets) break
backward hooks, which is captum's known failure.

**Grad-CAM layer.** The card's ``architecture.explain_layer`` (a name from the module's
``named_modules()``) wins when present. Otherwise one dry forward pass records the order in
which modules *finish*; the layer is the last module that finishes, exactly once, after the
last ``nn.Conv2d`` with an output of that convolution's shape (batch norm, ReLU, a residual
block or stage), before the first module that changes the shape (pooling, flatten); failing
that, the last convolution itself. That is the rectified output of the last convolution block,
as in the original method, and the same layer for a Torch model and its ONNX export (where
batch norm is folded into the convolution, so "the last Conv2d" would differ between the two).

**Models.** Torch state dicts with a card load through :mod:`core.models.backends`. TorchScript cannot be
explained: compiled modules do not run Python hooks, which every attribution method needs, so a
clear error asks for a state dict + card (or ONNX). ONNX models are converted to Torch with
``onnx2torch``; the converted network must reproduce onnxruntime's logits on random input
(``|diff| <= 1e-4 * max(1, |logits|)``) before it is used, else :class:`ModelLoadError`.

**Heatmap and band relevance** (see :func:`pixel_heatmap`, :func:`band_shares`): the per-pixel
heatmap is the sum over bands of ``|attribution|``; a band's relevance in a tile is its share of
the tile's total ``|attribution|``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models.backends import OnnxModel, TorchModel, is_torchscript, resolve_torch_device
from ..models.card import ModelCard
from ..errors import GlassboxError, ModelLoadError

# Two warnings of libraries below, about themselves, that users would only see as noise in
# Processing's log: onnx2torch's Slice indexes with a list (checked: the converted network must
# reproduce onnxruntime's logits, load_explainer), and captum imports matplotlib, whose 3D toolkit
# from Debian's python3-matplotlib does not match the venv's matplotlib (3D plots are never drawn).
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        category=UserWarning, module="onnx2torch")
warnings.filterwarnings("ignore", message="Unable to import Axes3D", category=UserWarning)

METHODS = ("guided_gradcam", "gradcam", "guided_backprop")
METHOD_LABELS = {
    "guided_gradcam": "Guided Grad-CAM",
    "gradcam": "Grad-CAM",
    "guided_backprop": "guided backpropagation",
}
ENGINES = ("fused", "captum")
PREDICTED = "predicted"
ONNX_CHECK_TOLERANCE = 1e-4


class ExplainError(GlassboxError):
    """An explanation cannot be computed as asked (unknown method, target class or layer)."""


@dataclass
class Explanation:
    """Attributions of one batch.

    ``attributions`` ``(N, bands, H, W)`` float32 (one band for Grad-CAM); ``targets`` ``(N,)``
    the explained class index per tile; ``probabilities`` ``(N, classes)`` the model's class
    probabilities (softmax of the logits, or the outputs of a probability model)."""

    attributions: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray


def pixel_heatmap(attributions: np.ndarray) -> np.ndarray:
    """Per-pixel relevance ``(..., H, W)`` of attributions ``(..., bands, H, W)``: the sum over
    bands of ``|attribution|``.

    The absolute value, because the sign of an input gradient says in which direction a band's
    value would move the class score, not whether the pixel matters: a dark water pixel (whose
    evidence is a *negative* gradient in the near infrared) is as relevant as a bright one. Sum
    over bands, so a pixel that matters in several bands counts more. Grad-CAM maps are
    non-negative and single-band, so for them this is the map itself."""
    return np.abs(attributions).sum(axis=-3, dtype=np.float32)


def band_shares(attributions: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Spectral relevance ``(N, bands)``: each band's share of the tile's total ``|attribution|``
    (over ``valid`` pixels ``(N, H, W)`` when given). Rows sum to 1; a tile without any
    attribution gets NaN. Meaningful for guided backpropagation and Guided Grad-CAM only
    (Grad-CAM has no band dimension)."""
    mag = np.abs(attributions).astype(np.float64)
    if valid is not None:
        mag = mag * valid[:, None]
    per_band = mag.sum(axis=(2, 3))
    total = per_band.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, per_band / np.where(total > 0, total, 1.0), np.nan)


def resolve_target(card: ModelCard, target: str | int | None) -> int | None:
    """``None``/""/"predicted" -> ``None`` (explain each tile's predicted class); a class name
    (case-insensitive) or index -> its index. An unknown name raises :class:`ExplainError`
    naming the card's classes."""
    if target is None:
        return None
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < card.num_classes:
            raise ExplainError(f"target class index {target} is not in 0..{card.num_classes - 1}")
        return int(target)
    text = str(target).strip()
    if text == "" or text.lower() == PREDICTED:
        return None
    for index, name in enumerate(card.class_names):
        if name == text:
            return index
    lowered = [n.lower() for n in card.class_names]
    if lowered.count(text.lower()) == 1:
        return lowered.index(text.lower())
    raise ExplainError(
        f"unknown target class '{text}'; the model '{card.name}' knows the classes: "
        f"{', '.join(card.class_names)} (or leave the target empty / 'predicted')"
    )


def check_method(method: str) -> str:
    method = (method or "guided_gradcam").lower().replace("-", "_").replace(" ", "_")
    aliases = {"guidedgradcam": "guided_gradcam", "guided_grad_cam": "guided_gradcam", "grad_cam": "gradcam",
               "guidedbackprop": "guided_backprop", "guided_backpropagation": "guided_backprop"}
    method = aliases.get(method, method)
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method '{method}'; use one of {', '.join(METHODS)}")
    return method


class Explainer:
    """A Torch network prepared for attribution, with its card.

    ``module`` is deep-copied, put in eval mode, its ReLUs made not in-place and its parameters
    frozen (no parameter gradients are needed), so the caller's network is never modified."""

    def __init__(self, module: Any, card: ModelCard, source: str = "model", device: str = "cpu",
                 layer: str | None = None):
        import torch
        from torch import nn

        if isinstance(module, torch.jit.ScriptModule):
            raise ModelLoadError(_torchscript_message(source))
        self.card = card
        self.source = source
        self.device = resolve_torch_device(device)
        module = copy.deepcopy(module).to(self.device).eval()
        for sub in module.modules():
            if isinstance(sub, nn.ReLU):
                sub.inplace = False
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        self.module = module
        self.output_is_probability = card.output == "probabilities"
        wanted = layer or card.architecture.get("explain_layer")
        self.layer_name = self._find_layer(wanted)
        self.layer = dict(module.named_modules())[self.layer_name]

    # -- Grad-CAM layer ---------------------------------------------------------------------
    def _find_layer(self, wanted: str | None) -> str:
        import torch
        from torch import nn

        modules = dict(self.module.named_modules())
        order: list[tuple[str, Any]] = []
        calls: dict[str, int] = {}
        handles = []

        def recorder(name):
            def hook(_module, _inputs, output):
                calls[name] = calls.get(name, 0) + 1
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                order.append((name, shape))
            return hook

        for name, sub in modules.items():
            if name:
                handles.append(sub.register_forward_hook(recorder(name)))
        try:
            size = self.card.tile_size
            with torch.no_grad():
                out = self.module(torch.zeros(1, self.card.num_bands, size, size, device=self.device))
        except Exception as exc:
            raise ModelLoadError(f"{self.source}: the network cannot run on a {self.card.num_bands}-band "
                                 f"{size} px tile: {exc}") from exc
        finally:
            for h in handles:
                h.remove()
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != self.card.num_classes:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelLoadError(f"{self.source}: the network returns {got}, not (batch, {self.card.num_classes}) "
                                 f"scores for its card's {self.card.num_classes} classes: the card does not belong "
                                 "to this network")
        if wanted:
            if wanted not in modules or not wanted:
                raise ExplainError(f"{self.source}: explain_layer '{wanted}' is not a module of the network; "
                                   f"convolution layers are: "
                                   f"{', '.join(n for n, m in modules.items() if isinstance(m, nn.Conv2d))}")
            if calls.get(wanted, 0) != 1:
                raise ExplainError(f"{self.source}: explain_layer '{wanted}' runs {calls.get(wanted, 0)} times "
                                   "in one forward pass; Grad-CAM needs a layer that runs exactly once")
            return wanted
        convs = [i for i, (name, _s) in enumerate(order) if isinstance(modules[name], nn.Conv2d)]
        if not convs:
            raise ExplainError(f"{self.source}: the network has no nn.Conv2d layer, so Grad-CAM has no "
                               "layer to look at (name one with the card's architecture.explain_layer)")
        last = convs[-1]
        conv_name, conv_shape = order[last]
        chosen = conv_name if calls[conv_name] == 1 else None
        for name, shape in order[last + 1:]:
            if shape != conv_shape:
                break
            if calls[name] == 1:
                chosen = name
        if chosen is None:
            raise ExplainError(f"{self.source}: the last convolution '{conv_name}' runs more than once; name "
                               "the Grad-CAM layer with the card's architecture.explain_layer")
        return chosen

    # -- prediction -------------------------------------------------------------------------
    def _probabilities(self, outputs: Any) -> np.ndarray:
        import torch

        if self.output_is_probability:
            return outputs.detach().float().cpu().numpy()
        return torch.softmax(outputs.detach().double(), dim=1).float().cpu().numpy()

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` of a scaled batch (no gradients)."""
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return self._probabilities(out)

    # -- attribution ------------------------------------------------------------------------
    def explain(self, batch: np.ndarray, method: str = "guided_gradcam", target: int | Sequence[int] | None = None,
                engine: str = "fused") -> Explanation:
        """Attributions for a scaled float32 batch ``(N, bands, H, W)``.

        ``target``: ``None`` = each tile's predicted class, an int = that class for every tile,
        or one class index per tile. ``engine``: ``"fused"`` or ``"captum"`` (same result)."""
        method = check_method(method)
        if engine not in ENGINES:
            raise ExplainError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != self.card.num_bands:
            raise ExplainError(f"expected a batch (N, {self.card.num_bands}, H, W), got {batch.shape}")
        if engine == "captum":
            return self._explain_captum(batch, method, target)
        return self._explain_fused(batch, method, target)

    def _targets(self, target: int | Sequence[int] | None, n: int, probabilities: np.ndarray) -> np.ndarray:
        if target is None:
            return np.argmax(probabilities, axis=1).astype(np.int64)
        targets = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy()
        if targets.min() < 0 or targets.max() >= self.card.num_classes:
            raise ExplainError(f"target class index out of 0..{self.card.num_classes - 1}")
        return targets

    def _explain_fused(self, batch: np.ndarray, method: str, target: Any) -> Explanation:
        import torch

        from captum.attr import LayerAttribution

        switch = _GuidedSwitch()
        captured: list = []
        handles = []
        try:
            if method != "gradcam":
                for sub in self.module.modules():
                    if isinstance(sub, torch.nn.ReLU):
                        handles.append(sub.register_forward_hook(_guided_relu_hook(switch)))
            if method != "guided_backprop":
                handles.append(self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out)))
            with torch.enable_grad():
                x = torch.from_numpy(batch).to(self.device).requires_grad_(True)
                out = self.module(x)
                probabilities = self._probabilities(out)
                targets = self._targets(target, batch.shape[0], probabilities)
                index = torch.from_numpy(targets).to(out.device)[:, None]
                score = out.gather(1, index).sum()
                cam = None
                if method != "guided_backprop":
                    if len(captured) != 1 or not isinstance(captured[0], torch.Tensor):
                        raise ExplainError(f"Grad-CAM layer '{self.layer_name}' did not produce one tensor")
                    acts = captured[0]
                    (grads,) = torch.autograd.grad(score, acts, retain_graph=method != "gradcam")
                    weights = grads.mean(dim=(2, 3), keepdim=True)
                    cam = torch.relu((weights * acts).sum(dim=1, keepdim=True))
                    cam = LayerAttribution.interpolate(cam, tuple(batch.shape[2:]), interpolate_mode="bilinear")
                if method == "gradcam":
                    attributions = cam
                else:
                    switch.guided = True
                    (guided,) = torch.autograd.grad(score, x)
                    attributions = guided if cam is None else guided * cam
        finally:
            for h in handles:
                h.remove()
        return Explanation(attributions.detach().float().cpu().numpy(), targets, probabilities)

    def _explain_captum(self, batch: np.ndarray, method: str, target: Any) -> Explanation:
        import warnings

        import torch
        from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam

        probabilities = self.predict_proba(batch)
        targets = self._targets(target, batch.shape[0], probabilities)
        x = torch.from_numpy(batch).to(self.device)
        tgt = torch.from_numpy(targets).to(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "required_grads has been set automatically", hooks
            if method == "gradcam":
                cam = LayerGradCam(self.module, self.layer).attribute(x, target=tgt, relu_attributions=True)
                attributions = LayerAttribution.interpolate(cam, tuple(batch.shape[2:]), interpolate_mode="bilinear")
            elif method == "guided_backprop":
                attributions = GuidedBackprop(self.module).attribute(x, target=tgt)
            else:
                attributions = GuidedGradCam(self.module, self.layer).attribute(
                    x, target=tgt, interpolate_mode="bilinear")
        return Explanation(attributions.detach().float().cpu().numpy(), targets, probabilities)


class _GuidedSwitch:
    guided = False


def _guided_relu_hook(switch: _GuidedSwitch):
    import torch

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out = x.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            (out,) = ctx.saved_tensors
            grad = grad * (out > 0)
            if switch.guided:
                grad = grad.clamp(min=0)
            return grad

    def hook(_module, inputs, _output):
        return GuidedReLU.apply(inputs[0])

    return hook


def _torchscript_message(source: str) -> str:
    return (
        f"{source}: TorchScript models cannot be explained: attribution methods need hooks on the "
        "network's layers, which compiled TorchScript does not run. Convert it with 'Export model to ONNX' "
        "(glassbox:export_onnx, which reads TorchScript with its card) and explain the .onnx file, or save the model "
        "as a state dict with its .json card."
    )


def load_explainer(path: str | Path, device: str = "cpu", layer: str | None = None) -> Explainer:
    """An :class:`Explainer` for a model file: a Torch state dict with its card, or ONNX
    (converted with onnx2torch and checked against onnxruntime). TorchScript is refused."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_explainer(path, device, layer)
    if suffix in (".pt", ".pth", ".ts", ".torchscript"):
        if is_torchscript(path):
            raise ModelLoadError(_torchscript_message(path.name))
        model = TorchModel(path, "cpu")
        model.check_output()
        return Explainer(model.module, model.card, path.name, device, layer)
    raise ModelLoadError(f"{path.name}: unknown model type '{suffix}'; use .onnx or a Torch .pt with its card")


def _onnx_explainer(path: Path, device: str, layer: str | None) -> Explainer:
    import onnx
    import torch

    reference = OnnxModel(path, "cpu")  # reads and validates the card, runs the original
    reference.check_output()
    try:
        import onnx2torch
    except ImportError as exc:
        raise ModelLoadError(f"{path.name}: explaining an ONNX model needs the package onnx2torch") from exc
    try:
        proto = _inline_identity_initializers(onnx.load(str(path)))
        module = onnx2torch.convert(proto)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ...
        raise ModelLoadError(
            f"{path.name}: this ONNX model cannot be converted to Torch for explaining "
            f"(onnx2torch: {type(exc).__name__}: {exc}). Explain its Torch original (state dict + card) instead."
        ) from exc
    module.eval()
    half = reference.input_dtype == np.float16
    if half:  # a float16 export: explained in float32 (gradients in float16 underflow), checked to float16's precision
        module.float()
    card = reference.card
    rng = np.random.default_rng(0)
    example = rng.standard_normal((2, card.num_bands, card.tile_size, card.tile_size)).astype(np.float32)
    try:
        with torch.inference_mode():
            converted = module(torch.from_numpy(example)).float().numpy()
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: the ONNX model converted to Torch does not run: {exc}") from exc
    expected = reference.predict_logits(example)
    if converted.shape != expected.shape:
        raise ModelLoadError(f"{path.name}: the converted model returns {converted.shape}, "
                             f"onnxruntime {expected.shape}; it cannot be explained")
    diff = float(np.max(np.abs(converted - expected)))
    tolerance = ONNX_CHECK_TOLERANCE * (100.0 if half else 1.0) * max(1.0, float(np.max(np.abs(expected))))
    if not diff <= tolerance:
        raise ModelLoadError(
            f"{path.name}: the ONNX model converted to Torch gives different logits from onnxruntime "
            f"(max difference {diff:.2e} > {tolerance:.1e}); its explanation would not be the model's"
        )
    return Explainer(module, card, path.name, device, layer)


def _inline_identity_initializers(model: Any) -> Any:
    """Replace ``Identity`` nodes that merely alias a weight (torch's exporter emits them when
    two layers have equal constants, e.g. zero biases) by a copy of the weight: onnx2torch
    expects convolution weights and biases to be initializers."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    if len(kept) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return model
