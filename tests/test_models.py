"""Model cards, the two backends, and refusal of unusable or unsafe models."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from glassbox.core.models.backends import load_model
from glassbox.core.models.card import ONNX_METADATA_KEY, ModelCard
from glassbox.core.errors import ModelCardError, ModelLoadError, UnsafeModelError
from glassbox.core.models.export import attach_card_to_onnx, store_onnx_weights_as_float16

from helpers import TINY_BANDS, TINY_TILE, pattern_tile

PLUGIN_DIR = Path(__file__).resolve().parent.parent


def test_card_json_round_trip(tiny_model_files):
    card = tiny_model_files["card"]
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.class_names == ["Vegetation", "Water"]
    assert again.classes[1].rgb() == (0x1F, 0x77, 0xB4)


def test_card_travels_inside_onnx_and_beside_torch(tiny_model_files):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tiny_model_files["onnx"])).metadata_props}
    assert ModelCard.from_json(meta[ONNX_METADATA_KEY]) == tiny_model_files["card"]
    assert load_model(tiny_model_files["onnx"]).card == tiny_model_files["card"]
    assert load_model(tiny_model_files["torch"]).card == tiny_model_files["card"]


def test_card_errors_name_what_is_missing():
    with pytest.raises(ModelCardError, match="missing 'bands'.*missing 'gsd'"):
        ModelCard.from_dict({"classes": ["a"], "scaling": {}, "tile_size": 64})
    with pytest.raises(ModelCardError, match="scaling.mean' has 2 values for 3 bands"):
        ModelCard.from_dict({"classes": ["a"], "bands": ["B04", "B03", "B02"], "scaling": {"mean": [1, 2]},
                             "tile_size": 64, "gsd": 10})
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.from_json("{nope")


def test_onnx_without_card_is_refused(tmp_path, tiny_model_files):
    import onnx

    model = onnx.load(str(tiny_model_files["onnx"]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelCardError, match="no Glassbox model card.*Export model to ONNX.*glassbox_card"):
        load_model(bare)
    # and a card can be attached afterwards
    attach_card_to_onnx(bare, tiny_model_files["card"])
    assert load_model(bare).card.name == "tiny test model"


def test_torch_without_card_is_refused(tmp_path, tiny_model_files):
    weights = tmp_path / "lonely.pt"
    shutil.copy(tiny_model_files["torch"], weights)
    with pytest.raises(ModelCardError, match="lonely.json beside the weights"):
        load_model(weights)


def test_pickled_model_is_refused_and_never_run(tmp_path, tiny_model_files):
    """A pickle that would run code on load is refused by weights_only loading."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"weights": Evil()}, evil)
    (tmp_path / "evil.json").write_text(tiny_model_files["card"].to_json())
    with pytest.raises(UnsafeModelError, match="refused"):
        load_model(evil)
    assert not marker.exists()
    whole = tmp_path / "whole.pt"
    torch.save(tiny_model_files["module"], whole)  # a pickled nn.Module
    shutil.copy(tmp_path / "evil.json", tmp_path / "whole.json")
    with pytest.raises(UnsafeModelError):
        load_model(whole)


def test_weights_that_do_not_fit_the_card(tmp_path, tiny_model_files):
    card = json.loads(tiny_model_files["card"].to_json())
    card["bands"] = ["B08", "B03", "B04"]
    card["scaling"].update(mean=1.8, std=1.2)
    weights = tmp_path / "misfit.pt"
    shutil.copy(tiny_model_files["torch"], weights)
    (tmp_path / "misfit.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="do not fit architecture 'paper1_cnn' named in the card .1 tensor.s. of another shape: "
                                             r"[a-z_.0-9]+ \(\d+, 2, .*\) instead of \(\d+, 3, ") as raised:
        load_model(weights)
    assert len(str(raised.value)) < 400  # not torch's list of every key


