"""Shared test settings.

Real data is found through ONE setting, the ``LESIONLITE_DATA`` environment variable (CI sets it to
``../shared/data``); when it is unset the tests use ``../shared/data`` beside the checkout if present.
Tests that need real data fall back to small generated data, so the suite passes anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    env = os.environ.get("LESIONLITE_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path | None:
    """The real-data root, or None (tests then use generated data)."""
    return real_data_root()


@pytest.fixture(autouse=True, scope="session")
def _limit_threads() -> None:
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
