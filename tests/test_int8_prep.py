"""int8 preparation (export.int8_prep): BatchNorm folding, weight snapping, empirical bias correction.

The model here reproduces, in miniature, what broke int8 on the fine-tuned MobileNetV2 students: a
stem channel that ReLU6 keeps at a constant (dead) feeds a depthwise convolution whose BatchNorm has
a large gain, so rounding that channel's weights shifts the layer's output by a constant that reaches
the logits. Assertions are on numbers that do not depend on the machine.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from export.int8_prep import fold_batchnorm, prepare_for_int8
from lesionlite.int8_grid import snap_to_int8_grid


class DeadChannelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.head = nn.Linear(16, 5)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            # stem channel 0 saturates at 6 for every input: dead, constant
            self.stem[1].bias[0] = 100.0
            # the depthwise filter on it has a large, non-grid sum and a big BatchNorm gain
            self.dw[0].weight[0] = torch.tensor([[0.9131, -0.4412, 0.2718], [0.3333, 1.0, -0.6667], [0.1, 0.2, 0.3]])
            self.dw[1].weight[0] = 12.0
            # centred so the shifted output stays inside ReLU6's linear range instead of saturating
            self.dw[1].running_mean[0] = 6.0 * float(self.dw[0].weight[0].sum())
            self.dw[1].running_var[0] = 1.0
            self.dw[1].bias[0] = 3.0
        self.eval()

    def forward(self, x):
        x = self.pw(self.dw(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _naive_int8_weights(model: nn.Module) -> nn.Module:
    folded, _, _ = fold_batchnorm(model)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(snap_to_int8_grid(m.weight))
    return folded


def test_snap_to_int8_grid_is_per_channel_symmetric_and_idempotent():
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))  # not the global RNG: order-independent
    w[2] = 0.0  # an all-zero channel stays zero (no division by zero)
    q = snap_to_int8_grid(w)
    scale = w.abs().amax((1, 2, 3), keepdim=True) / 127
    nonzero = scale.flatten() > 0
    steps = (q / torch.where(scale > 0, scale, torch.ones_like(scale)))[nonzero]
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # every value is an integer step
    # the max (hence the scale) is kept, up to float rounding: 127 * (m / 127) is m or one ulp from it
    assert torch.allclose(q.abs().amax((1, 2, 3)), w.abs().amax((1, 2, 3)), rtol=2e-7, atol=0)
    assert torch.equal(q[2], w[2])
    assert torch.allclose(snap_to_int8_grid(q), q, atol=1e-6)  # a quantizer re-deriving the scale rounds nothing
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_fold_batchnorm_keeps_the_function_and_leaves_the_original_alone():
    model = DeadChannelNet()
    before = copy.deepcopy(model.state_dict())
    folded, pairs, note = fold_batchnorm(model)
    assert pairs == 3 and "fx" in note
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bias_correction_removes_the_mean_shift_of_int8_weights():
    model = DeadChannelNet()
    gen = torch.Generator().manual_seed(1)
    calib = torch.rand(64, 3, 12, 12, generator=gen).numpy()
    held_out = torch.rand(64, 3, 12, 12, generator=gen)
    prepared, report = prepare_for_int8(model, calib)
    assert report.folded_batchnorms == 3 and report.corrected_layers == 4 and report.samples == 64
    naive = _naive_int8_weights(model)
    with torch.no_grad():
        ref, out_naive, out_prep = model(held_out), naive(held_out), prepared(held_out)
    naive_bias = (out_naive - ref).mean(0).abs().max().item()
    prep_bias = (out_prep - ref).mean(0).abs().max().item()
    print(f"mean logit shift: naive int8 weights {naive_bias:.4f}, prepared {prep_bias:.4f}")
    # the dead channel makes naive int8 weights shift the logits; correction takes most of it out
    assert naive_bias > 0.04
    assert prep_bias < naive_bias / 4
    # and the prepared weights already lie on the int8 grid: quantizing them again changes nothing
    for m in prepared.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.allclose(snap_to_int8_grid(m.weight), m.weight, atol=1e-6)


def test_onnxruntime_quantizer_rounds_prepared_weights_to_themselves(tmp_path):
    """The grid assumption, checked against onnxruntime's own per-channel QDQ quantizer."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.quantize import onnx_calibration_reader

    model = DeadChannelNet()
    calib = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(2)).numpy()
    prepared, _ = prepare_for_int8(model, calib)
    fp32, int8 = tmp_path / "prep.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(prepared, (torch.zeros(1, 3, 12, 12),), str(fp32), dynamo=False, input_names=["input"])
    quantize_static(str(fp32), str(int8), onnx_calibration_reader(calib, "input"), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    graph = onnx.load(str(int8)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dequantized = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].dtype == np.int8:
            q, scale = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
            if q.ndim >= 2:  # weights, not biases
                dequantized.append(q * scale.reshape(-1, *([1] * (q.ndim - 1))))
    weights = [m.weight.detach().numpy() for m in prepared.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(dequantized) == len(weights) == 4
    for w in weights:
        match = [d for d in dequantized if d.shape == w.shape]
        assert match and min(np.abs(d - w).max() for d in match) < 1e-6
