"""Shared test settings.

Real data is found through ONE setting, the ``LESIONLITE_DATA`` environment variable (CI sets it to
``../shared/data``); when it is unset the tests use ``../shared/data`` beside the checkout if present.
Tests that need real data fall back to small generated data, so the suite passes anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from _fixtures_data import real_data_root


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
