"""What every prediction route shares: the loaded models, their batchers, admission and back-pressure.

``/predict``, ``/predict/batch`` and the Open Inference Protocol's ``/infer`` all go through
:meth:`ServerState.admitted` (a bound on requests in progress, so that a flood is refused with 503 at
once instead of piling up bodies in memory) and :meth:`ServerState.classify` (the model's micro-batcher
and its bounded queue), so the same limits hold whichever protocol a client speaks.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from serve.batching import MicroBatcher, Overloaded
from serve.errors import ApiError
from serve.metrics import Metrics
from serve.models import BrokenArtifact, LoadedModel
from serve.settings import Settings
from serve.threads import LeanPool


@dataclass
class ServerState:
    settings: Settings
    models: dict[str, LoadedModel]
    default_model: str
    metrics: Metrics
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    preprocess_pool: ThreadPoolExecutor | None = None
    #: the same number of decoding threads for /predict's per-image hand-off, without concurrent.futures' cost
    decode_pool: LeanPool | None = None
    pending: int = 0  # prediction requests admitted and not yet answered
    max_pending: int = 0
    #: artifacts found under MODEL_DIR that could not be served, with their reasons
    broken: list[BrokenArtifact] = field(default_factory=list)

    def model(self, name: str | None) -> LoadedModel:
        key = name or self.default_model
        if key not in self.models:
            raise ApiError(404, "model_not_found",
                           f"unknown model {key!r}; available: {', '.join(sorted(self.models))}")
        return self.models[key]

    def model_version(self, name: str, version: str | None) -> LoadedModel:
        """The model, checking ``version`` (None: any) against the one version it has."""
        entry = self.model(name)
        if version is not None and version != entry.version:
            raise ApiError(404, "model_not_found",
                           f"model {name!r} has no version {version!r}; its version is {entry.version!r}")
        return entry

    @property
    def ready(self) -> bool:
        return bool(self.batchers) and all(b.running for b in self.batchers.values())

    @property
    def max_files(self) -> int:
        """Most images one request may carry (a batch never needs more queue slots than exist)."""
        return min(self.settings.max_batch_files, self.settings.queue_size)

    def _overloaded(self, entry: LoadedModel, detail: str) -> ApiError:
        self.metrics.rejected.labels(entry.name).inc()
        return ApiError(503, "overloaded", detail, headers={"Retry-After": str(self.settings.retry_after_s)})

    @contextmanager
    def admitted(self, entry: LoadedModel) -> Iterator[None]:
        """Count the request as in progress, or refuse it with 503 when too many already are."""
        if self.pending >= self.max_pending:
            raise self._overloaded(entry, f"server busy ({self.pending} requests in progress); retry later")
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def classify(self, entry: LoadedModel, images: list[np.ndarray]) -> list[np.ndarray]:
        """Logits for preprocessed images through the model's micro-batcher (503 when its queue is full)."""
        try:
            return await self.batchers[entry.name].submit_many(images)
        except Overloaded as exc:
            raise self._overloaded(entry, f"{exc}; retry later") from None
