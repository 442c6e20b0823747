"""A Triton Inference Server model repository from exported ONNX artifacts.

``python -m export.triton ARTIFACTS… --out DIR`` (or ``lesionlite export … --triton-repo DIR``) writes,
for every ONNX artifact (fp32, fp16, int8 — each its own Triton model, all run by Triton's
``onnxruntime`` backend)::

    DIR/<model>/config.pbtxt                 backend, batching, tensor names/datatypes/dims from the graph
    DIR/<model>/1/model.onnx                 the artifact's graph (+ a ``probabilities`` output, see below)
    DIR/<model>/labels.txt                   class names in logit order (Triton's classification extension)
    DIR/<model>/lesionlite_manifest.json     the artifact's manifest: preprocessing for clients

It is a packaging step over artifacts on disk rather than an export format: it converts nothing, so it
reads only the manifest and the ONNX graph (``onnx``, no torch) and can be run on any export directory.
TFLite and CoreML artifacts are skipped with the reason (Triton ships no backend for either).

Why ``probabilities`` is added to the graph: ``serve``'s ``/v2/models/{name}/infer`` answers with the
logits and ``probabilities = softmax(logits / T)`` (T, the manifest's calibration temperature), and a
client should get the same outputs from Triton without re-implementing calibration; the added nodes
are ``Div`` by the constant T and ``Softmax`` (``--no-probabilities`` copies the file unchanged).

Preprocessing stays on the client: Triton's onnxruntime backend takes the float tensor, so decode and
preprocess with :mod:`lesionlite.preprocessing` (numpy + Pillow, no torch) using the manifest's
``preprocessing`` block — exactly what ``serve`` does for ``/predict`` — and send FP32 ``[N, 3, H, W]``
(``input.layout`` of the manifest). ``config.pbtxt`` repeats the preprocessing settings in its
``parameters`` so that the repository alone is enough.

Dynamic batching: when the graph's batch axis is dynamic, ``max_batch_size`` (default 8, like
``serve --max-batch``) and ``dynamic_batching { max_queue_delay_microseconds }`` (default 5000, like
``serve --max-wait-ms 5``) are set and ``dims`` leave the batch out; a fixed-batch graph gets
``max_batch_size: 0`` and its full shape. The int8 artifact's ``onnxruntime_session_config`` (precise
int8 kernels on x86 CPUs without VNNI) cannot be expressed for Triton's backend and is recorded in a
``parameters`` entry and a comment only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.atomic import remove_stale_leftovers, replace_dir
from lesionlite.discovery import artifact_dirs
from lesionlite.errors import LesionliteError, require
from lesionlite.manifest import MANIFEST_NAME, Manifest, read_manifest

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MANIFEST_COPY = "lesionlite_manifest.json"
PROBABILITIES = "probabilities"
MAX_DEPTH = 4
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")
#: ONNX TensorProto element type → Triton model-config data type
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                 6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
_SKIP_REASONS = {
    "tflite": "Triton ships no TFLite backend; serve it with `lesionlite serve` (LiteRT)",
    "coreml": "CoreML runs on Apple devices only; Triton has no CoreML backend",
    "checkpoint": "a PyTorch checkpoint, not an exported model; export it to ONNX first",
}


@dataclass
class RepoOptions:
    max_batch_size: int = 8
    max_queue_delay_us: int = 5000
    instances: int = 1
    instance_kind: str = "cpu"
    add_probabilities: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise LesionliteError("--max-batch-size must be at least 1")
        if self.max_queue_delay_us < 0:
            raise LesionliteError("--max-queue-delay-us must be >= 0")
        if self.instances < 1:
            raise LesionliteError("--instances must be at least 1")
        if self.instance_kind not in INSTANCE_KINDS:
            raise LesionliteError(f"--instance-kind must be one of {', '.join(INSTANCE_KINDS)}")


@dataclass
class TensorSpec:
    name: str
    data_type: str  # Triton TYPE_*
    shape: list[int]  # full shape, -1 for dynamic dims


@dataclass
class RepoModel:
    name: str
    source: Path
    directory: Path
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass
class RepoReport:
    out_dir: Path
    models: list[RepoModel] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- discovery


def find_artifacts(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Artifact directories (holding a manifest) among ``sources`` and below them, sorted, no repeats
    (hidden staging folders of an interrupted export are not artifacts: :mod:`lesionlite.discovery`)."""
    found: set[Path] = set()
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise LesionliteError(f"{root} is not a directory (expected an exported artifact or a parent of several)")
        found.update(artifact_dirs(root, MAX_DEPTH))
    return sorted(found)


def model_name(directory: Path) -> str:
    """Triton model name: the artifact directory's name, limited to characters safe in a URL path."""
    return _NAME_OK.sub("_", directory.name).strip("._") or "model"


# ---------------------------------------------------------------------------------- graph


def _shape(value_info: Any) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]


