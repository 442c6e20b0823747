"""TFLite metadata, so that phone task runtimes (MediaPipe Tasks, the TFLite Task Library) run the file as exported.

Without metadata MediaPipe's ``vision.ImageClassifier`` refuses a float-input model ("it requires
specifying NormalizationOptions metadata") and an app team must re-write the preprocessing, the
label list and the softmax by hand — the classic source of silent accuracy loss on the phone. Every
exported ``.tflite`` therefore carries (written here with the flatbuffers package and the metadata
schema's generated Python that the mediapipe 1.2.2 wheel ships — its own writers fail to import, as
``mediapipe.tasks.cc`` is missing from the wheel, and tflite-support 0.4.4 needs protobuf < 4, which
onnx 1.23 (protobuf ≥ 6.31) rules out):

* general metadata: name, version, description with the research-use disclaimer, author, licence;
* the input as an RGB image. The graph takes *pixels*: float32 ``pixel / 255`` (NormalizationOptions
  mean 0, std 255) or, with integer I/O, the uint8 pixels themselves (scale 1/255, zero point 0) — the
  per-channel mean/std of :mod:`lesionlite.preprocessing` is applied inside the graph, exactly, as
  CoreML does. (MediaPipe's ImageToTensor maps a float input to one [min, max] range computed from the
  *first* mean/std value only, so a per-channel normalisation written as metadata would be wrong for
  green and blue; its ImageClassifier refuses an int8 input, or output, hence :func:`uint8_io`.)
* the output as classification scores: ``softmax(logits / T)`` with the calibration temperature T is
  computed in the graph, and two label files ride along (class codes, and display names for locale
  ``en``), so ``category_name`` is the code and ``display_name`` the readable name.

:func:`add_metadata` checks that the LiteRT outputs of the model are bit-identical with and without
the metadata (metadata is a flatbuffer side table and must not change the graph).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from export.tflite_compact import serialize
from lesionlite.classes import display_name
from lesionlite.errors import LesionliteError, require

#: shown in every exported model's description: what the model is not
DISCLAIMER = ("Research use only: not a medical device, not validated for clinical use, and not a substitute "
              "for diagnosis by a dermatologist.")
LICENSE = "Apache-2.0 (lesionlite); see the model card for the training data's terms"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
#: MediaPipe's ImageToTensor maps pixel p to (p - mean) / std: p / 255 for a float input
PIXEL_NORM_MEAN, PIXEL_NORM_STD = 0.0, 255.0
LABELS_FILE, DISPLAY_LABELS_FILE = "labels.txt", "labels_en.txt"
METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
#: the oldest metadata parser that reads every field written here (image properties, normalisation,
#: label files with a locale: all of metadata schema 1.0)
MIN_PARSER_VERSION = "1.0.0"


def _schema() -> Any:
    """MediaPipe's generated metadata schema (pure Python flatbuffers code inside the mediapipe wheel)."""
    require("mediapipe", "export", "TFLite metadata (the metadata flatbuffer schema) and the MediaPipe check")
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mfb

    return mfb


def describe(architecture: str, precision: str, temperature: float, class_names: list[str],
             input_size: int, extra: str = "") -> str:
    """The model's description: what goes in, what comes out, and the disclaimer."""
    return (f"lesionlite {architecture} skin-lesion (dermoscopy) classifier, {precision}. Input: an RGB image, "
            f"resized by the runtime to {input_size}x{input_size} (whole image, aspect ratio not kept). Output: "
            f"calibrated probabilities softmax(logits / {temperature:.4g}) over {len(class_names)} classes "
            f"({', '.join(class_names)}). {extra}{DISCLAIMER}")


def _tensor_md(mfb: Any, name: str, description: str, lo: float, hi: float) -> Any:
    t = mfb.TensorMetadataT()
    t.name, t.description = name, description
    t.stats = mfb.StatsT()
    t.stats.min, t.stats.max = [lo], [hi]
    t.content = mfb.ContentT()
    return t


