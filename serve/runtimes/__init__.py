"""Runtime registry: manifest ``kind`` → runtime class (one module each).

Adding a runtime touches one file: ``serve/runtimes/<name>.py`` with a :class:`~serve.runtimes.base.Runtime`
subclass that sets ``kind`` and is decorated ``@register_runtime`` (:class:`lesionlite.registry.Registry`
finds it). Runtime modules import their inference library inside ``__init__``, so listing the servable
kinds needs neither onnxruntime nor LiteRT installed.
"""
from __future__ import annotations

from pathlib import Path

from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest
from lesionlite.registry import Registry
from serve.runtimes.base import Runtime

RUNTIMES: Registry[type[Runtime]] = Registry("runtime", __name__)


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: serve artifacts of manifest kind ``cls.kind`` with ``cls``."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} must set the manifest kind it serves")
    return RUNTIMES.add(cls.kind, cls)


def servable_kinds() -> tuple[str, ...]:
    return tuple(RUNTIMES.names())


def load_runtime(model_path: Path, manifest: Manifest, threads: int = 0, spin_wait: bool = False) -> Runtime:
    if manifest.kind not in RUNTIMES:
        raise LesionliteError(f"artifact kind {manifest.kind!r} cannot be served; servable kinds: "
                              f"{', '.join(servable_kinds())}")
    return RUNTIMES.get(manifest.kind)(model_path, manifest, threads, spin_wait=spin_wait)


__all__ = ["Runtime", "RUNTIMES", "load_runtime", "register_runtime", "servable_kinds"]
