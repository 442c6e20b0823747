"""One registry helper for every kind of plug-in: methods, models, datasets, export formats, runtimes, targets.

A plug-in is one module in its registry's package that registers itself when imported
(``@METHODS.register("kd")`` and the like). The registry imports every module of its package the
first time it is asked for a name (:mod:`pkgutil`), so adding a plug-in touches one file: no list of
modules to extend, and the contract tests (``tests/test_registries.py``) pick the new one up because
they are parametrised over :meth:`Registry.names`.

Plug-in modules import their heavy dependencies (onnxruntime, coremltools, adb tooling) inside
functions, not at the top: discovering a registry must not need every optional package installed,
and ``serve`` / ``mobile_benchmarks`` discover theirs without torch. Torch-free itself.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lesionlite.errors import LesionliteError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → plug-in, filled by the modules of ``package`` on first use."""

    def __init__(self, kind: str, package: str, hint: str = "", ignore_case: bool = False) -> None:
        self.kind = kind  # "method", "export format", ... (used in error messages)
        self.package = package
        self.hint = hint  # appended to "unknown ..." errors (e.g. "or a path")
        self.ignore_case = ignore_case  # dataset specs are typed by hand: HAM10000 == ham10000
        self._items: dict[str, T] = {}
        self._discovered = False
        self._lock = threading.RLock()  # serve discovers runtimes from worker threads

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a second, different plug-in with the same name is a bug."""
        key = self._key(name)
        if not key:
            raise ValueError(f"a {self.kind} needs a name")
        with self._lock:
            if key in self._items and self._items[key] is not item:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._items[key] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def discover(self) -> None:
        """Import every public module of the package once (each registers its plug-ins)."""
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
            self._discovered = True

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The plug-in called ``name``, or one line naming the choices."""
        self.discover()
        key = self._key(str(name))
        if key not in self._items:
            raise LesionliteError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
                                  + (f" {self.hint}" if self.hint else ""))
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return isinstance(name, str) and self._key(name) in self._items

    def _key(self, name: str) -> str:
        return name.lower() if self.ignore_case else name

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]
