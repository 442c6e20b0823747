"""Model registry: every architecture's forward/forward_all contract, stable keys, ImageNet weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _fixtures_data import REPO_ROOT

from distill.models import build_model, get_model_spec, list_models
from distill.weights import KNOWN_WEIGHTS, load_imagenet_weights
from lesionlite.errors import LesionliteError

EXPECTED = {
    "tiny_cnn": 32, "mobilenet_v2": 1280, "resnet18": 512, "resnet50": 2048, "densenet121": 1024,
    "efficientnet_b0": 1280, "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280,
}


def _weights_dir() -> Path | None:
    import os

    env = os.environ.get("LESIONLITE_DATA")
    cands = ([Path(env).parent / "weights"] if env else []) + [REPO_ROOT.parent / "shared" / "weights"]
    return next((c for c in cands if c.is_dir()), None)


WEIGHTS = _weights_dir()


def test_registry_lists_every_architecture() -> None:
    assert set(EXPECTED) <= set(list_models())
    with pytest.raises(LesionliteError, match="unknown model 'vgg99'"):
        build_model("vgg99", num_classes=7)
    with pytest.raises(LesionliteError, match="at least 2"):
        build_model("tiny_cnn", num_classes=1)


# Stable state-dict names (export rebuilds by arch name): first and last backbone key per arch.
FIRST_LAST_KEYS = {
    "tiny_cnn": ("features.0.0.weight", "features.3.1.num_batches_tracked"),
    "mobilenet_v2": ("features.0.0.weight", "features.18.1.num_batches_tracked"),
    "resnet18": ("features.conv1.weight", "features.layer4.1.bn2.num_batches_tracked"),
    "resnet50": ("features.conv1.weight", "features.layer4.2.bn3.num_batches_tracked"),
    "densenet121": ("features.conv0.weight", "features.norm5.num_batches_tracked"),
    "efficientnet_b0": ("features.0.0.weight", "features.8.1.num_batches_tracked"),
    **{f"efficientnet_lite{n}": ("features.conv_stem.weight", "features.bn2.num_batches_tracked") for n in range(3)},
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_forward_all_shapes_and_stable_keys(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5).eval()
    assert model.arch == arch and model.feature_dim == EXPECTED[arch] == get_model_spec(arch).feature_dim
    size = 32 if arch == "tiny_cnn" else 64
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model.forward_all(x)
    assert out.logits.shape == (1, 5)
    assert out.feature_map.ndim == 4 and out.feature_map.shape[:2] == (1, EXPECTED[arch])
    assert out.pooled.shape == (1, EXPECTED[arch])
    assert torch.allclose(out.pooled, out.feature_map.mean((2, 3)), atol=1e-5)
    keys = list(model.state_dict())
    assert all(k.startswith(("features.", "classifier.")) for k in keys), keys[:5]
    backbone = [k for k in keys if k.startswith("features.")]
    assert (backbone[0], backbone[-1]) == FIRST_LAST_KEYS[arch]
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]
    if arch == "densenet121":  # torchvision applies the final ReLU after features
        assert out.feature_map.min() >= 0
    if arch in ("tiny_cnn", "efficientnet_lite0"):
        with torch.no_grad():
            assert torch.equal(model(x), out.logits)  # forward = logits of forward_all
            if arch == "efficientnet_lite0":  # the backbone output is timm's forward_features
                assert torch.equal(model.features.forward_features(x), out.feature_map)


def test_mobilenet_v2_feature_map_at_224() -> None:
    model = build_model("mobilenet_v2", num_classes=7).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(1, 3, 224, 224))
    assert out.feature_map.shape == (1, 1280, 7, 7) and out.logits.shape == (1, 7)


def test_weights_from_generated_torchvision_state_dict(tmp_path: Path) -> None:
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("resnet18", num_classes=7)
    head_before = model.classifier.weight.detach().clone()
    info = load_imagenet_weights(model, path)
    assert torch.equal(model.features.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert torch.equal(model.features.bn1.running_var, tv.bn1.running_var)
    assert torch.equal(model.classifier.weight, head_before)  # the 7-class head stays as built
    assert info["dropped"] == ["fc.bias", "fc.weight"] and info["layout"] == "torchvision"
    assert info["mean"] == pytest.approx([0.485, 0.456, 0.406]) and "assumed" in info["normalization_source"]
    tv.eval()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # same backbone → same pooled features as torchvision's penultimate layer
        ref = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
        assert torch.allclose(model.forward_all(x).pooled, ref, atol=1e-5)
    # a caller override of the normalisation wins
    assert load_imagenet_weights(model, path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))["mean"] == [0.5] * 3


def test_weights_errors(tmp_path: Path) -> None:
    import torchvision

    model = build_model("mobilenet_v2", num_classes=7)
    with pytest.raises(LesionliteError, match="not found"):
        load_imagenet_weights(model, tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(LesionliteError, match="not a readable"):
        load_imagenet_weights(model, junk)
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(LesionliteError, match="not a state dict"):
        load_imagenet_weights(model, lst)
    # wrong architecture: names the missing/unexpected keys
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(LesionliteError, match=r"missing \d+ backbone key.*features\.0\.0\.weight"):
        load_imagenet_weights(model, r18)
    # right keys, wrong shapes (width 0.5 MobileNetV2) → shape mismatches listed
    half = tmp_path / "mnv2_half.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None, width_mult=0.5).state_dict(), half)
    with pytest.raises(LesionliteError, match="shape mismatch"):
        load_imagenet_weights(model, half)
    # one backbone key missing → strict failure
    sd = torchvision.models.mobilenet_v2(weights=None).state_dict()
    del sd["features.18.1.running_mean"]
    partial = tmp_path / "partial.pth"
    torch.save(sd, partial)
    with pytest.raises(LesionliteError, match="features.18.1.running_mean"):
        load_imagenet_weights(model, partial)


def test_real_shared_weights_load_strictly() -> None:
    if WEIGHTS is None:
        pytest.skip("no shared/weights folder beside the checkout or the data setting")
    mnv2 = WEIGHTS / "mobilenet_v2" / "mobilenet_v2_imagenet_torchvision_from_tf2ptq.pth"
    lite0 = WEIGHTS / "efficientnet_lite" / "tf_efficientnet_lite0_imagenet_timm.pth"
    if not (mnv2.is_file() and lite0.is_file()):
        pytest.skip(f"shared ImageNet weight files not present in {WEIGHTS}")
    m = build_model("mobilenet_v2", num_classes=7)
    info = load_imagenet_weights(m, mnv2)
    assert info["mean"] == [0.5] * 3 and info["std"] == [0.5] * 3 and info["num_tensors"] == 312
    assert info["dropped"] == ["classifier.1.bias", "classifier.1.weight"]
    sd = torch.load(mnv2, map_location="cpu", weights_only=True)
    assert torch.equal(m.features[18][0].weight, sd["features.18.0.weight"])
    e = build_model("efficientnet_lite0", num_classes=8)
    info = load_imagenet_weights(e, lite0)
    assert info["mean"] == [0.5] * 3 and info["layout"] == "timm" and lite0.name in KNOWN_WEIGHTS
    sd = torch.load(lite0, map_location="cpu", weights_only=True)
    assert torch.equal(e.features.conv_head.weight, sd["conv_head.weight"])
    with pytest.raises(LesionliteError, match="do not match architecture 'efficientnet_lite1'"):
        load_imagenet_weights(build_model("efficientnet_lite1", num_classes=8), lite0)


def test_load_student_with_wrong_class_count_is_one_clear_error(tmp_path: Path) -> None:
    from distill.artifacts import STUDENT_FILE, load_student, save_student
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    model = build_model("tiny_cnn", num_classes=3)
    manifest = Manifest(kind="checkpoint", architecture="tiny_cnn", class_names=["a", "b", "c"],
                        preprocessing=PreprocessConfig(input_size=32))
    save_student(tmp_path, model, manifest)
    back, _ = load_student(tmp_path)
    assert torch.equal(back.classifier.weight, model.classifier.weight)
    payload = torch.load(tmp_path / STUDENT_FILE, weights_only=True)
    payload["state_dict"] = build_model("tiny_cnn", num_classes=5).state_dict()  # 5-class head, 3-class manifest
    torch.save(payload, tmp_path / STUDENT_FILE)
    with pytest.raises(LesionliteError, match="shape mismatch"):
        load_student(tmp_path)


def test_bn_folded_weights_keep_batchnorm_frozen_in_train_mode(tmp_path: Path) -> None:
    """A file with identity BatchNorm (BN folded into the convs) is detected, and ``frozen_bn`` keeps
    BatchNorm in eval mode under ``train()`` so fine-tuning does not re-normalise the folded features."""
    from torch import nn

    src = build_model("mobilenet_v2", 7)
    assert not load_imagenet_weights_roundtrip(src, tmp_path / "fresh.pth")["bn_folded"]  # identity BN, β = 0
    src.train()
    with torch.no_grad():
        src(torch.randn(4, 3, 32, 32))  # BN statistics move off the identity, as in any trained file
    assert not load_imagenet_weights_roundtrip(src, tmp_path / "trained.pth")["bn_folded"]
    with torch.no_grad():  # simulate a BN-folded export: γ=1, running mean 0 / var 1, β = the folded bias
        for m in src.features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0), m.running_mean.zero_(), m.running_var.fill_(1.0), m.bias.normal_()
    dst = build_model("mobilenet_v2", 7)
    info = load_imagenet_weights_roundtrip(src, tmp_path / "folded.pth", dst)
    assert info["bn_folded"] is True

    dst.frozen_bn = True
    dst.train()
    bns = [m for m in dst.modules() if isinstance(m, nn.BatchNorm2d)]
    assert dst.training and dst.classifier.training and dst.dropout.training
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    dst(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(bns[0].running_mean, before)  # statistics untouched by a training forward
    assert bns[0].weight.grad is not None  # γ/β still learn
    dst.frozen_bn = False
    dst.train()
    assert all(m.training for m in bns)


def load_imagenet_weights_roundtrip(src, path: Path, dst=None) -> dict:
    """Save ``src``'s backbone in torchvision layout and load it into ``dst`` (a fresh model by default)."""
    sd = {k: v for k, v in src.state_dict().items() if k.startswith("features.")}
    torch.save(sd, path)
    return load_imagenet_weights(dst if dst is not None else build_model("mobilenet_v2", 7), path)


def test_recalibrating_folded_bn_keeps_the_function_and_restores_batch_statistics(tmp_path: Path) -> None:
    """Unfolding identity BN (``model.folded_bn=recalibrate``): eval outputs are unchanged, and in train
    mode the batch statistics of the calibration images are ≈ identity (the pretrained function)."""
    from torch import nn

    from distill.weights import bn_folded, recalibrate_folded_bn

    torch.manual_seed(0)
    m = build_model("mobilenet_v2", 7)
    with torch.no_grad():
        for mod in m.features.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.fill_(1.0), mod.running_mean.zero_(), mod.running_var.fill_(1.0), mod.bias.normal_()
    assert bn_folded(m)
    x = torch.randn(16, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        before = m(x)
    assert recalibrate_folded_bn(m, [x[:8], x[8:]]) == sum(isinstance(t, nn.BatchNorm2d) for t in m.features.modules())
    assert not bn_folded(m)
    with torch.no_grad():
        after_eval = m(x)
        m.train()
        m.dropout.eval()
        after_train = m(x)  # batch statistics of the very images calibrated on = the running ones
    assert torch.allclose(after_eval, before, atol=1e-4, rtol=1e-4)
    assert torch.allclose(after_train, before, atol=1e-2, rtol=1e-2)