def _labels(mfb: Any, name: str, locale: str | None, description: str) -> Any:
    f = mfb.AssociatedFileT()
    f.name, f.description, f.type, f.locale = name, description, mfb.AssociatedFileType.TENSOR_AXIS_LABELS, locale
    return f


def metadata_buffer(name: str, version: str, description: str, input_size: int | None = None,
                    model_input_size: int | None = None) -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer of an image classifier (pixel input, probabilities out, label files).

    ``input_size``: the input tensor's side (image properties' default size); when it is larger than
    ``model_input_size`` the input's description says that the graph downscales it to that side itself."""
    import flatbuffers

    mfb = _schema()
    resize = (f"; the graph downscales the {input_size}x{input_size} input to the model's "
              f"{model_input_size}x{model_input_size} with the training preprocessing's antialiased bilinear filter"
              if input_size and model_input_size and input_size != model_input_size else "")
    image = _tensor_md(mfb, INPUT_NAME, "RGB image; pixels enter the graph as p/255 (float32) or p (uint8) and "
                       "are normalised inside it with lesionlite's mean/std" + resize, 0.0, 1.0)
    image.content.contentPropertiesType = mfb.ContentProperties.ImageProperties
    image.content.contentProperties = mfb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = mfb.ColorSpaceType.RGB
    if input_size:
        size = mfb.ImageSizeT()
        size.width = size.height = int(input_size)
        image.content.contentProperties.defaultSize = size
    norm = mfb.ProcessUnitT()
    norm.optionsType = mfb.ProcessUnitOptions.NormalizationOptions
    norm.options = mfb.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [PIXEL_NORM_MEAN], [PIXEL_NORM_STD]
    image.processUnits = [norm]
    probs = _tensor_md(mfb, OUTPUT_NAME, "calibrated class probabilities: softmax(logits / temperature)", 0.0, 1.0)
    probs.content.contentPropertiesType = mfb.ContentProperties.FeatureProperties
    probs.content.contentProperties = mfb.FeaturePropertiesT()
    probs.associatedFiles = [_labels(mfb, LABELS_FILE, None, "class codes, one per output index"),
                             _labels(mfb, DISPLAY_LABELS_FILE, "en", "display names, one per output index")]
    sg = mfb.SubGraphMetadataT()
    sg.inputTensorMetadata, sg.outputTensorMetadata = [image], [probs]
    md = mfb.ModelMetadataT()
    md.name, md.version, md.description, md.author, md.license = name, version, description, "lesionlite", LICENSE
    md.subgraphMetadata = [sg]
    md.minParserVersion = MIN_PARSER_VERSION
    b = flatbuffers.Builder(0)
    b.Finish(md.Pack(b), METADATA_IDENTIFIER)
    return bytes(b.Output())