def test_onnx_and_torch_give_the_same_probabilities(tiny_model_files):
    rng = np.random.default_rng(5)
    card = tiny_model_files["card"]
    raw = np.stack([pattern_tile(k % 2, TINY_TILE, rng) for k in range(12)])
    batch = card.scaling.apply(raw)
    p_onnx = load_model(tiny_model_files["onnx"]).predict_proba(batch)
    p_torch = load_model(tiny_model_files["torch"]).predict_proba(batch)
    assert p_onnx.shape == (12, 2)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    np.testing.assert_allclose(p_onnx.sum(axis=1), 1.0, atol=1e-5)
    assert (p_onnx.argmax(axis=1) == np.arange(12) % 2).all(), "the tiny model learnt its pattern"


def test_torchscript_with_embedded_card(tmp_path, tiny_model_files):
    scripted = torch.jit.script(tiny_model_files["module"])
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path), _extra_files={"glassbox_card.json": tiny_model_files["card"].to_json()})
    model = load_model(path)
    assert model.card.bands == TINY_BANDS
    x = tiny_model_files["card"].scaling.apply(np.stack([pattern_tile(1, TINY_TILE, np.random.default_rng(0))]))
    np.testing.assert_allclose(model.predict_proba(x), load_model(tiny_model_files["onnx"]).predict_proba(x), atol=1e-4)


def test_cuda_request_without_cuda_fails_clearly(tiny_model_files):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_model(tiny_model_files["torch"], device="cuda")
    assert load_model(tiny_model_files["onnx"], device="auto").device == "cpu"


def test_unknown_model_type_and_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nothing.onnx")
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model type"):
        load_model(odd)


