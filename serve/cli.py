"""``lesionlite serve MODEL_DIR [options]``: load the exported models and serve them with uvicorn."""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from lesionlite.errors import require
from serve.settings import MODEL_DIR_ENV, SETTINGS_ENV, Settings

#: (flag, type, help) of the numeric settings; the default is the :class:`Settings` field the flag names
NUMERIC_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("--max-batch", int, "micro-batch size (default %(default)s)"),
    ("--max-wait-ms", float, "while the model is busy, how long the next micro-batch waits to fill (at most until the "
                             "running batch ends); an idle model starts at once (default %(default)s ms)"),
    ("--queue-size", int, "images waiting per model before 503 (default %(default)s)"),
    ("--max-upload-mb", float, "largest image file / request (default %(default)s MiB)"),
    ("--max-batch-files", int, "most images per /predict/batch request (default %(default)s)"),
    ("--max-pixels", int, "decompression-bomb guard: most pixels per image (default %(default)s)"),
    ("--abstain-threshold", float, "abstain when the top calibrated probability is below this (default %(default)s)"),
    ("--min-image-side", int, "shortest image side accepted, in px (default 0: half the model's input size, at least 16)"),
    ("--top-k", int, "default top_k (default %(default)s)"),
    ("--threads", int, "runtime intra-op threads per model, 0 = runtime default (default %(default)s)"),
)


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="lesionlite serve",
        description="Serve exported lesionlite models (ONNX, TFLite) over HTTP. MODEL_DIR is one artifact "
                    "directory (manifest.json + model file) or a directory holding several. "
                    "Research prototype — not a diagnosis.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="exported artifact directory, or a parent of several")
    p.add_argument("--host", default=d.host, help="interface to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="uvicorn worker processes, each loading the models (default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("LESIONLITE_API_KEY"),
                   help="require this key (X-API-Key or Authorization: Bearer) on /predict and /v2/models; "
                        "default: $LESIONLITE_API_KEY, else no key")
    for flag, kind, text in NUMERIC_OPTIONS:  # each defaults to the Settings field of the same name
        p.add_argument(flag, type=kind, default=getattr(d, flag[2:].replace("-", "_")), help=text)
    p.add_argument("--runtime-spin", action="store_true", default=d.runtime_spin,
                   help="let onnxruntime's idle threads busy-wait (its own default); off by default because "
                        "they would take CPU from image decoding in the same process")
    p.add_argument("--preprocess-threads", type=int, default=d.preprocess_threads,
                   help="image decoding threads, 0 = min(4, CPUs) (default %(default)s)")
    p.add_argument("--default-model", default=None, help="model used when a request names none")
    p.add_argument("--allow-unverified", action="store_true", default=d.allow_unverified,
                   help="also serve artifacts export refused (parity check failed, written with --force); "
                        "default: list them as unavailable")
    p.add_argument("--strict", action="store_true", default=d.strict,
                   help="refuse to start when any artifact is broken (default: serve the healthy ones and list "
                        "each broken one with its reason in the log, /v2/models and the page)")
    p.add_argument("--log-level", default=d.log_level, choices=["critical", "error", "warning", "info", "debug"])
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host, port=args.port, workers=args.workers, api_key=args.api_key,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
        max_upload_mb=args.max_upload_mb, max_batch_files=args.max_batch_files, max_pixels=args.max_pixels,
        abstain_threshold=args.abstain_threshold, min_image_side=args.min_image_side, top_k=args.top_k,
        threads=args.threads,
        runtime_spin=args.runtime_spin,
        preprocess_threads=args.preprocess_threads, default_model=args.default_model, strict=args.strict,
        allow_unverified=args.allow_unverified, log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    uvicorn = require("uvicorn", "serve", "lesionlite serve")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serve.app import create_app

    # Load once here so that a bad MODEL_DIR fails with one line before anything binds a port.
    app = create_app(args.model_dir, settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        logging.getLogger("serve").warning("listening on %s without --api-key: anyone who can reach it can use it",
                                           settings.host)
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                  proxy_headers=False, server_header=False, timeout_graceful_shutdown=10)
    if settings.workers == 1:
        uvicorn.run(app, **common)
    else:
        del app
        os.environ[MODEL_DIR_ENV] = os.path.abspath(args.model_dir)
        os.environ[SETTINGS_ENV] = settings.to_json()
        uvicorn.run("serve.app:create_app_from_env", factory=True, workers=settings.workers, **common)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
