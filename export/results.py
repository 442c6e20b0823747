"""What an export produced: one :class:`ArtifactResult` per format × precision, gathered in an :class:`ExportReport`.

Read by the orchestrator (:mod:`export.api`), the report writers (:mod:`export.report`,
:mod:`export.model_card`) and the CLI, none of which has to import another to know the shape.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lesionlite.errors import LesionliteError

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


class ParityError(LesionliteError):
    """Some artifact's top-1 agreement with PyTorch is below the threshold; nothing was written."""

    def __init__(self, message: str, report: ExportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ArtifactResult:
    name: str
    format: str
    precision: str
    status: str  # "written" | "forced" | "refused"
    path: str | None
    size_bytes: int
    convert_seconds: float
    parity: dict[str, Any] | None
    metrics: dict[str, Any]
    validation: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: median batch-1 latency on the exporting host (ms, runtime defaults), for the model card
    latency_ms_p50: float | None = None
    #: internal and external clinical figures with 95 % CIs and paired changes against PyTorch (export.evidence)
    clinical: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportReport:
    out_dir: str
    source: dict[str, Any]
    data: dict[str, Any]
    parity_threshold: dict[str, float]  # per precision
    artifacts: list[ArtifactResult]
    #: leftovers of an interrupted export in OUT that this export removed before writing (names)
    removed_leftovers: list[str] = field(default_factory=list)

    @property
    def written(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status in ("written", "forced")]

    @property
    def refused(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status == "refused"]

    def artifact(self, fmt: str, precision: str) -> ArtifactResult:
        for a in self.artifacts:
            if a.format == fmt and a.precision == precision:
                return a
        raise KeyError((fmt, precision))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