def test_dihedral_tta_wrapper_is_invariant_to_rotations_and_flips_and_exports(tmp_path):
    """DihedralTTA averages the logits over the 8 dihedral transforms, so rotating or flipping
    the input leaves its output unchanged, while the bare network does change; the wrapper
    (rotations by transpose + flip) exports to ONNX with the same logits."""
    import onnxruntime as ort

    from glassbox.core.models.architectures import DihedralTTA, build_model

    torch.manual_seed(0)
    net = build_model("paper1_cnn", in_channels=3, num_classes=4, tile_size=64).eval()
    wrapped = DihedralTTA(net).eval()
    x = torch.randn(2, 3, 64, 64)
    rotated = torch.rot90(x, 1, dims=(-2, -1))
    flipped = torch.flip(x, dims=(-1,))
    with torch.no_grad():
        assert not torch.allclose(net(x), net(rotated), atol=1e-4)
        torch.testing.assert_close(wrapped(x), wrapped(rotated), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(wrapped(x), wrapped(flipped), atol=1e-5, rtol=1e-5)
        expected = wrapped(x).numpy()
    path = tmp_path / "tta.onnx"
    torch.onnx.export(wrapped, (x,), str(path), input_names=["x"], dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_resnet18_64_keeps_layer1_at_half_resolution_for_any_band_count():
    from glassbox.core.models.architectures import build_model

    net = build_model("resnet18_64", in_channels=13, num_classes=10, tile_size=64).eval()
    seen = {}
    net.layer1.register_forward_hook(lambda _m, _i, out: seen.update(layer1=out.shape))
    with torch.no_grad():
        assert net(torch.randn(1, 13, 64, 64)).shape == (1, 10)
    assert seen["layer1"][-2:] == (32, 32)
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in net.modules())
    with pytest.raises(ModelCardError):
        build_model("resnet18_64", in_channels=3, num_classes=2, tile_size=16)


def test_resnet18_64_width_scales_every_stage_and_trains():
    from glassbox.core.models.architectures import build_model

    full = build_model("resnet18_64", in_channels=3, num_classes=10, tile_size=64)
    half = build_model("resnet18_64", in_channels=3, num_classes=10, tile_size=64, width=32)
    assert [half.layer1[0].conv1.out_channels, half.layer4[1].conv2.out_channels, half.fc.in_features] == [32, 256, 256]
    n_full = sum(p.numel() for p in full.parameters())
    n_half = sum(p.numel() for p in half.parameters())
    assert 0.2 < n_half / n_full < 0.3  # convolution weights scale with width squared
    assert not any(isinstance(m, torch.nn.ReLU) and m.inplace for m in half.modules())
    # one optimiser step on a fixed batch lowers the loss: the rebuilt stages are wired in
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 64, 64), torch.arange(8) % 10
    optimiser = torch.optim.SGD(half.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(half(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    with pytest.raises(ModelCardError):
        build_model("resnet18_64", in_channels=3, num_classes=2, tile_size=64, width=4)


def test_resnet18_64_input_scale_resizes_inside_the_network_with_the_same_weights(tmp_path):
    """input_scale 1.5: the shipped network's weights load unchanged, the network equals the
    plain one run on the tile resized to 96 px, its feature maps are 1.5 times larger, and the
    card carries the factor through ONNX and Torch files (rebuilt from the card on loading)."""
    import dataclasses

    from glassbox.core.models.architectures import build_model
    from glassbox.core.models.export import export_onnx, save_torch

    shipped = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.pt"
    card = ModelCard.from_json(shipped.with_suffix(".json").read_text(encoding="utf-8"))
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    plain = build_model("resnet18_64", 3, 10, 64, width=32).eval()
    plain.load_state_dict(state)
    scaled = build_model("resnet18_64", 3, 10, 64, width=32, input_scale=1.5).eval()
    scaled.load_state_dict(state)  # strict: resizing owns no weights

    seen = {}
    scaled.layer4.register_forward_hook(lambda _m, _i, out: seen.update(layer4=out.shape))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = plain(torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False))
        got = scaled(x)
        assert not torch.allclose(plain(x), got, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert seen["layer4"][-2:] == (6, 6)  # 4x4 without resizing: a finer Grad-CAM grid

    scaled_card = dataclasses.replace(card, architecture={"name": "resnet18_64",
                                                          "kwargs": {"width": 32, "input_scale": 1.5}})
    export_onnx(scaled, scaled_card, tmp_path / "scaled.onnx")
    save_torch(scaled, scaled_card, tmp_path / "scaled.pt")
    for path in (tmp_path / "scaled.onnx", tmp_path / "scaled.pt"):
        loaded = load_model(path)
        assert loaded.card.architecture["kwargs"]["input_scale"] == 1.5
        np.testing.assert_allclose(loaded.predict_logits(x.numpy()), got.numpy(), atol=1e-4)
    with pytest.raises(ModelCardError, match="input_scale"):
        build_model("resnet18_64", 3, 10, 64, width=32, input_scale=10)


def test_float16_weight_storage_halves_the_file_and_keeps_card_and_outputs(tmp_path):
    """The shipped ResNet18-64 stored with float16 weights: half the bytes, the same card,
    float32 inputs and outputs, logits within the weights' rounding, the same classes."""
    import onnx

    shipped = PLUGIN_DIR / "resources" / "models" / "eurosat_rgb_resnet18_64_w32.onnx"
    halved = tmp_path / "halved.onnx"
    shutil.copy(shipped, halved)
    info = store_onnx_weights_as_float16(halved)

    assert info["weights_converted"] > 20
    assert info["bytes_after"] < 0.55 * info["bytes_before"] and halved.stat().st_size == info["bytes_after"]
    graph = onnx.load(str(halved)).graph
    assert {i.type.tensor_type.elem_type for i in list(graph.input) + list(graph.output)} == {onnx.TensorProto.FLOAT}
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer) == info["weights_converted"]
    original, smaller = load_model(shipped), load_model(halved)
    assert smaller.card == original.card

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (32, 3, 64, 64)).astype(np.float32)
    tiles[:16] = np.repeat(rng.integers(0, 256, (16, 3, 1, 1)), 64, axis=2).repeat(64, axis=3)  # flat colours
    batch = original.card.scaling.apply(tiles)
    a, b = original.predict_logits(batch), smaller.predict_logits(batch)
    assert np.abs(a - b).max() < 0.02 * max(1.0, np.abs(a).max())
    assert np.abs(a - b).max() > 0, "the weights really changed precision"
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95


def test_dihedral_views_are_the_eight_rotations_and_flips():
    from glassbox.core.dihedral import dihedral_views

    tile = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    views = dihedral_views(tile)
    assert len(views) == 8 and all(v.shape == tile.shape for v in views)
    np.testing.assert_array_equal(views[0], tile)
    np.testing.assert_array_equal(views[1], np.rot90(tile, 1, axes=(2, 3)))
    np.testing.assert_array_equal(views[4], tile[..., ::-1])
    assert len({v.tobytes() for v in views}) == 8  # an asymmetric tile: all eight differ
    with pytest.raises(ModelLoadError, match="square"):
        dihedral_views(np.zeros((1, 2, 4, 6), dtype=np.float32))


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_test_time_augmentation_averages_logits_over_the_eight_views(tiny_model_files, kind):
    """predict_proba(dihedral_tta=True) = softmax of the mean logits over the 8 views; it then
    gives the same answer for a tile and for the tile turned by 90 degrees or mirrored, which
    the single pass does not."""
    from glassbox.core.models.backends import softmax

    model = load_model(tiny_model_files[kind])
    rng = np.random.default_rng(3)
    raw = np.stack([pattern_tile(k, TINY_TILE, rng) for k in (0, 1, 0, 1)])
    raw[:, :, :5, :] *= 0.3  # break the tiles' symmetry so that views really differ
    x = model.card.scaling.apply(raw).astype(np.float32)

    views = [np.rot90(t, k, axes=(2, 3)) for t in (x, x[..., ::-1]) for k in range(4)]
    expected = softmax(np.mean([model.predict_logits(np.ascontiguousarray(v)) for v in views], axis=0))
    got = model.predict_proba(x, dihedral_tta=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    turned = np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))
    mirrored = np.ascontiguousarray(x[..., ::-1])
    np.testing.assert_allclose(model.predict_proba(turned, dihedral_tta=True), got, atol=1e-5)
    np.testing.assert_allclose(model.predict_proba(mirrored, dihedral_tta=True), got, atol=1e-5)
    assert np.abs(model.predict_proba(turned) - model.predict_proba(x)).max() > 1e-4


