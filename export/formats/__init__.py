"""Export-format registry: one module per format in this package, found by name.

Adding a format touches one file: create ``export/formats/<name>.py`` that defines a subclass of
:class:`ExportFormat` decorated with :func:`register_format` (:class:`lesionlite.registry.Registry` finds
it). Converters import their toolchains inside methods, so a format whose converter is not installed
costs nothing until it is asked for (and then fails with :class:`~lesionlite.errors.MissingDependencyError`).

The contract between a format and :mod:`export.api`:

* :meth:`ExportFormat.convert` writes the artifact (a file or an ``.mlpackage`` directory) to the path
  it is given and returns an :class:`ArtifactInfo` (the manifest's ``input`` block, the ``output``
  description and format-specific extras);
* :meth:`ExportFormat.load_runner` returns a callable that maps a float32 NCHW batch, preprocessed by
  :func:`lesionlite.preprocessing.preprocess`, to float outputs (quantized I/O is handled inside) — or
  ``None`` where the artifact cannot be run on this host (CoreML on Linux);
* :meth:`ExportFormat.validate` performs structural checks that do not need to run the model.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lesionlite.errors import require
from lesionlite.manifest import PRECISIONS  # the one list: what a manifest may declare
from lesionlite.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from export.context import ExportContext


#: A runner maps a float32 NCHW batch to float outputs (``ExportFormat.output_kind`` says which).
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class ArtifactInfo:
    """What a converter tells the manifest about the artifact it wrote."""

    input: dict[str, Any]
    output: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    #: onnxruntime session config entries the artifact must run with (manifest ``session_config``)
    session_config: dict[str, str] = field(default_factory=dict)
    #: the artifact's own preprocessing when it differs from the source's (TFLite: pixels in, normalised
    #: in the graph); None keeps the source's
    preprocessing: Any = None

    def calibration(self, source_calibration: dict[str, Any]) -> dict[str, Any]:
        """The artifact manifest's ``calibration``: the source's, less what its outputs cannot serve.

        An artifact whose output is probabilities cannot give the logit energy that serve's
        out-of-distribution check compares with ``ood.energy_threshold`` (log-probabilities have energy
        0), so that threshold is dropped there; the image-statistics check stays.
        """
        cal = dict(source_calibration)
        ood = cal.get("ood")
        if self.output.get("kind") == "probabilities" and isinstance(ood, dict) and ood.get("energy_threshold") is not None:
            cal["ood"] = {**ood, "energy_threshold": None,
                          "energy_note": "dropped: the model outputs probabilities, not logits"}
        return cal


class ExportFormat:
    """Base class of one export format (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # lesionlite.manifest kind
    model_file: ClassVar[str] = ""  # file (or directory) name of the artifact inside its directory
    is_dir: ClassVar[bool] = False
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    #: (import name, purpose) of every module the converter needs; checked before any work starts
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: python distributions whose versions are recorded in the manifest
    tool_packages: ClassVar[tuple[str, ...]] = ()

    def check_available(self) -> None:
        for module, purpose in self.requires:
            require(module, "export", purpose)

    def convert(self, ctx: ExportContext, precision: str, dest: Path) -> ArtifactInfo:
        raise NotImplementedError

    def load_runner(self, path: Path, info: ArtifactInfo) -> Runner | None:
        """A callable NCHW float32 batch → float outputs, or None where this host cannot run it."""
        return None

    def reference_runner(self, path: Path, info: ArtifactInfo) -> tuple[Runner, str] | None:
        """A runner computing the artifact's arithmetic exactly as defined, independent of this host's
        fast kernels, and how — or None where :meth:`load_runner` already is that (the default).

        Reported beside the host's numbers so that a kernel artifact of this CPU (e.g. onnxruntime's
        int8 saturation on x86 without VNNI) is not mistaken for a quantization loss, or hidden.
        """
        return None

    #: what the runner's outputs are: "logits" (ONNX, TFLite) or "probabilities" (CoreML classifier)
    output_kind: ClassVar[str] = "logits"

    def validate(self, path: Path, info: ArtifactInfo, ctx: ExportContext) -> dict[str, Any]:
        """Structural checks (no inference); raise LesionliteError when the artifact is malformed."""
        return {}


#: every format; a module of this package adds one with ``@register_format``
FORMATS: Registry[type[ExportFormat]] = Registry("export format", __name__, hint="or 'all'")


def register_format(cls: type[ExportFormat]) -> type[ExportFormat]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a format name")
    return FORMATS.add(cls.name, cls)


#: the order of ``--format all`` (then any other format, alphabetically)
_PREFERRED_ORDER = ("onnx", "tflite", "coreml")


def list_formats() -> list[str]:
    """Names of all formats, in ``--format all`` order (their converters are imported when used)."""
    rank = {n: i for i, n in enumerate(_PREFERRED_ORDER)}
    return sorted(FORMATS.names(), key=lambda n: (rank.get(n, len(rank)), n))


def get_format(name: str) -> ExportFormat:
    """Instantiate the format ``name``; unknown names give one clear error."""
    return FORMATS.get(name)()
