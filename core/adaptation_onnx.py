"""Scene adaptation (AdaBN) of an ONNX model, with ONNX Runtime alone: no Torch needed.

:mod:`.adaptation` re-estimates a Torch network's batch-norm statistics from the scene's tiles.
This module does the same to an ONNX graph that kept its ``BatchNormalization`` nodes (Glassbox's
exports keep them since 2026-12; ONNX Runtime fuses them into the convolutions when it loads the
model, so inference is as fast as with the folded form). It is what makes ``ADAPT_TO_SCENE`` work
for a plugin installed from the ZIP, which ships the ONNX models only.

How, exactly as Torch's training-mode batch norm with ``momentum=None`` does it: a copy of the
graph in which every ``BatchNormalization`` node normalises with the statistics of the batch it
sees (mean and biased variance over the batch and spatial axes, per channel) and reports them
as extra outputs; the tiles run through it in a random order in batches; each layer's new
running mean is the average of its batch means, its running variance the average of its
unbiased batch variances. Because every layer normalises with its batch's statistics while the
statistics are gathered, the deeper layers see inputs already adapted upstream, as in Torch.
The adapted statistics then replace the node's mean and variance inputs in the original graph;
nothing else changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

BATCHNORM = "BatchNormalization"


class OnnxAdaptationError(ModelLoadError):
    """The ONNX graph cannot be adapted (no batch-norm nodes, an unsupported batch-norm form)."""


def onnx_batchnorm_count(model_path: str | Path) -> int:
    """How many ``BatchNormalization`` nodes the ONNX file's main graph has (0 for an export that
    folded batch norm into its convolutions)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return sum(node.op_type == BATCHNORM for node in model.graph.node)


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _attribute(node: Any, name: str, default: float) -> float:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _ranks(model: Any) -> dict[str, int]:
    """Tensor name -> rank, from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
    return ranks


def _constant(graph: Any, name: str) -> np.ndarray:
    """The value of a constant tensor: an initializer, a ``Constant`` node, or a ``Cast`` (weights
    stored as float16, :func:`.models.export.store_onnx_weights_as_float16`) or ``Identity`` of one."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name]).astype(np.float32)
    for node in graph.node:
        if name in node.output:
            if node.op_type == "Constant":
                return numpy_helper.to_array(helper.get_attribute_value(node.attribute[0])).astype(np.float32)
            if node.op_type in ("Cast", "Identity"):
                return _constant(graph, node.input[0])
    raise OnnxAdaptationError(f"the batch-norm statistics '{name}' are not a constant of the graph")


