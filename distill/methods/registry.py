"""Registry of distillation methods: each module of :mod:`distill.methods` registers its own.

Adding a method touches one file: ``distill/methods/<name>.py`` with a :class:`~distill.methods.base.DistillMethod`
subclass decorated ``@register_method("<name>")``; :class:`lesionlite.registry.Registry` finds the module.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lesionlite.registry import Registry

T = TypeVar("T", bound=type)

METHODS: Registry[type] = Registry("method", "distill.methods")


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: register a method under ``name`` (the class's ``name`` attribute says the same)."""
    return METHODS.register(name)


def get_method(name: str) -> type:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()
