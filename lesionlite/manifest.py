"""The JSON manifest that travels beside every artifact (checkpoint, ONNX, TFLite, CoreML).

Stages talk through artifacts on disk, not imports: ``serve`` and ``mobile_benchmarks`` learn class
names, input and output tensors, precision, quantization, runtime settings and the parity verdict from
this file alone, each by a declared field (schema 2). It is plain JSON so tools outside Python read it too.

Fields (schema 2; every stage reads them by name):
    schema_version   int, bumped on incompatible change (v1 files are migrated on read: :func:`migrate_v1`)
    kind             "checkpoint" | "onnx" | "tflite" | "coreml" | "executorch"
    architecture     model registry name, e.g. "mobilenet_v2"
    class_names      list[str], index order of the outputs
    preprocessing    PreprocessConfig.to_dict()
    precision        "fp32" | "fp16" | "int8"
    input / output   :class:`TensorSpec` (layout, dtype, shape, quantization {scale, zero_point} or None;
                     the output also says ``kind`` "logits" | "probabilities")
    parameters, macs model size and multiply-accumulates per image (None where not counted)
    session_config   onnxruntime session config entries the artifact was verified with (empty otherwise)
    parity           :class:`Parity` verdict against the PyTorch source (None for a checkpoint)
    source_sha256    SHA-256 of the checkpoint an exported artifact came from
    evaluation       the images export calibrated and evaluated on (split names and counts)
    weights          :class:`WeightsSpec` of the initial weights: file *name* and SHA-256, never a path
    data             :class:`DataSpec`: dataset name, loader spec, fingerprint, split seed (no folder path)
    calibration      {"temperature": float, optional "ood": {...}}
    metrics          dict of floats (test/val metrics of this artifact or its source)
    files            {"model": "<file name beside the manifest>"}
    version          optional version label a server publishes (default: the model file's SHA-256 prefix)
    extra            what no other stage reads (tool versions, training details, converter notes)

Shipped manifests carry no absolute path of the machine that wrote them (:func:`portable_text`).
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from lesionlite.atomic import write_json_atomic
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import PreprocessConfig

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
KINDS = ("checkpoint", "onnx", "tflite", "coreml", "executorch")
PRECISIONS = ("fp32", "fp16", "int8")


class Quantization(TypedDict):
    """Affine quantization of an integer tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


class TensorSpec(TypedDict, total=False):
    """One model input or output as the artifact defines it."""

    name: str
    layout: str  # "NCHW" | "NHWC" (inputs)
    dtype: str  # "float32" | "float16" | "int8" | "uint8"
    shape: list[int]
    quantization: Quantization | None
    kind: str  # outputs: "logits" | "probabilities"
    temperature_applied: bool


class Parity(TypedDict, total=False):
    """The artifact against its PyTorch source on the evaluation images."""

    verified: bool  # it ran on this host and was compared
    accepted: bool  # top-1 agreement met the threshold (or --force wrote it anyway: False)
    reason: str  # why it was not verified
    top1_agreement: float
    threshold: float
    max_abs_logits: float
    n: int


class DataSpec(TypedDict, total=False):
    """The data a model was trained on, portable: ``load_dataset(spec, seed=split_seed, **options)`` rebuilds it."""

    name: str
    spec: str
    fingerprint: str
    synthetic: bool
    split_seed: int
    options: dict[str, Any]
    description: str
    class_counts: dict[str, list[int]]


class WeightsSpec(TypedDict, total=False):
    """Initial weights, by file name and content hash (the path is the training machine's business)."""

    file: str
    sha256: str
    source: str
    bn_folded: bool


@dataclass
class Manifest:
    kind: str
    architecture: str
    class_names: list[str]
    preprocessing: PreprocessConfig
    input: TensorSpec = field(default_factory=lambda: TensorSpec())
    output: TensorSpec = field(default_factory=lambda: TensorSpec())
    precision: str = "fp32"
    parameters: int | None = None
    macs: int | None = None
    session_config: dict[str, str] = field(default_factory=dict)
    parity: Parity | None = None
    source_sha256: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    weights: WeightsSpec | None = None
    data: DataSpec = field(default_factory=lambda: DataSpec())
    calibration: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0})
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    @property
    def output_quantization(self) -> Quantization | None:
        """The output's quantization when the artifact returns integers (None for float outputs)."""
        return (self.output or {}).get("quantization") or None

    @property
    def parity_verified(self) -> bool:
        """Export ran this artifact and it agreed with PyTorch (a forced or unverified one is not)."""
        p = self.parity or {}
        return bool(p.get("verified")) and p.get("accepted") is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        missing = [k for k in ("kind", "architecture", "class_names", "preprocessing") if k not in d]
        if missing:
            raise LesionliteError(f"{source}: not a lesionlite manifest (missing {', '.join(missing)})")
        version = _int(d.get("schema_version", 1), source, "schema_version")
        if version > SCHEMA_VERSION:
            raise LesionliteError(
                f"{source}: manifest schema {version} is newer than this lesionlite "
                f"understands ({SCHEMA_VERSION}); upgrade lesionlite"
            )
        if version < 2:
            d = migrate_v1(d)
        if d["kind"] not in KINDS:
            raise LesionliteError(f"{source}: unknown artifact kind {d['kind']!r}; expected one of {KINDS}")
        if not isinstance(d["class_names"], list) or not d["class_names"]:
            raise LesionliteError(f"{source}: class_names must be a non-empty list")
        if d.get("precision", "fp32") not in PRECISIONS:
            raise LesionliteError(f"{source}: unknown precision {d['precision']!r}; expected one of {PRECISIONS}")
        return cls(
            kind=d["kind"], architecture=str(d["architecture"]), class_names=[str(c) for c in d["class_names"]],
            preprocessing=PreprocessConfig.from_dict(d["preprocessing"]),
            input=TensorSpec(**_mapping(d, "input", source)), output=TensorSpec(**_mapping(d, "output", source)),
            precision=str(d.get("precision", "fp32")),
            parameters=_optional_int(d.get("parameters"), source, "parameters"),
            macs=_optional_int(d.get("macs"), source, "macs"),
            session_config={str(k): str(v) for k, v in _mapping(d, "session_config", source).items()},
            parity=Parity(**d["parity"]) if isinstance(d.get("parity"), dict) else None,
            source_sha256=d.get("source_sha256"), evaluation=_mapping(d, "evaluation", source),
            weights=WeightsSpec(**d["weights"]) if isinstance(d.get("weights"), dict) else None,
            data=DataSpec(**_mapping(d, "data", source)),
            calibration=dict(d.get("calibration") or {"temperature": 1.0}),
            metrics=_mapping(d, "metrics", source), files=_mapping(d, "files", source),
            version=None if d.get("version") is None else str(d["version"]),
            extra=_mapping(d, "extra", source), git_commit=d.get("git_commit"),
        )

    def write(self, directory: str | Path, name: str = MANIFEST_NAME) -> Path:
        """Write atomically to ``directory/name`` and return the path."""
        return write_json_atomic(Path(directory) / name, self.to_dict())


