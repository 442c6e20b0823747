"""The JSON manifest that travels beside every artifact (checkpoint, ONNX, TFLite, CoreML).

Stages talk through artifacts on disk, not imports: `serve` and `mobile_benchmarks` learn class
names, input size/layout, preprocessing and calibration from this file alone. It is plain JSON so
that tools outside Python can read it too.

Keys (all stages):
    schema_version   int, bumped on incompatible change
    kind             "checkpoint" | "onnx" | "tflite" | "coreml"
    architecture     model registry name, e.g. "mobilenet_v2"
    class_names      list[str], index order of the logits
    preprocessing    PreprocessConfig.to_dict()
    input            {"layout": "NCHW"|"NHWC", "dtype": "float32"|"int8"|"uint8",
                      "shape": [1, 3, H, W] or [1, H, W, 3], "quantization": {scale, zero_point}|None}
    calibration      {"temperature": float}
    metrics          dict of floats (test/val metrics of this artifact or its source)
    data             {"name": str, "fingerprint": str, "synthetic": bool}
    files            {"model": "<file name beside the manifest>"}
    extra            free-form per-stage details (precision, tool versions, source checkpoint hash, …)
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lesionlite.atomic import write_json_atomic
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import PreprocessConfig

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("checkpoint", "onnx", "tflite", "coreml")


@dataclass
class Manifest:
    kind: str
    architecture: str
    class_names: list[str]
    preprocessing: PreprocessConfig
    input: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=lambda: {"temperature": 1.0})
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "Manifest":
        missing = [k for k in ("kind", "architecture", "class_names", "preprocessing") if k not in d]
        if missing:
            raise LesionliteError(f"{source}: not a lesionlite manifest (missing {', '.join(missing)})")
        if int(d.get("schema_version", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise LesionliteError(
                f"{source}: manifest schema {d['schema_version']} is newer than this lesionlite "
                f"understands ({SCHEMA_VERSION}); upgrade lesionlite"
            )
        if d["kind"] not in KINDS:
            raise LesionliteError(f"{source}: unknown artifact kind {d['kind']!r}; expected one of {KINDS}")
        if not isinstance(d["class_names"], list) or not d["class_names"]:
            raise LesionliteError(f"{source}: class_names must be a non-empty list")
        return cls(
            kind=d["kind"],
            architecture=str(d["architecture"]),
            class_names=[str(c) for c in d["class_names"]],
            preprocessing=PreprocessConfig.from_dict(d["preprocessing"]),
            input=dict(d.get("input", {})),
            calibration=dict(d.get("calibration", {"temperature": 1.0})),
            metrics=dict(d.get("metrics", {})),
            data=dict(d.get("data", {})),
            files=dict(d.get("files", {})),
            extra=dict(d.get("extra", {})),
            git_commit=d.get("git_commit"),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
        )

    def write(self, directory: str | Path, name: str = MANIFEST_NAME) -> Path:
        """Write atomically to ``directory/name`` and return the path."""
        return write_json_atomic(Path(directory) / name, self.to_dict())


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
