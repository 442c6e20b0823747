"""Target registry: where a benchmark runs. One module per target, chosen by ``--target``.

* ``local``                      — this host (ONNX Runtime + LiteRT, fresh subprocess per measurement)
* ``adb`` / ``adb:SERIAL``       — an attached Android phone, TFLite ``benchmark_model`` over adb
* ``ssh://[USER@]HOST[:PORT]``   — a Linux board: copies ``remote_runner.py`` and runs it there
* ``board``                      — the emulated aarch64 board (``bench board up``), over ssh; times labelled emulated
* ``qemu``                       — the same emulated aarch64 Python, run directly (no ssh)

Every target raises :class:`~lesionlite.errors.LesionliteError` with one line when it cannot run
(tool missing, nothing attached, host unreachable) and never fills in figures it did not measure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from lesionlite.errors import LesionliteError
from lesionlite.registry import Registry


@dataclass
class BenchOptions:
    threads: list[int] = field(default_factory=lambda: [1])
    runs: int = 100
    warmup: int = 10
    #: time each measurement at least this long and warm up at least this long (benchmark_model's
    #: --min_secs / --warmup_min_secs, same defaults): a fast model's 100 runs last milliseconds
    min_secs: float = 1.0
    warmup_min_secs: float = 0.5
    #: fresh processes per artifact × thread count; the spread between them is the reported noise
    repeats: int = 3
    delegate: str | None = None  # None (runtime default) | xnnpack | gpu | nnapi
    taskset: str | None = None
    benchmark_model: str | None = None
    remote_python: str = "python3"
    timeout_s: float = 600.0
    connect_timeout_s: int = 5
    #: board/qemu targets: the board folder (default $LESIONLITE_CACHE/board-aarch64)
    board_dir: str | None = None
    #: ARM-vs-host agreement: this many real test images per artifact (0: none; None: the target's default)
    agreement_images: int | None = None
    #: also profile each artifact per operator type (bench --op-profile; mobile_benchmarks/op_profile.py)
    op_profile: bool = False


class BenchTarget:
    """What every target declares: its name, the ``--target`` forms it accepts, and how to read them.

    Subclasses implement ``describe()`` and ``run(artifact)`` (see :mod:`mobile_benchmarks.targets.local`)
    and are registered with ``@register_target``.
    """

    name: ClassVar[str] = ""
    #: the ``--target`` forms, for help and for the "unknown target" message
    spec_forms: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse_spec(cls, spec: str) -> dict[str, Any] | None:
        """The constructor parameters ``spec`` names, or None when ``spec`` is not this target's.

        Raises :class:`LesionliteError` for a spec that is this target's but malformed (a bad port).
        """
        return {} if spec == cls.name else None


#: every target; a module of this package adds one with ``@register_target``
TARGETS: Registry[type[BenchTarget]] = Registry("target", __name__)


def register_target(cls: type[BenchTarget]) -> type[BenchTarget]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a target name")
    return TARGETS.add(cls.name, cls)


def parse_target(spec: str) -> tuple[str, dict[str, Any]]:
    """``local`` | ``adb[:SERIAL]`` | ``ssh://[USER@]HOST[:PORT]`` | ``board`` | ``qemu`` → (name, params)."""
    s = (spec or "local").strip()
    for name, cls in TARGETS.items():
        params = cls.parse_spec(s)
        if params is not None:
            return name, params
    forms = [f for _, cls in TARGETS.items() for f in (cls.spec_forms or (cls.name,))]
    raise LesionliteError(f"unknown target {spec!r}; expected one of: {', '.join(forms)}")


def get_target(spec: str, options: BenchOptions) -> BenchTarget:
    name, params = parse_target(spec)
    return TARGETS.get(name)(spec=spec, options=options, **params)
