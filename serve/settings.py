"""Server settings: one frozen dataclass, filled from the CLI (or by tests) and validated once."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from lesionlite.cpus import usable_cpu_count
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import MAX_IMAGE_PIXELS

#: Environment variable that carries the settings (JSON) to uvicorn worker processes.
SETTINGS_ENV = "LESIONLITE_SERVE_SETTINGS"
MODEL_DIR_ENV = "LESIONLITE_SERVE_MODEL_DIR"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: When set, /predict* and /v2/models* need ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
    api_key: str | None = None
    #: Micro-batching: at most this many images per runtime call …
    max_batch: int = 8
    #: … and, while the model is busy with a batch, the first image of the next waits at most this long
    #: for others to join it (an idle model starts at once).
    max_wait_ms: float = 5.0
    #: Images waiting for the runtime, per model; beyond it requests get 503 + Retry-After.
    queue_size: int = 64
    #: Largest accepted image file (and /predict request body); MB = 2**20 bytes.
    max_upload_mb: float = 10.0
    #: Most images in one /predict/batch request (its body may hold this many max-size files).
    max_batch_files: int = 16
    #: Decompression-bomb guard: images with more pixels are refused (413) before decoding.
    max_pixels: int = MAX_IMAGE_PIXELS
    #: Shortest image side /predict accepts (422 below it); 0 = half the model's input size, at least 16 px.
    min_image_side: int = 0
    #: ``abstain`` is true when the top calibrated probability is below this (or the image is out of distribution).
    abstain_threshold: float = 0.6
    #: Default number of classes in ``top_k``.
    top_k: int = 3
    #: Intra-op threads per runtime (onnxruntime / LiteRT); 0 = the runtime's default.
    threads: int = 0
    #: Let the runtime's idle threads busy-wait (onnxruntime's default). Off: the server's own threads
    #: decode uploads on the same cores, and spinning runtime threads take CPU from them.
    runtime_spin: bool = False
    #: Threads decoding + preprocessing images; 0 = min(4, CPU count).
    preprocess_threads: int = 0
    #: Seconds suggested to an overloaded client in Retry-After.
    retry_after_s: int = 1
    #: Model used when a request names none; default: the first by name.
    default_model: str | None = None
    #: Refuse to start when any artifact under MODEL_DIR is broken (default: serve the healthy ones and
    #: list the broken ones with their reasons in the log, ``/v2/models`` and the page).
    strict: bool = False
    #: Serve artifacts export refused (parity check failed, written with --force); default: not served.
    allow_unverified: bool = False
    log_level: str = "info"

    def __post_init__(self) -> None:
        checks = [
            (self.max_batch >= 1, "--max-batch must be at least 1"),
            (self.max_wait_ms >= 0, "--max-wait-ms must be >= 0"),
            (self.queue_size >= 1, "--queue-size must be at least 1"),
            (self.max_upload_mb > 0, "--max-upload-mb must be > 0"),
            (self.max_batch_files >= 1, "--max-batch-files must be at least 1"),
            (self.max_pixels >= 1, "--max-pixels must be at least 1"),
            (0.0 <= self.abstain_threshold <= 1.0, "--abstain-threshold must be in [0, 1]"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.min_image_side >= 0, "--min-image-side must be >= 0"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.threads >= 0, "--threads must be >= 0"),
            (self.preprocess_threads >= 0, "--preprocess-threads must be >= 0"),
            (0 < self.port < 65536 or self.port == 0, "--port must be in 1..65535"),
            (self.retry_after_s >= 0, "retry_after_s must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise LesionliteError(msg)
        if self.api_key is not None and not self.api_key.strip():
            raise LesionliteError("--api-key must not be empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def effective_preprocess_threads(self) -> int:
        return self.preprocess_threads or min(4, usable_cpu_count())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        d: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