def _spec(value_info: Any) -> TensorSpec:
    elem = value_info.type.tensor_type.elem_type
    if elem not in _TRITON_TYPES:
        raise LesionliteError(f"tensor {value_info.name!r} has an ONNX element type ({elem}) Triton cannot serve")
    return TensorSpec(value_info.name, _TRITON_TYPES[elem], _shape(value_info))


def graph_temperature(manifest: Manifest) -> float:
    """The temperature to divide logits by: 1 when the graph already applies the calibration."""
    return 1.0 if manifest.output.get("temperature_applied") else manifest.temperature


def add_probabilities(model: Any, temperature: float, name: str = PROBABILITIES) -> Any:
    """Append ``name = Softmax(float(logits) / temperature)`` over the class axis as a second output."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    if len(g.output) != 1:
        raise LesionliteError(f"expected one graph output (the logits), found {len(g.output)}")
    logits = g.output[0]
    taken = {o for n in g.node for o in n.output} | {i.name for i in g.initializer} | {i.name for i in g.input}
    if name in taken or name == logits.name:
        raise LesionliteError(f"the graph already has a tensor named {name!r}; use --no-probabilities")
    rank = len(logits.type.tensor_type.shape.dim) or 2
    x = logits.name
    if logits.type.tensor_type.elem_type != TensorProto.FLOAT:
        g.node.append(helper.make_node("Cast", [x], ["lesionlite_logits_fp32"], to=TensorProto.FLOAT,
                                       name="lesionlite_cast_logits"))
        x = "lesionlite_logits_fp32"
    g.initializer.append(numpy_helper.from_array(np.array(temperature, dtype=np.float32), "lesionlite_temperature"))
    g.node.append(helper.make_node("Div", [x, "lesionlite_temperature"], ["lesionlite_scaled_logits"],
                                   name="lesionlite_divide_by_temperature"))
    g.node.append(helper.make_node("Softmax", ["lesionlite_scaled_logits"], [name], axis=rank - 1,
                                   name="lesionlite_softmax"))
    dims = [d.dim_param if not d.HasField("dim_value") else d.dim_value for d in logits.type.tensor_type.shape.dim]
    g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims or None))
    return model


# ---------------------------------------------------------------------------------- config.pbtxt


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _dims(shape: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor_block(t: TensorSpec, batched: bool, extra: list[str], image_format: str | None = None) -> str:
    dims = t.shape[1:] if batched else t.shape
    if image_format and len(dims) == 3:  # Triton accepts FORMAT_NCHW/NHWC only on 3-dim (per-image) inputs
        extra = [f"    format: {image_format}", *extra]
    lines = [f"    name: {_q(t.name)}", f"    data_type: {t.data_type}", *extra, f"    dims: {_dims(dims)}"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def render_config(name: str, manifest: Manifest, inputs: list[TensorSpec], outputs: list[TensorSpec],
                  batched: bool, options: RepoOptions, source: Path) -> str:
    """The model's ``config.pbtxt`` (Triton's ModelConfig in protobuf text format)."""
    layout = manifest.input.get("layout") or "NCHW"
    fmt = {"NCHW": "FORMAT_NCHW", "NHWC": "FORMAT_NHWC"}.get(layout)
    in_blocks = [_tensor_block(t, batched, [], fmt) for t in inputs]
    out_blocks = [_tensor_block(t, batched, [f"    label_filename: {_q(LABELS_FILE)}"]) for t in outputs]
    params = {
        "lesionlite.architecture": manifest.architecture,
        "lesionlite.precision": manifest.precision,
        "lesionlite.layout": layout,
        "lesionlite.preprocessing": json.dumps(manifest.preprocessing.to_dict(), sort_keys=True),
        "lesionlite.temperature": repr(manifest.temperature),
        "lesionlite.logits_include_temperature": str(graph_temperature(manifest) == 1.0
                                                     and manifest.temperature != 1.0).lower(),
        "lesionlite.class_names": json.dumps(manifest.class_names),
    }
    if any(o.name == PROBABILITIES for o in outputs):
        params["lesionlite.probabilities"] = f"softmax(logits / {graph_temperature(manifest)!r})"
    session = manifest.session_config
    if session:
        params["lesionlite.onnxruntime_session_config"] = json.dumps(session, sort_keys=True)
    lines = [
        f"# Written by export.triton from {source.name}/{MANIFEST_NAME} ({manifest.architecture}, "
        f"{manifest.precision}).",
        "# Clients preprocess images themselves with lesionlite.preprocessing (see lesionlite_manifest.json).",
        f"name: {_q(name)}",
        'backend: "onnxruntime"',
        f"max_batch_size: {options.max_batch_size if batched else 0}",
        "input [\n" + ",\n".join(in_blocks) + "\n]",
        "output [\n" + ",\n".join(out_blocks) + "\n]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {options.instances}\n"
                 f"    kind: {INSTANCE_KINDS[options.instance_kind]}\n  }}\n]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    if session:
        lines.append("# Triton's onnxruntime backend applies only its own parameters, not arbitrary session config\n"
                     "# entries: the lesionlite.onnxruntime_session_config entry below is a record, not a setting.")
    for key, value in params.items():
        lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- repository


def _write_model(artifact: Path, manifest: Manifest, out_dir: Path, options: RepoOptions) -> RepoModel:
    onnx = require("onnx", "export", "writing a Triton model repository")
    fname = manifest.files.get("model")
    if not fname or not (artifact / fname).is_file():
        raise LesionliteError(f"{artifact / MANIFEST_NAME}: its model file {fname!r} is missing")
    model = onnx.load(str(artifact / fname))
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1 or len(model.graph.output) != 1:
        raise LesionliteError(f"{artifact / fname}: expected one input and one output, found "
                              f"{len(graph_inputs)} and {len(model.graph.output)}")
    if options.add_probabilities:
        model = add_probabilities(model, graph_temperature(manifest))
        onnx.checker.check_model(model)
    inputs = [_spec(graph_inputs[0])]
    outputs = [_spec(o) for o in model.graph.output]
    batched = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    name = model_name(artifact)

    staging = out_dir / f".{name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)
    try:
        if options.add_probabilities:
            onnx.save(model, str(staging / "1" / MODEL_FILE))
        else:
            shutil.copyfile(artifact / fname, staging / "1" / MODEL_FILE)
        (staging / CONFIG_FILE).write_text(render_config(name, manifest, inputs, outputs, batched, options, artifact),
                                           encoding="utf-8")
        (staging / LABELS_FILE).write_text("\n".join(manifest.class_names) + "\n", encoding="utf-8")
        shutil.copyfile(artifact / MANIFEST_NAME, staging / MANIFEST_COPY)
        replace_dir(staging, out_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RepoModel(name, artifact, out_dir / name, options.max_batch_size if batched else 0, inputs, outputs)



def build_triton_repository(sources: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                            options: RepoOptions | None = None) -> RepoReport:
    """Write a Triton model repository for every ONNX artifact in ``sources`` (see the module docstring)."""
    options = options or RepoOptions()
    out = Path(out_dir)
    artifacts = find_artifacts(sources)
    if not artifacts:
        raise LesionliteError(f"no {MANIFEST_NAME} found in {', '.join(map(str, sources))}")
    manifests = [(a, read_manifest(a)) for a in artifacts]
    names: dict[str, Path] = {}
    for a, m in manifests:
        if m.kind == "onnx":
            n = model_name(a)
            if n in names:
                raise LesionliteError(f"two ONNX artifacts would both be Triton model {n!r}: {names[n]} and {a}")
            names[n] = a
    report = RepoReport(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(out)  # staging folders of an interrupted run: Triton would try to load them
    for artifact, manifest in manifests:
        if manifest.kind != "onnx":
            report.skipped.append((artifact, _SKIP_REASONS.get(manifest.kind, f"kind {manifest.kind!r}")))
            continue
        report.models.append(_write_model(artifact, manifest, out, options))
    if not report.models:
        raise LesionliteError("no ONNX artifact among " + ", ".join(f"{a} ({m.kind})" for a, m in manifests)
                              + "; Triton's repository is built from ONNX exports (--format onnx)")
    return report


def describe(report: RepoReport) -> list[str]:
    """One line per model written or artifact skipped (what the CLIs print)."""
    lines = []
    for m in report.models:
        batching = f"dynamic batching up to {m.max_batch_size}" if m.max_batch_size else "fixed batch"
        lines.append(f"triton   {m.directory}  ({', '.join(t.name for t in m.outputs)}; {batching})")
    lines += [f"skipped  {a}  ({why})" for a, why in report.skipped]
    return lines


# ---------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = RepoOptions()
    p = argparse.ArgumentParser(prog="python -m export.triton",
                                description="Write a Triton model repository from exported ONNX artifacts.")
    p.add_argument("sources", nargs="+", metavar="ARTIFACT_DIR", help="exported artifact(s) or a parent of several")
    p.add_argument("--out", required=True, metavar="DIR", help="the model repository to write (created if missing)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="Triton max_batch_size")
    p.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us,
                   help="dynamic batching: how long a request may wait for others (microseconds)")
    p.add_argument("--instances", type=int, default=d.instances, help="model instances (instance_group count)")
    p.add_argument("--instance-kind", choices=tuple(INSTANCE_KINDS), default=d.instance_kind,
                   help="where the instances run (Triton KIND_CPU, KIND_GPU or KIND_AUTO)")
    p.add_argument("--no-probabilities", dest="add_probabilities", action="store_false",
                   help="copy the ONNX graph unchanged (logits only) instead of adding the calibrated probabilities")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = RepoOptions(max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                          instances=args.instances, instance_kind=args.instance_kind,
                          add_probabilities=args.add_probabilities)
    for line in describe(build_triton_repository(args.sources, args.out, options)):
        print(line)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from lesionlite.cli import run_stage

    sys.exit(run_stage(main, sys.argv[1:], prog="python -m export.triton"))