def test_a_corrected_network_exports_to_onnx_with_the_same_logits(tmp_path):
    """The input corrector (statistics, exp gain, replicate padding) exports with the
    classifier behind it; the file gives Torch's logits."""
    import onnxruntime as ort

    from glassbox.core.models.architectures import build_model

    torch.manual_seed(0)
    net = build_model("corrected", in_channels=3, num_classes=4, tile_size=32,
                      classifier="resnet18_64", classifier_kwargs={"width": 8, "input_scale": 1.5}).eval()
    for parameter in net.corrector.parameters():  # a corrector that does something
        torch.nn.init.normal_(parameter, std=0.05)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = net(x).numpy()
        assert not np.allclose(expected, net.classifier(x).numpy(), atol=1e-3)
    path = tmp_path / "corrected.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x[:2].numpy()})[0]
    np.testing.assert_allclose(got, expected[:2], atol=1e-4)


def test_a_fresh_gated_ensemble_is_the_mean_logit_ensemble_and_exports_to_onnx(tmp_path):
    """A gate starts at g = 0.5 (the mean of its two experts' logits); once it has learnt
    something it weighs each tile on its own, and the ONNX file gives Torch's logits."""
    import onnxruntime as ort

    from glassbox.core.models.architectures import build_model

    torch.manual_seed(0)
    experts = [{"name": "resnet18_64", "kwargs": {"width": 8, "input_scale": 1.5}},
               {"name": "paper1_cnn", "kwargs": {}}]
    net = build_model("gated", in_channels=3, num_classes=4, tile_size=32, experts=experts, gate_width=8).eval()
    x = torch.randn(3, 3, 32, 32) * torch.tensor([0.3, 1.0, 3.0]).view(3, 1, 1, 1)  # a soft, a plain, a harsh tile
    with torch.no_grad():
        first, second = net.experts[0](x), net.experts[1](x)
        torch.testing.assert_close(net(x), (first + second) / 2)
        for parameter in net.gate.parameters():  # a gate that has learnt something
            torch.nn.init.normal_(parameter, std=0.2)
        weight = net.gate(x)
        expected = net(x).numpy()
    assert weight.shape == (3, 1) and float(weight.max() - weight.min()) > 1e-3
    np.testing.assert_allclose(expected, (weight * first + (1 - weight) * second).numpy(), atol=1e-5)
    path = tmp_path / "gated.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x[:2].numpy()})[0]
    np.testing.assert_allclose(got, expected[:2], atol=1e-4)
    with pytest.raises(ModelCardError, match="plain architecture"):
        build_model("gated", 3, 4, 32, experts=[{"name": "gated"}, experts[1]])
    with pytest.raises(ModelCardError, match="two"):
        build_model("gated", 3, 4, 32, experts=experts[:1])


