"""SHA-256 of a file, read in 1 MiB chunks (weights files, checkpoints, model artifacts).

One helper for every stage (torch-free, so serve and bench use it too): a digest names a file's
content in manifests, model versions and weight provenance.
"""
from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
