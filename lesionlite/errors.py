"""User-facing errors: anything a user can cause is raised as :class:`LesionliteError`.

The CLI catches it and prints one line (``lesionlite: error: …``) with exit status 2, so bad input
never surfaces as a traceback. Code raises it with a message that names the problem and, where
possible, the fix.
"""
from __future__ import annotations

import importlib


class LesionliteError(Exception):
    """An error caused by the user's input or environment, printed as one line by the CLI."""


class MissingDependencyError(LesionliteError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed; "
            f"install it with: pip install 'lesionlite[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module, extra, purpose) from None