def _attach(model_bytes: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """The model with ``metadata`` as its ``TFLITE_METADATA`` buffer and ``files`` zipped behind it (stored,
    uncompressed, as the metadata populators of tflite-support and MediaPipe pack associated files)."""
    import io
    import zipfile

    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    buf = schema.BufferT()
    buf.data = np.frombuffer(metadata, np.uint8).copy()
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    packed, _ = serialize(model, model_bytes, dedupe=False)
    out = io.BytesIO(packed)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def add_metadata(model_bytes: bytes, *, name: str, version: str, description: str, class_names: list[str],
                 outputs_of: Callable[[bytes], list[np.ndarray]] | None = None, input_size: int | None = None,
                 model_input_size: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """``model_bytes`` with image-classifier metadata, and what was written (for the manifest).

    ``outputs_of(model_bytes)`` runs a model on a few images; when given, the outputs with and without
    metadata must be identical, else :class:`LesionliteError`.
    """
    files = {LABELS_FILE: ("\n".join(class_names) + "\n").encode(),
             DISPLAY_LABELS_FILE: ("\n".join(display_name(c) for c in class_names) + "\n").encode()}
    out = _attach(model_bytes, metadata_buffer(name, version, description, input_size, model_input_size), files)
    info: dict[str, Any] = {"schema": "TFLite metadata (MediaPipe's metadata_schema, min parser "
                                      f"{MIN_PARSER_VERSION})", "name": name, "version": version,
                            "labels": f"{LABELS_FILE} (codes), {DISPLAY_LABELS_FILE} (display names, en)",
                            "input_normalization": {"mean": [PIXEL_NORM_MEAN], "std": [PIXEL_NORM_STD]},
                            "disclaimer": DISCLAIMER}
    if input_size:
        info["image_size"] = [int(input_size), int(input_size)]
        if model_input_size and model_input_size != input_size:
            info["resize_in_graph"] = f"{input_size} -> {model_input_size}"
    if outputs_of is not None:
        if not all(np.array_equal(a, b) for a, b in zip(outputs_of(model_bytes), outputs_of(out))):
            raise LesionliteError(f"{name}: LiteRT outputs changed when TFLite metadata was added")
        info["outputs_unchanged"] = True
    return out, info


#: the pixel grid: uint8 pixel p is p / 255 (what MediaPipe writes into a uint8 input), and the int8 tensor
#: behind it holds p - 128 at the same scale
PIXEL_SCALE, UINT8_ZERO_POINT, INT8_ZERO_POINT = 1.0 / 255.0, 0, -128


def _quantize_op(model: Any, src: int, dst: int) -> Any:
    """A QUANTIZE operator (requantisation between int8 and uint8) from tensor ``src`` to ``dst``."""
    from ai_edge_litert import schema_py_generated as schema

    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
    code.version = 2
    model.operatorCodes.append(code)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(model.operatorCodes) - 1, [src], [dst]
    return op


def _uint8_twin(model: Any, sg: Any, index: int, scale: float, zero_point: int) -> int:
    """Add a uint8 tensor shaped like ``index`` that takes over its name (the int8 one gets ``_int8``)."""
    from ai_edge_litert import schema_py_generated as schema

    t = sg.tensors[index]
    new = schema.TensorT()
    new.name, t.name = t.name, (t.name.decode() if isinstance(t.name, bytes) else t.name) + "_int8"
    new.shape, new.shapeSignature, new.type = t.shape, t.shapeSignature, schema.TensorType.UINT8
    new.quantization = schema.QuantizationParametersT()
    new.quantization.scale, new.quantization.zeroPoint = [scale], [zero_point]
    model.buffers.append(schema.BufferT())
    new.buffer = len(model.buffers) - 1
    sg.tensors.append(new)
    for sig in model.signatureDefs or []:
        for io in list(sig.inputs or []) + list(sig.outputs or []):
            if io.tensorIndex == index:
                io.tensorIndex = len(sg.tensors) - 1
    return len(sg.tensors) - 1


def uint8_io(model_bytes: bytes) -> tuple[bytes, dict[str, Any]]:
    """An int8-I/O graph with uint8 I/O: ``uint8 pixels (1/255, 0) → QUANTIZE → int8 … int8 → QUANTIZE → uint8``.

    MediaPipe's ImageClassifier accepts only uint8 or float32 inputs and outputs ("Requested one of these
    types: uint8/float32, got INT8"); it fills a uint8 input with the raw pixels. The int8 input tensor is
    pinned to the pixel grid (1/255, -128) — calibration gave it roughly [0, 1] — so both requantisations
    are exact shifts by 128 (same scale) and every pixel value is represented without loss. Ops read their
    tensors' parameters when the interpreter prepares them, so the graph stays consistent.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    sg = model.subgraphs[0]
    x, y = sg.tensors[sg.inputs[0]], sg.tensors[sg.outputs[0]]
    if any(t.type != schema.TensorType.INT8 or t.quantization is None or t.quantization.scale is None for t in (x, y)):
        return model_bytes, {"applied": False, "reason": "input or output is not int8"}
    before = {"scale": float(x.quantization.scale[0]), "zero_point": int(x.quantization.zeroPoint[0])}
    x.quantization.scale, x.quantization.zeroPoint = [PIXEL_SCALE], [INT8_ZERO_POINT]
    repinned = _repin_passthrough(model, sg, sg.inputs[0], before)
    y_scale, y_zero = float(y.quantization.scale[0]), int(y.quantization.zeroPoint[0])
    old_in, old_out = sg.inputs[0], sg.outputs[0]
    new_in = _uint8_twin(model, sg, old_in, PIXEL_SCALE, UINT8_ZERO_POINT)
    new_out = _uint8_twin(model, sg, old_out, y_scale, y_zero + 128)
    sg.operators = [_quantize_op(model, new_in, old_in), *sg.operators, _quantize_op(model, old_out, new_out)]
    sg.inputs, sg.outputs = [new_in], [new_out]
    out, _ = serialize(model, model_bytes, dedupe=False)
    return out, {"applied": True, "input": "uint8 pixels (scale 1/255, zero point 0) -> QUANTIZE -> int8",
                 "output": f"int8 -> QUANTIZE -> uint8 (scale {y_scale:.6g}, zero point {y_zero + 128})",
                 "calibrated_int8_input": before, **({"repinned_passthrough_ops": repinned} if repinned else {})}


#: ops whose int8 output must carry its input's scale and zero point (XNNPACK refuses to prepare them otherwise)
_PASSTHROUGH_OPS = ("PAD", "PADV2", "RESHAPE")


def _repin_passthrough(model: Any, sg: Any, index: int, before: dict[str, Any]) -> list[str]:
    """After the input tensor was pinned to the pixel grid: the ops that pass it through unchanged (the in-graph
    downscale's PAD) get the same parameters on their output, where they had the input's calibrated ones."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    done: list[str] = []
    frontier = [index]
    while frontier:
        t = frontier.pop()
        for op in sg.operators:
            if op.inputs is None or len(op.inputs) == 0 or int(op.inputs[0]) != t:
                continue
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)))
            out = sg.tensors[op.outputs[0]]
            q = out.quantization
            if name not in _PASSTHROUGH_OPS or q is None or q.scale is None or len(q.scale) != 1:
                continue
            if (abs(float(q.scale[0]) - before["scale"]) > 1e-12 * max(1.0, before["scale"])
                    or int(q.zeroPoint[0]) != before["zero_point"]):
                continue
            q.scale, q.zeroPoint = [PIXEL_SCALE], [INT8_ZERO_POINT]
            done.append(name)
            frontier.append(op.outputs[0])
    return done