def _statistics_graph(model: Any) -> tuple[Any, list[str]]:
    """A copy of ``model`` whose batch-norm nodes normalise with their batch's statistics and
    output them (``<k>__mean``, ``<k>__var``, ``<k>__shape`` for the k-th node). Returns the
    model and the batch-norm node names (or ``bn<k>``) in graph order."""
    import onnx
    from onnx import TensorProto, helper

    stats_model = onnx.ModelProto()
    stats_model.CopyFrom(model)
    graph = stats_model.graph
    opset = _opset(stats_model)
    ranks = _ranks(stats_model)
    nodes, names, extra_outputs = [], [], []
    for node in graph.node:
        if node.op_type != BATCHNORM:
            nodes.append(node)
            continue
        k = len(names)
        name = node.name or f"bn{k}"
        if len(node.output) != 1 or int(_attribute(node, "training_mode", 0)) != 0:
            raise OnnxAdaptationError(f"batch-norm node '{name}' is in training form; export the model for inference")
        x, scale, bias = node.input[:3]
        rank = ranks.get(x)
        if rank is None or rank < 2:
            raise OnnxAdaptationError(f"the rank of batch-norm node '{name}'s input is unknown")
        axes = [0] + list(range(2, rank))
        p = f"__adabn{k}_"
        eps = float(_attribute(node, "epsilon", 1e-5))
        consts = [
            helper.make_tensor(p + "eps", TensorProto.FLOAT, [], [eps]),
            helper.make_tensor(p + "chan", TensorProto.INT64, [rank], [1, -1] + [1] * (rank - 2)),
            helper.make_tensor(p + "flat", TensorProto.INT64, [1], [-1]),
        ]
        if opset >= 18:
            consts.append(helper.make_tensor(p + "axes", TensorProto.INT64, [len(axes)], axes))
        graph.initializer.extend(consts)

        def reduce_mean(source: str, target: str) -> Any:
            if opset >= 18:
                return helper.make_node("ReduceMean", [source, p + "axes"], [target], keepdims=1)
            return helper.make_node("ReduceMean", [source], [target], axes=axes, keepdims=1)

        nodes += [
            reduce_mean(x, p + "m"),
            helper.make_node("Sub", [x, p + "m"], [p + "d"]),
            helper.make_node("Mul", [p + "d", p + "d"], [p + "d2"]),
            reduce_mean(p + "d2", p + "v"),
            helper.make_node("Add", [p + "v", p + "eps"], [p + "ve"]),
            helper.make_node("Sqrt", [p + "ve"], [p + "sd"]),
            helper.make_node("Div", [p + "d", p + "sd"], [p + "n"]),
            helper.make_node("Reshape", [scale, p + "chan"], [p + "s"]),
            helper.make_node("Reshape", [bias, p + "chan"], [p + "b"]),
            helper.make_node("Mul", [p + "n", p + "s"], [p + "ns"]),
            helper.make_node("Add", [p + "ns", p + "b"], [node.output[0]]),
            helper.make_node("Reshape", [p + "m", p + "flat"], [f"{k}__mean"]),
            helper.make_node("Reshape", [p + "v", p + "flat"], [f"{k}__var"]),
            helper.make_node("Shape", [x], [f"{k}__shape"]),
        ]
        extra_outputs += [helper.make_tensor_value_info(f"{k}__mean", TensorProto.FLOAT, None),
                          helper.make_tensor_value_info(f"{k}__var", TensorProto.FLOAT, None),
                          helper.make_tensor_value_info(f"{k}__shape", TensorProto.INT64, None)]
        names.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.output.extend(extra_outputs)
    _prune(graph)
    return stats_model, names


