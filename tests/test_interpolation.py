"""Weight interpolation between two networks (WiSE-FT): the arithmetic, the written files, refusals."""

import json

import numpy as np
import pytest
import torch

from glassbox.core.models.architectures import build_model
from glassbox.core.models.backends import load_model
from glassbox.core.models.card import ClassInfo, ModelCard, Scaling
from glassbox.core.models.export import save_torch
from glassbox.core.models.interpolation import InterpolationError, interpolate_models, interpolate_state_dicts

from helpers import TINY_BANDS, TINY_CLASSES, load_script

ARCH = {"name": "resnet18_64", "kwargs": {"width": 8}}


def _card(name: str, architecture: dict = ARCH) -> ModelCard:
    return ModelCard(name=name, classes=[ClassInfo(n, c) for n, c in TINY_CLASSES], bands=list(TINY_BANDS),
                     scaling=Scaling(scale=1 / 1000.0, clip=[0, 10]), tile_size=32, gsd=10.0,
                     architecture=architecture, accuracy={"test_overall": 0.9})


def _network(seed: int, architecture: dict = ARCH) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(architecture["name"], 2, 2, 32, **architecture["kwargs"])
    net.train()
    with torch.no_grad():  # batch-norm statistics that differ between the two networks
        net(torch.randn(16, 2, 32, 32) * (1 + seed))
    return net.eval()


def test_the_line_between_two_state_dicts():
    first, second = _network(0).state_dict(), _network(1).state_dict()
    half = interpolate_state_dicts(first, second, 0.5)
    for key, value in first.items():
        if value.is_floating_point():
            torch.testing.assert_close(half[key], (value + second[key]) / 2)
        else:  # the batch counter comes from the first network
            assert torch.equal(half[key], value)
    assert not torch.equal(first["bn1.running_var"], second["bn1.running_var"])
    for w, expected in ((0.0, first), (1.0, second)):
        ends = interpolate_state_dicts(first, second, w)
        assert all(torch.equal(ends[k], v) for k, v in expected.items() if v.is_floating_point())
    with pytest.raises(InterpolationError, match="between 0 and 1"):
        interpolate_state_dicts(first, second, 1.5)
    with pytest.raises(InterpolationError, match="only in the first: fc.bias"):
        interpolate_state_dicts(first, {k: v for k, v in second.items() if k != "fc.bias"}, 0.5)
    wider = _network(0, {"name": "resnet18_64", "kwargs": {"width": 16}}).state_dict()
    with pytest.raises(InterpolationError, match="shape"):
        interpolate_state_dicts(first, wider, 0.5)


def test_interpolated_model_files_classify_as_the_interpolated_network(tmp_path):
    """The script writes .pt + card and ONNX; w = 0 is the first network, w = 1 the second,
    w = 0.5 neither, and the ONNX file gives the interpolated Torch network's logits."""
    first_path, second_path = tmp_path / "first.pt", tmp_path / "second.pt"
    save_torch(_network(0), _card("first"), first_path)
    save_torch(_network(1), _card("second"), second_path)
    out = tmp_path / "out"
    script = load_script("scripts/interpolate_weights.py")
    assert script.main(["--first", str(first_path), "--second", str(second_path), "--weights", "0", "0.5", "1",
                        "--out-dir", str(out), "--stem", "mix"]) == 0
    x = np.random.default_rng(0).normal(0, 1, (4, 2, 32, 32)).astype(np.float32)
    first_p, second_p = load_model(first_path).predict_logits(x), load_model(second_path).predict_logits(x)
    assert not np.allclose(first_p, second_p, atol=1e-3)
    np.testing.assert_allclose(load_model(out / "mix_w0.onnx").predict_logits(x), first_p, atol=1e-5)
    np.testing.assert_allclose(load_model(out / "mix_w1.onnx").predict_logits(x), second_p, atol=1e-5)
    half_onnx, half_torch = load_model(out / "mix_w0.5.onnx").predict_logits(x), load_model(out / "mix_w0.5.pt").predict_logits(x)
    np.testing.assert_allclose(half_onnx, half_torch, atol=1e-5)
    assert not np.allclose(half_onnx, first_p, atol=1e-3) and not np.allclose(half_onnx, second_p, atol=1e-3)
    card = json.loads((out / "mix_w0.5.json").read_text())
    record = card["training"]["weight_interpolation"]
    assert record["w"] == 0.5 and record["first"]["file"] == "first.pt" and len(record["second"]["sha256"]) == 64
    assert card["accuracy"] == {}  # not scored: the first network's accuracy would be a false claim