def read_metadata(model_bytes: bytes) -> dict[str, Any]:
    """Name, version, description, normalisation and associated files of a ``.tflite`` ({} without metadata)."""
    import io
    import zipfile

    from ai_edge_litert import schema_py_generated as schema

    mfb = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    entry = next((m for m in (model.metadata or []) if m.name in (METADATA_NAME, METADATA_NAME.encode())), None)
    if entry is None:
        return {}
    md = mfb.ModelMetadataT.InitFromObj(mfb.ModelMetadata.GetRootAs(bytes(model.buffers[entry.buffer].data), 0))
    image = md.subgraphMetadata[0].inputTensorMetadata[0]
    norm = image.processUnits[0].options if image.processUnits else None
    props = image.content.contentProperties if image.content is not None else None
    size = getattr(props, "defaultSize", None)
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            files = {n: zf.read(n).decode() for n in zf.namelist()}
    except zipfile.BadZipFile:
        files = {}
    dec = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    return {"name": dec(md.name), "version": dec(md.version), "description": dec(md.description),
            "min_parser_version": dec(md.minParserVersion),
            "normalization": None if norm is None else {"mean": list(norm.mean), "std": list(norm.std)},
            "input_description": dec(image.description),
            "image_size": None if size is None else [int(size.width), int(size.height)],
            "associated_files": files}
