"""Save and load a trained student as an on-disk artifact: ``student.pt`` + ``manifest.json``.

This is the hand-off from `distill` to `export`: a run directory holds the best student's weights
(``student.pt``: {"arch", "num_classes", "state_dict"}) and a manifest (kind "checkpoint") with class
names, preprocessing, calibration temperature and metrics. Training-only modules never get here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models import build_model
from lesionlite.atomic import atomic_path
from lesionlite.errors import LesionliteError
from lesionlite.hashing import file_sha256  # noqa: F401  (re-exported: export reads it from here)
from lesionlite.manifest import MANIFEST_NAME, Manifest, git_commit, read_manifest

STUDENT_FILE = "student.pt"


def save_student(run_dir: str | Path, model: nn.Module, manifest: Manifest) -> Path:
    """Write ``student.pt`` and ``manifest.json`` atomically into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": manifest.architecture,
        "num_classes": manifest.num_classes,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(run_dir / STUDENT_FILE) as tmp:
        torch.save(payload, tmp)
    manifest.kind = "checkpoint"
    manifest.files = {**manifest.files, "model": STUDENT_FILE}
    if manifest.git_commit is None:
        manifest.git_commit = git_commit()
    manifest.write(run_dir)
    return run_dir / STUDENT_FILE


def load_student(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Manifest]:
    """Rebuild the student from a run directory; clear errors for missing/foreign/mismatched files."""

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise LesionliteError(f"checkpoint not found: {run_dir} does not exist")
    if run_dir.is_file():
        run_dir = run_dir.parent
    if not (run_dir / MANIFEST_NAME).exists():
        raise LesionliteError(
            f"{run_dir} is not a lesionlite run directory (no {MANIFEST_NAME}); "
            "pass the directory written by 'lesionlite distill'"
        )
    manifest = read_manifest(run_dir)
    if manifest.kind != "checkpoint":
        raise LesionliteError(f"{run_dir}: manifest is for a {manifest.kind!r} artifact, not a checkpoint")
    weights = run_dir / manifest.files.get("model", STUDENT_FILE)
    if not weights.exists():
        raise LesionliteError(f"{run_dir}: student weights {weights.name} are missing")
    try:
        payload: Any = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise LesionliteError(f"{weights}: not a readable lesionlite checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise LesionliteError(f"{weights}: foreign checkpoint (no 'state_dict' entry); not written by lesionlite")
    if payload.get("num_classes", manifest.num_classes) != manifest.num_classes:
        raise LesionliteError(
            f"{weights}: checkpoint has {payload.get('num_classes')} classes but the manifest lists "
            f"{manifest.num_classes}"
        )
    model = build_model(manifest.architecture, num_classes=manifest.num_classes)
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise LesionliteError(f"{weights}: 'state_dict' entry is not a mapping of tensors")
    expected = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
           if k in expected and hasattr(v, "shape") and tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise LesionliteError(
            f"{weights}: weights do not fit architecture {manifest.architecture!r} with "
            f"{manifest.num_classes} classes ({len(bad)} shape mismatch(es), e.g. {'; '.join(bad[:2])})"
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise LesionliteError(
            f"{weights}: weights do not fit architecture {manifest.architecture!r} with "
            f"{manifest.num_classes} classes ({first[-1].strip() if first else exc})"
        ) from None
    if missing or unexpected:
        raise LesionliteError(
            f"{weights}: weights do not match architecture {manifest.architecture!r} with "
            f"{manifest.num_classes} classes (missing {len(missing)} keys e.g. {missing[:2]}, "
            f"unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )
    model.eval()
    return model, manifest