def test_networks_that_cannot_be_interpolated_are_refused_and_nothing_is_written(tmp_path):
    first_path = tmp_path / "first.pt"
    save_torch(_network(0), _card("first"), first_path)
    cnn = {"name": "paper1_cnn", "kwargs": {}}
    other_path = tmp_path / "cnn.pt"
    save_torch(_network(0, cnn), _card("cnn", cnn), other_path)
    with pytest.raises(InterpolationError, match="different architectures"):
        interpolate_models(first_path, other_path, 0.5, tmp_path / "mix.pt", tmp_path / "mix.onnx")
    reordered = _card("reordered")
    reordered.classes = reordered.classes[::-1]
    reordered_path = tmp_path / "reordered.pt"
    save_torch(_network(1), reordered, reordered_path)
    with pytest.raises(InterpolationError, match="another order"):
        interpolate_models(first_path, reordered_path, 0.5, tmp_path / "mix.pt")
    onnx_path = tmp_path / "first.onnx"
    onnx_path.write_bytes(b"not read")
    with pytest.raises(InterpolationError, match="Torch state dicts"):
        interpolate_models(onnx_path, first_path, 0.5, tmp_path / "mix.pt")
    assert not list(tmp_path.glob("mix*"))


def test_batchnorm_statistics_can_be_re_estimated_from_training_tiles(tmp_path):
    """``--batchnorm-data``: the interpolated network's running statistics come from the
    training split's tiles (some with random radiometry), not from the two networks; the same as
    re-estimating the plainly interpolated network with core.adaptation.adapt_batchnorm."""
    from PIL import Image

    from glassbox.core.adaptation import adapt_batchnorm
    from glassbox.core.training.datasets import split_of

    rgb = {"name": "resnet18_64", "kwargs": {"width": 8}}
    card = _card("rgb", rgb)
    card.bands, card.tile_size = ["B04", "B03", "B02"], 64
    card.scaling = Scaling(scale=1.0, clip=[0, 255], mean=[90.0, 95.0, 100.0], std=[40.0, 35.0, 30.0])
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_model("resnet18_64", 3, 2, 64, width=8).eval()
        paths.append(tmp_path / f"net{seed}.pt")
        save_torch(net, card, paths[-1])
    data = tmp_path / "eurosat"
    rng = np.random.default_rng(0)
    for name in ("Vegetation", "Water"):
        (data / name).mkdir(parents=True)
        for i in range(40):
            tile = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
            Image.fromarray(tile).save(data / name / f"{name}_{i}.jpg", quality=95)
    train = sum(split_of(f"{n}_{i}.jpg") == "train" for n in ("Vegetation", "Water") for i in range(40))
    script = load_script("scripts/interpolate_weights.py")
    common = ["--first", str(paths[0]), "--second", str(paths[1]), "--weights", "0.5", "--no-onnx"]
    assert script.main([*common, "--out-dir", str(tmp_path / "plain")]) == 0
    assert script.main([*common, "--out-dir", str(tmp_path / "bn"), "--batchnorm-data", str(data),
                        "--batchnorm-tiles", "16", "--batchnorm-radiometric-fraction", "0.5"]) == 0
    plain = load_model(tmp_path / "plain" / "interpolated_w0.5.pt").module
    re_estimated = load_model(tmp_path / "bn" / "interpolated_w0.5.pt").module
    assert train > 16
    assert not torch.allclose(plain.bn1.running_var, re_estimated.bn1.running_var)
    torch.testing.assert_close(plain.conv1.weight, re_estimated.conv1.weight)  # only the statistics differ
    record = json.loads((tmp_path / "bn" / "interpolated_w0.5.json").read_text())["training"]["weight_interpolation"]
    stats = record["batchnorm_statistics"]
    assert stats["tiles"] == 16 and stats["layers"] == 20 and "random radiometry" in stats["re_estimated_from"]

    inputs = np.random.default_rng(1).normal(0, 1, (8, 3, 64, 64)).astype(np.float32)
    module, _ = interpolate_models(paths[0], paths[1], 0.5, tmp_path / "core.pt", batchnorm_inputs=inputs)
    adapt_batchnorm(plain, inputs, batch_size=64, seed=0)
    for ours, theirs in zip(module.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(ours, theirs)