def _mapping(d: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LesionliteError(f"{source}: {key} must be a JSON object, got {type(value).__name__}")
    return dict(value)


def _int(value: Any, source: str, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LesionliteError(f"{source}: {key} must be an integer, got {value!r}") from None


def _optional_int(value: Any, source: str, key: str) -> int | None:
    return None if value is None else _int(value, source, key)


#: v1 kept these in the free-form ``extra``; v2 declares them (v1 key -> v2 field)
_V1_PROMOTED = {"precision": "precision", "output": "output", "params": "parameters", "macs": "macs",
                "onnxruntime_session_config": "session_config", "parity": "parity",
                "source_checkpoint_sha256": "source_sha256", "export_data": "evaluation", "version": "version"}


def migrate_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 manifest as schema 2: the fields v1 kept in ``extra`` promoted to declared fields.

    v1 wrote precision, output tensor, parameter and MAC counts, onnxruntime settings, the parity verdict
    (``parity`` + ``parity_accepted``), the source checkpoint's hash, the export's data and the initial
    weights (``weights_info`` with a full path) into ``extra``; a checkpoint manifest had no precision
    (it is float32). The data description and weights lose their absolute paths on the way.
    """
    out = {k: v for k, v in d.items() if k != "extra"}
    extra = dict(d.get("extra") or {})
    for old, new in _V1_PROMOTED.items():
        if old in extra:
            out[new] = extra.pop(old)
    if isinstance(out.get("parity"), dict) and "parity_accepted" in extra:
        out["parity"] = {**out["parity"], "accepted": extra.pop("parity_accepted")}
    info = extra.pop("weights_info", None)
    if isinstance(info, dict):
        out["weights"] = weights_spec(info)
    if isinstance(extra.get("weights"), str):
        extra["weights"] = portable_text(extra["weights"])
    data = dict(out.get("data") or {})
    if isinstance(data.get("source"), str):
        data["description"] = portable_text(data.pop("source"))
    out["data"] = data
    out["extra"] = extra
    out["schema_version"] = SCHEMA_VERSION
    return out


def weights_spec(info: dict[str, Any]) -> WeightsSpec:
    """The portable description of initial weights: file name and SHA-256 (never the path)."""
    spec = WeightsSpec(file=Path(str(info.get("path") or info.get("file") or "")).name)
    for key in ("sha256", "source", "bn_folded"):
        if info.get(key) is not None:
            spec[key] = info[key]  # type: ignore[literal-required]
    if "source" in spec:
        spec["source"] = portable_text(str(spec["source"]))
    return spec


#: an absolute POSIX path (``/a/b``, at least two components) or a Windows drive path (``C:\\a``)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[^\s/:;,'\"()]+){2,}/?|\b[A-Za-z]:\\[^\s:;,'\"()]+")


def portable_text(text: str) -> str:
    """``text`` with each absolute path replaced by its last component (``/work/data/ham`` -> ``ham``).

    Dataset descriptions name the folder they were read from; a manifest shipped to a phone or a
    server must not carry the training machine's directory layout.
    """
    def last(m: re.Match[str]) -> str:
        return re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1]

    return _ABSOLUTE_PATH.sub(last, text)


def portable(value: Any) -> Any:
    """A JSON-like value with :func:`portable_text` applied to every string in it."""
    if isinstance(value, str):
        return portable_text(value)
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return value


def absolute_paths_in(value: Any) -> list[str]:
    """Every absolute path found in the strings of a JSON-like value (for tests and ``export``'s check)."""
    if isinstance(value, str):
        return [m.group(0) for m in _ABSOLUTE_PATH.finditer(value)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in absolute_paths_in(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in absolute_paths_in(v)]
    return []


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest from a file or from a directory holding ``manifest.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.exists():
        raise LesionliteError(f"no manifest found: {p} does not exist")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LesionliteError(f"{p}: unreadable manifest ({exc})") from None
    if not isinstance(d, dict):
        raise LesionliteError(f"{p}: manifest must be a JSON object")
    return Manifest.from_dict(d, source=str(p))


def git_commit() -> str | None:
    """The current git commit of the lesionlite checkout, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
