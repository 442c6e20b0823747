"""Runtime registry: manifest ``kind`` → runtime class (one module each, imported lazily).

Adding a runtime touches one place: a module with a :class:`~serve.runtimes.base.Runtime`
subclass and a line in ``RUNTIMES``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest
from serve.runtimes.base import Runtime

RUNTIMES: dict[str, tuple[str, str]] = {
    "onnx": ("serve.runtimes.onnx", "OnnxRuntime"),
    "tflite": ("serve.runtimes.tflite", "TFLiteRuntime"),
}


def servable_kinds() -> tuple[str, ...]:
    return tuple(RUNTIMES)


def load_runtime(model_path: Path, manifest: Manifest, threads: int = 0, spin_wait: bool = False) -> Runtime:
    if manifest.kind not in RUNTIMES:
        raise LesionliteError(f"artifact kind {manifest.kind!r} cannot be served; servable kinds: "
                              f"{', '.join(RUNTIMES)}")
    module_name, cls_name = RUNTIMES[manifest.kind]
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model_path, manifest, threads, spin_wait=spin_wait)


__all__ = ["Runtime", "RUNTIMES", "load_runtime", "servable_kinds"]
