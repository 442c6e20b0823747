"""Registry of distillation methods: one file per method registers itself here."""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from lesionlite.errors import LesionliteError

_METHODS: dict[str, type] = {}
# Modules imported on first lookup so that each method file registers itself.
_BUILTIN_MODULES = ("scratch", "kd", "ssdkd", "udcd", "qat")

T = TypeVar("T", bound=type)


def register_method(name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"distill.methods.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"distill.methods.{mod}":
                raise


def get_method(name: str) -> type:
    _load_builtins()
    if name not in _METHODS:
        raise LesionliteError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)