def _prune(graph: Any) -> None:
    """Drop nodes and initializers nothing reads any more (the replaced statistics and their casts)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def scene_batchnorm_statistics(model: Any, inputs: np.ndarray, batch_size: int = 64, seed: int = 0,
                               threads: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The AdaBN statistics of ``inputs`` (float32 ``(N, bands, tile, tile)``, scaled as the
    model expects) for every ``BatchNormalization`` node of the ONNX ``model``, in graph order:
    ``(running mean, running variance)`` per node, each ``(channels,)`` float64, gathered as Torch's
    training-mode batch norm with ``momentum=None`` gathers them (see the module docstring).
    Raises :class:`OnnxAdaptationError`."""
    import onnxruntime as ort

    if not any(node.op_type == BATCHNORM for node in model.graph.node):
        raise OnnxAdaptationError("the ONNX graph has no BatchNormalization nodes to adapt (an export that folded "
                                  "batch norm into its convolutions)")
    if inputs.ndim != 4 or len(inputs) == 0:
        raise OnnxAdaptationError(f"adaptation needs tiles (N, bands, size, size), got shape {inputs.shape}")
    stats_model, names = _statistics_graph(model)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(stats_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxAdaptationError(f"ONNX Runtime cannot run the graph that gathers the statistics: {exc}") from exc
    input_name = session.get_inputs()[0].name
    wanted = [f"{k}__{what}" for k in range(len(names)) for what in ("mean", "var", "shape")]
    sums: list[list[Any]] = [[0.0, 0.0] for _ in names]
    batches = 0
    order = np.random.default_rng(seed).permutation(len(inputs))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if len(chunk) < 2 and start > 0:
            break  # a batch of one has no variance; the batches before hold the statistics
        values = session.run(wanted, {input_name: np.ascontiguousarray(inputs[chunk], dtype=np.float32)})
        for k in range(len(names)):
            mean, var, shape = values[3 * k : 3 * k + 3]
            n = int(np.prod(shape)) // int(shape[1])
            sums[k][0] = sums[k][0] + mean.astype(np.float64)
            sums[k][1] = sums[k][1] + var.astype(np.float64) * n / max(n - 1, 1)  # unbiased, as Torch keeps it
        batches += 1
    return [(mean / batches, var / batches) for mean, var in sums]


def source_batchnorm_statistics(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The running mean and variance every ``BatchNormalization`` node of ``model`` holds (its
    training statistics), in graph order."""
    graph = model.graph
    return [(_constant(graph, node.input[3]), _constant(graph, node.input[4]))
            for node in graph.node if node.op_type == BATCHNORM]


def with_batchnorm_statistics(model: Any, statistics: list[tuple[np.ndarray, np.ndarray]]) -> Any:
    """A copy of ``model`` whose batch-norm nodes hold ``statistics`` (graph order); the replaced
    constants are pruned. Metadata (the card) is kept."""
    import onnx
    from onnx import numpy_helper

    adapted = onnx.ModelProto()
    adapted.CopyFrom(model)
    graph = adapted.graph
    nodes = [node for node in graph.node if node.op_type == BATCHNORM]
    if len(nodes) != len(statistics):
        raise OnnxAdaptationError(f"{len(statistics)} statistics for {len(nodes)} batch-norm nodes")
    for k, (node, (mean, var)) in enumerate(zip(nodes, statistics)):
        for slot, value, what in ((3, mean, "mean"), (4, var, "var")):
            tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float32), f"__adapted{k}_{what}")
            graph.initializer.append(tensor)
            node.input[slot] = tensor.name
    _prune(graph)
    onnx.checker.check_model(adapted)
    return adapted


def adapt_onnx_batchnorm(model: Any, inputs: np.ndarray, batch_size: int = 64, seed: int = 0,
                         source_weight: float = 0.0, threads: int | None = None) -> tuple[Any, int]:
    """Re-estimate the statistics of every ``BatchNormalization`` node of the ONNX ``model``
    (an ``onnx.ModelProto``, not changed) from ``inputs`` (float32 ``(N, bands, tile, tile)``,
    already scaled as the model expects), fed in a random order (``seed``) in batches of
    ``batch_size``; ``source_weight`` as in :func:`.adaptation.adapt_batchnorm`. Returns the
    adapted copy (metadata, card included, kept) and the number of nodes adapted. Raises
    :class:`OnnxAdaptationError`."""
    if not 0.0 <= source_weight < 1.0:
        raise OnnxAdaptationError(f"the source weight must be in [0, 1), got {source_weight}")
    statistics = scene_batchnorm_statistics(model, inputs, batch_size, seed, threads)
    if source_weight > 0:
        from .adaptation import mix_statistics

        statistics = [mix_statistics(mean_s, var_s, mean_t, var_t, source_weight)
                      for (mean_t, var_t), (mean_s, var_s) in zip(statistics, source_batchnorm_statistics(model))]
    return with_batchnorm_statistics(model, statistics), len(statistics)


def batchnorm_shift(scene: list[tuple[np.ndarray, np.ndarray]],
                    source: list[tuple[np.ndarray, np.ndarray]], eps: float = 1e-5) -> list[float]:
    """How far a scene's batch-norm statistics are from the training statistics, per layer: the
    symmetric Kullback-Leibler divergence between the two Gaussians ``N(mean, var)`` of each
    channel, averaged over the channels (0 = the same; unitless)."""
    shifts = []
    for (mean_t, var_t), (mean_s, var_s) in zip(scene, source):
        var_t, var_s = np.asarray(var_t, np.float64) + eps, np.asarray(var_s, np.float64) + eps
        squared = (np.asarray(mean_t, np.float64) - np.asarray(mean_s, np.float64)) ** 2
        divergence = 0.5 * (var_t / var_s + var_s / var_t - 2) + 0.5 * squared * (1 / var_s + 1 / var_t)
        shifts.append(float(divergence.mean()))
    return shifts
