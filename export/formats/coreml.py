"""CoreML export: an ``mlprogram`` ``.mlpackage`` classifier (coremltools 9.0), image input, class labels.

* The student is wrapped before conversion so that the package is a complete classifier:
  ``probs = softmax(student((x - mean) / std) / T)`` with the checkpoint's calibration temperature T.
  The input is an ``ImageType`` (RGB, ``scale = 1/255``, no bias), i.e. the model receives pixels in
  [0, 1] and does the per-channel mean/std normalisation *inside the graph*. ImageType alone cannot
  express it: its ``scale`` is one scalar for all channels (only ``bias`` is per channel), so with
  ImageNet std (0.229, 0.224, 0.225) a scale/bias-only encoding would be off by up to 2 %; the
  in-graph normalisation is exact. Resizing/cropping to ``input_size`` stays the caller's job
  (``lesionlite.preprocessing.resize_and_crop``; in Swift, Vision's ``VNCoreMLRequest`` does it).
* ``ClassifierConfig`` with the checkpoint's class names: outputs ``classLabel`` (string) and
  ``classLabel_probs`` (dict class → probability).
* Conversion goes through ``torch.jit.trace``: coremltools 9.0 warns that torch 2.14.1 is newer than
  the versions it was tested with, and its ``torch.export`` path rejects an ExportedProgram in the
  TRAINING dialect (it wants ``run_decompositions``); the TorchScript frontend converts these models
  without problems, so export uses it.
* Precisions: fp16 (``compute_precision=FLOAT16``, the default for mlprogram), fp32, and int8 =
  fp16 model + ``coremltools.optimize.coreml.linear_quantize_weights`` (int8 symmetric per-channel
  weights for tensors ≥ 2048 elements, the coremltools default; compute stays fp16).

Not numerically verified on Linux: CoreML prediction needs macOS. On Linux the package is validated
by reloading its spec and checking the input (image, size, colour layout), the outputs, the class
labels and the op types (e.g. ``constexpr_affine_dequantize`` for int8 weights). On macOS the runner
predicts and export checks parity like for the other formats.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.formats import ArtifactInfo, ExportFormat, register_format
from lesionlite.errors import LesionliteError

if TYPE_CHECKING:  # pragma: no cover
    from export.context import ExportContext

INPUT_NAME = "image"
LABEL_NAME = "classLabel"
PROBS_NAME = "classLabel_probs"
UNVERIFIED = "CoreML prediction needs macOS; on Linux only the spec (inputs, outputs, labels, ops) is checked"


def _classifier_wrapper(ctx: ExportContext, model: Any) -> Any:
    import torch
    from torch import nn

    cfg = ctx.preprocessing

    class ImageClassifier(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1))
            self.temperature = float(ctx.temperature)

        def forward(self, x):
            logits = self.inner((x - self.mean) / self.std)
            return torch.softmax(logits / self.temperature, dim=1)

    return ImageClassifier(model).eval()


def _ops(spec: Any) -> dict[str, int]:
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    return dict(sorted(ops.items()))


@register_format
class CoreMLFormat(ExportFormat):
    name = "coreml"
    kind = "coreml"
    model_file = "model.mlpackage"
    is_dir = True
    output_kind = "probabilities"
    requires = (("coremltools", "CoreML export"),)
    tool_packages = ("coremltools",)

    def convert(self, ctx: ExportContext, precision: str, dest: Path) -> ArtifactInfo:
        import coremltools as ct
        import torch

        s = ctx.input_size
        model, source = ctx.float_source(precision)  # int8: the prepared copy (export.int8_prep)
        key = "coreml_fp32" if precision == "fp32" else f"coreml_fp16_{source}"
        if key not in ctx.cache:
            traced = torch.jit.trace(_classifier_wrapper(ctx, model), torch.rand(1, 3, s, s))
            ctx.cache[key] = ct.convert(
                traced,
                inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, 3, s, s), scale=1.0 / 255.0, bias=[0.0, 0.0, 0.0],
                                     color_layout=ct.colorlayout.RGB)],
                classifier_config=ct.ClassifierConfig(ctx.class_names),
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                minimum_deployment_target=ct.target.iOS16,
            )
        mlmodel = ctx.cache[key]
        extra: dict[str, Any] = {"converter": "coremltools.convert(torch.jit.trace(...), convert_to='mlprogram')",
                                 "minimum_deployment_target": "iOS16",
                                 "compute_precision": "float32" if precision == "fp32" else "float16",
                                 "unverified_reason": UNVERIFIED}
        if precision == "int8":
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            mlmodel = linear_quantize_weights(
                mlmodel, OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                  dtype="int8", weight_threshold=2048))
            )
            extra["quantization"] = {"method": "coremltools linear_quantize_weights", "weights":
                                     "int8 symmetric per-channel (tensors >= 2048 elements)", "activations": "float16"}
        meta = mlmodel.user_defined_metadata
        meta["lesionlite.architecture"] = ctx.architecture
        meta["lesionlite.class_names"] = json.dumps(ctx.class_names)
        meta["lesionlite.preprocessing"] = json.dumps(ctx.preprocessing.to_dict())
        meta["lesionlite.temperature"] = repr(ctx.temperature)
        meta["lesionlite.precision"] = precision
        mlmodel.short_description = f"lesionlite {ctx.architecture} skin-lesion classifier ({precision})"
        mlmodel.save(str(dest))
        return ArtifactInfo(
            input={"name": INPUT_NAME, "type": "image", "layout": "NHWC", "dtype": "uint8", "shape": [1, s, s, 3],
                   "color_layout": "RGB", "quantization": None, "pixel_scale": 1.0 / 255.0,
                   "normalization": "in graph: (pixel/255 - mean) / std with the manifest's preprocessing"},
            output={"name": PROBS_NAME, "label_name": LABEL_NAME, "kind": "probabilities", "dtype": "float32",
                    "quantization": None, "temperature_applied": True},
            extra=extra,
        )

    def validate(self, path: Path, info: ArtifactInfo, ctx: ExportContext) -> dict[str, Any]:
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))
        desc = spec.description
        s = ctx.input_size
        if [i.name for i in desc.input] != [INPUT_NAME]:
            raise LesionliteError(f"{path.name}: unexpected inputs {[i.name for i in desc.input]}")
        img = desc.input[0].type.imageType
        if (img.width, img.height) != (s, s) or img.colorSpace != ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB:
            raise LesionliteError(f"{path.name}: input image is {img.width}x{img.height} colour space {img.colorSpace}")
        outputs = sorted(o.name for o in desc.output)
        if outputs != sorted([LABEL_NAME, PROBS_NAME]) or desc.predictedProbabilitiesName != PROBS_NAME:
            raise LesionliteError(f"{path.name}: unexpected outputs {outputs}")
        if spec.WhichOneof("Type") != "mlProgram":
            raise LesionliteError(f"{path.name}: not an mlprogram")
        ops = _ops(spec)
        labels = json.loads(desc.metadata.userDefined["lesionlite.class_names"])
        if labels != ctx.class_names or "classify" not in ops:
            raise LesionliteError(f"{path.name}: not a classifier over the checkpoint's class labels")
        quantized = ops.get("constexpr_affine_dequantize", 0) + ops.get("constexpr_blockwise_shift_scale", 0)
        if info.extra.get("quantization") and quantized == 0:
            raise LesionliteError(f"{path.name}: int8 requested but no weight was quantized")
        return {"spec_reload": "passed", "spec_version": int(spec.specificationVersion), "op_types": ops,
                "int8_weight_tensors": quantized, "numerically_verified": sys.platform == "darwin"}

    def load_runner(self, path: Path, info: ArtifactInfo):
        if sys.platform != "darwin":  # pragma: no cover - exercised on macOS only
            return None
        import coremltools as ct  # pragma: no cover
        from PIL import Image  # pragma: no cover

        model = ct.models.MLModel(str(path))  # pragma: no cover
        labels = None  # pragma: no cover

        def run(x: np.ndarray) -> np.ndarray:  # pragma: no cover
            nonlocal labels
            meta = json.loads(model.user_defined_metadata["lesionlite.preprocessing"])
            mean = np.asarray(meta["mean"], np.float32)[:, None, None]
            std = np.asarray(meta["std"], np.float32)[:, None, None]
            if labels is None:
                labels = json.loads(model.user_defined_metadata["lesionlite.class_names"])
            outs = []
            for chw in x:
                pixels = np.clip(np.rint((chw * std + mean) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
                probs = model.predict({INPUT_NAME: Image.fromarray(pixels, "RGB")})[PROBS_NAME]
                outs.append([probs[c] for c in labels])
            return np.asarray(outs, np.float32)

        return run
