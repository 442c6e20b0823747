"""Find and load the models under MODEL_DIR.

MODEL_DIR is either one artifact directory (``manifest.json`` + the model file it names) or a parent
directory holding several, at any depth up to :data:`MAX_DEPTH`. Each servable artifact (kind
``onnx`` or ``tflite``) becomes a :class:`LoadedModel` named after its directory path relative to
MODEL_DIR (``/`` → ``-``; the directory's own name for a single artifact). Artifacts of other kinds
(checkpoints, CoreML) are skipped with a log line.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionlite.errors import LesionliteError
from lesionlite.manifest import MANIFEST_NAME, Manifest, read_manifest
from serve.runtimes import Runtime, load_runtime, servable_kinds

log = logging.getLogger("serve")
MAX_DEPTH = 4
#: Open Inference Protocol names of the extra tensors serve offers beside the model's own:
#: encoded images in (decoded and preprocessed like ``/predict``) and calibrated probabilities out.
IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class LoadedModel:
    name: str
    version: str
    directory: Path
    manifest: Manifest
    runtime: Runtime

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @property
    def temperature(self) -> float:
        """Calibration temperature to divide the model's outputs by (1 if the graph already did)."""
        out = self.manifest.extra.get("output") or {}
        return 1.0 if out.get("temperature_applied") else self.manifest.temperature

    # ------------------------------------------------------------------ Open Inference Protocol tensors
    # ``/v2/models/{name}/infer`` takes ONE of two inputs — the preprocessed float32 batch under the
    # model's own input name, or encoded images — and always takes float32 (serve quantizes for int8
    # models) with any batch size (fixed-batch models are run item by item), so the metadata describes
    # that contract; ``runtime_tensors`` keeps what the model file itself declares.

    @property
    def tensor_input(self) -> str:
        return self.runtime.input_name

    @property
    def image_input(self) -> str:
        return IMAGE_INPUT if self.runtime.input_name != IMAGE_INPUT else IMAGE_INPUT + "_bytes"

    @property
    def logits_output(self) -> str:
        return self.runtime.output_name

    @property
    def probabilities_output(self) -> str:
        out = PROBABILITIES_OUTPUT
        return out if self.runtime.output_name != out else "calibrated_" + out

    @property
    def image_shape(self) -> list[int]:
        return list(self.runtime.image_shape)

    def oip_inputs(self) -> list[dict[str, Any]]:
        return [{"name": self.tensor_input, "datatype": "FP32", "shape": [-1, *self.image_shape]},
                {"name": self.image_input, "datatype": "BYTES", "shape": [-1]}]

    def oip_outputs(self) -> list[dict[str, Any]]:
        c = self.manifest.num_classes
        return [{"name": self.logits_output, "datatype": "FP32", "shape": [-1, c]},
                {"name": self.probabilities_output, "datatype": "FP32", "shape": [-1, c]}]

    def metadata(self) -> dict[str, Any]:
        """Open Inference Protocol model metadata, plus what a client needs to read the outputs."""
        rt = self.runtime
        m = self.manifest
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": rt.platform,
            "inputs": self.oip_inputs(),
            "outputs": self.oip_outputs(),
            "runtime_tensors": {
                "input": {"name": rt.input_name, "datatype": rt.input_datatype, "shape": rt.input_shape},
                "output": {"name": rt.output_name, "datatype": rt.output_datatype, "shape": rt.output_shape},
            },
            "class_names": list(m.class_names),
            "architecture": m.architecture,
            "kind": m.kind,
            "layout": rt.layout,
            "max_batch": rt.max_batch,
            "preprocessing": m.preprocessing.to_dict(),
            "calibration": {"temperature": m.temperature, "applied_by": "model" if self.temperature == 1.0
                            and m.temperature != 1.0 else "server"},
            "precision": m.extra.get("precision"),
            "metrics": m.metrics,
        }


def _file_version(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _model_name(root: Path, directory: Path) -> str:
    rel = directory.relative_to(root)
    raw = directory.name if rel == Path(".") else "-".join(rel.parts)
    return _NAME_OK.sub("_", raw) or "model"


def find_artifacts(model_dir: str | Path) -> list[Path]:
    """Directories under ``model_dir`` (itself included) that hold a manifest, sorted."""
    root = Path(model_dir)
    if not root.is_dir():
        raise LesionliteError(f"model directory {root} does not exist or is not a directory")
    if (root / MANIFEST_NAME).is_file():
        return [root]
    found = []
    for depth in range(1, MAX_DEPTH + 1):
        found += [p.parent for p in root.glob("/".join(["*"] * depth) + "/" + MANIFEST_NAME) if p.is_file()]
    return sorted(set(found))


def load_models(model_dir: str | Path, threads: int = 0, spin_wait: bool = False) -> dict[str, LoadedModel]:
    """Load every servable artifact under ``model_dir``; raise if there is none."""
    root = Path(model_dir)
    dirs = find_artifacts(root)
    if not dirs:
        raise LesionliteError(f"no {MANIFEST_NAME} found in {root} (or its subdirectories up to depth "
                              f"{MAX_DEPTH}); point serve at an exported model directory")
    models: dict[str, LoadedModel] = {}
    skipped = []
    for d in dirs:
        manifest = read_manifest(d)
        if manifest.kind not in servable_kinds():
            skipped.append(f"{d} ({manifest.kind})")
            continue
        fname = manifest.files.get("model")
        if not fname:
            raise LesionliteError(f"{d / MANIFEST_NAME}: files.model is missing (the model file name)")
        path = d / fname
        if not path.is_file():
            raise LesionliteError(f"{d / MANIFEST_NAME}: model file {fname!r} not found beside it")
        name = _model_name(root, d)
        if name in models:
            raise LesionliteError(f"two artifacts map to the model name {name!r}: {models[name].directory} and {d}")
        runtime = load_runtime(path, manifest, threads, spin_wait=spin_wait)
        version = str(manifest.extra.get("version") or _file_version(path))
        models[name] = LoadedModel(name, version, d, manifest, runtime)
        log.info("loaded model %s (%s, %s, version %s) from %s", name, manifest.kind,
                 manifest.architecture, version, d)
    for s in skipped:
        log.info("skipping artifact that serve cannot run: %s", s)
    if not models:
        raise LesionliteError(f"no servable model in {root}: found only {', '.join(skipped)}; "
                              f"serve runs kinds {', '.join(servable_kinds())}")
    return models
