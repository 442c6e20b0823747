"""TFLite int8 (export.tflite_int8): global min/max calibration and int32 biases of all-zero filters.

A tiny network reproduces the two defects that put the TFLite int8 of real MobileNetV2 students ~8
points of top-1 agreement below the ONNX int8 of the same prepared model (``benchmarks/RESULTS.md``,
``benchmarks/tflite_int8_probe.py``):

* calibration: ai-edge-quantizer merges per-image ranges with a moving average, so one wide-range
  calibration image among narrow ones is forgotten and its values are clipped; export must use the
  global min/max (as onnxruntime's MinMax does);
* a conv filter whose weights are all zero and whose bias is positive (a dead ImageNet filter: it
  outputs the constant ``relu6(bias)``) got an int32 bias that wrapped to −2^31, so the channel output 0.

Deterministic (seeded weights and data) and CPU-fast (one ~3 s conversion of a 16 px model).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")
from torch import nn

pytestmark = [
    pytest.mark.slow,
    # the quantizer's own chatter: its calibrator keeps all tensors; its bias cast overflows (what export repairs)
    pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
]

SIZE = 16
ZERO_FILTER, ZERO_FILTER_BIAS = 5, 2.0


class ZeroFilterNet(nn.Module):
    """conv 3→8 + ReLU6 with filter 5 all zero (bias +2: a constant 2), mean pool, linear head that reads it."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.copy_(torch.rand(8, generator=g) * 0.5)
            self.conv.weight[ZERO_FILTER] = 0.0
            self.conv.bias[ZERO_FILTER] = ZERO_FILTER_BIAS
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g))
            self.head.weight[:, ZERO_FILTER] = torch.tensor([1.5, -1.0, 0.5, -0.5])
            self.head.bias.zero_()
        self.eval()

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def _images(n: int, amplitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-amplitude, amplitude, (n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The model's int8 .tflite as export writes it; calibration: one [-1, 1] image, then 39 in [-0.2, 0.2]."""
    from export.api import ExportContext, ExportOptions
    from export.formats.tflite import TFLiteFormat
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    cfg = PreprocessConfig(input_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    source = Manifest(kind="checkpoint", architecture="zero_filter_net", class_names=list("abcd"), preprocessing=cfg)
    wide = _images(1, 1.0, 1)
    wide[0, 0, 0, 0], wide[0, 1, 0, 1] = -1.0, 1.0  # the global range is exactly [-1, 1]
    calib = np.concatenate([wide, _images(39, 0.2, 2)])
    model = ZeroFilterNet()
    work = tmp_path_factory.mktemp("tflite_int8")
    options = ExportOptions.from_kwargs({"phone_input_size": "none"})  # the model's own graph is the subject
    ctx = ExportContext(model=model, source=source, preprocessing=cfg, calib=calib, options=options, workdir=work)
    dest = work / "model.tflite"
    fmt = TFLiteFormat()
    info = fmt.convert(ctx, "int8", dest)
    return model, calib, dest, info, fmt.load_runner(dest, info)


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _expected(model: nn.Module, x: np.ndarray, info) -> np.ndarray:
    """What the artifact should output for ``x``: PyTorch's logits, or softmax of them where the graph ends in
    softmax(logits / T) (export's TFLite contract: probabilities out; T = 1 here)."""
    z = _torch(model, x)
    if (info.output or {}).get("kind") != "probabilities":
        return z
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_calibration_keeps_the_global_range(converted):
    from ai_edge_litert.interpreter import Interpreter

    model, calib, path, _, run = converted
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    quantize = next(op for op in it._get_ops_details() if op["op_name"] == "QUANTIZE")
    scale, zero = it.get_tensor_details()[quantize["outputs"][0]]["quantization"]
    lo, hi = (-128 - zero) * scale, (127 - zero) * scale
    info = converted[3]
    # the artifact takes pixels in [0, 1] where its input says so (normalisation inside the graph)
    pixels = bool((info.input or {}).get("pixel_scale"))
    data = calib * 0.5 + 0.5 if pixels else calib  # mean = std = 0.5: normalised [-1, 1] is pixels [0, 1]
    print(f"input quantization range [{lo:.3f}, {hi:.3f}] (calibration data: [{data.min():.3f}, {data.max():.3f}])")
    # the moving average forgot the one wide image (about a third of the range); global min/max keeps all of it
    assert lo <= data.min() + scale and hi >= data.max() - scale
    wide = calib[:1]
    err = np.abs(run(wide) - _expected(model, wide, info)).max()
    assert err < 0.1, f"int8 outputs of the wide calibration image off by {err:.3f}"


def test_all_zero_filter_keeps_its_bias(converted):
    from ai_edge_litert.interpreter import Interpreter

    model, _, path, info, run = converted
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    conv = next(op for op in it._get_ops_details() if op["op_name"] == "CONV_2D")
    detail = it.get_tensor_details()[conv["inputs"][2]]
    raw = it.get_tensor(conv["inputs"][2])
    assert raw.dtype == np.int32
    bias = raw.astype(np.int64)
    scales = detail["quantization_parameters"]["scales"]
    weight_scales = it.get_tensor_details()[conv["inputs"][1]]["quantization_parameters"]["scales"]
    assert bias.min() > np.iinfo(np.int32).min  # nothing wrapped to -2^31
    assert abs(bias[ZERO_FILTER] * scales[ZERO_FILTER] - ZERO_FILTER_BIAS) < 1e-3
    assert np.all(it.get_tensor(conv["inputs"][1])[ZERO_FILTER] == 0)  # the filter stays zero
    assert weight_scales[ZERO_FILTER] == pytest.approx(weight_scales[np.arange(8) != ZERO_FILTER].max())
    x = _images(16, 0.2, 3)
    ref, out = _expected(model, x, info), run(x)
    err = np.abs(out - ref).max()
    print(f"max |Δoutput| on 16 images: {err:.4f}")
    # a wrapped bias makes the channel 0 instead of 2: the logits move by up to 1.5 × 2 = 3 (probabilities by ~0.5)
    assert err < 0.1
    assert np.array_equal(out.argmax(1), ref.argmax(1))
    repair = info.extra["quantization"]["bias_repair"]  # and the manifest says what was done
    assert repair["applied"] and repair["channels"] == 1 and repair["repaired"][0]["channels"] == [ZERO_FILTER]