def test_an_onnx_model_must_read_what_its_card_says(tmp_path, tiny_model_files):
    """ONNX models whose graph does not fit their card (two inputs; fixed band count or tile size
    other than the card's) are refused on load with a message naming the mismatch, not a runtime
    error from ONNX Runtime in the middle of a run."""
    import torch

    from glassbox.core.errors import ModelCardError
    from glassbox.core.models.backends import load_model
    from glassbox.core.models.export import attach_card_to_onnx

    class Two(torch.nn.Module):
        def forward(self, x, y):
            return (x + y).mean(dim=(2, 3))

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))[:, :2]

    cases = [(Two(), (torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16)), "has 2 inputs .x, y.; a Glassbox model"),
             (Mean(), (torch.zeros(1, 3, 16, 16),), "reads 3 bands, but its card says 2 bands"),
             (Mean(), (torch.zeros(1, 2, 32, 32),), "reads tiles of 32 x 32 px, but its card says tiles of 16 px")]
    for i, (module, args, message) in enumerate(cases):
        path = tmp_path / f"model{i}.onnx"
        torch.onnx.export(module, args, str(path), input_names=["x", "y"][:len(args)], dynamo=False)
        attach_card_to_onnx(path, tiny_model_files["card"])
        with pytest.raises(ModelCardError, match=message):
            load_model(path)
    assert load_model(tiny_model_files["onnx"]).card.tile_size == 16


def test_an_empty_model_file_is_called_empty(tmp_path):
    from glassbox.core.models.backends import load_model

    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="the model file is empty .0 bytes."):
        load_model(tmp_path / "empty.onnx")


def test_a_card_of_more_classes_than_the_class_raster_can_hold_is_refused():
    """254 or 255 classes had been accepted: their values 253 and 254 are Cloud and Unclassified
    to assess_map and sample_points (an audit). At most 253, with what to do."""
    from glassbox.core.errors import ModelCardError
    from glassbox.core.models.card import MAX_CLASSES, ClassInfo, ModelCard, Scaling

    def card(n):
        return ModelCard(name="many", classes=[ClassInfo(f"c{i}", "#000000") for i in range(n)], bands=["B04"],
                         scaling=Scaling(scale=1.0), tile_size=16, gsd=10.0, architecture={"name": "paper1_cnn"})

    card(MAX_CLASSES).validate()
    with pytest.raises(ModelCardError, match="254 classes: at most 253 .*253 Cloud, 254 Unclassified, 255 nodata"):
        card(254).validate()
