"""Contract tests parametrised over every registry (as timm's tests run over ``list_models``).

A new method, model, dataset, export format, runtime or bench target is tested here the moment its
module registers it: no test to write for the contract itself, only for what the plug-in does.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from lesionlite.errors import LesionliteError, MissingDependencyError
from lesionlite.manifest import KINDS, PRECISIONS, read_manifest
from lesionlite.registry import Registry

torch = pytest.importorskip("torch")

from distill.config import resolve_config
from distill.data.registry import DATASETS, parse_spec
from distill.methods.base import DistillMethod
from distill.methods.registry import METHODS
from distill.models.registry import MODELS, build_model
from export.formats import FORMATS, ExportFormat, list_formats
from mobile_benchmarks.targets import TARGETS, BenchTarget, parse_target
from serve.runtimes import RUNTIMES, Runtime

#: a tiny run: synthetic 16 px images, tiny_cnn, two optimizer steps of one epoch
TINY = {
    "data.name": "synthetic", "data.image_size": 16, "data.workers": 0,
    "data.options": {"synthetic_counts": [84, 21, 21]}, "model.arch": "tiny_cnn", "optim.lr": 0.01,
    "optim.batch_size": 16, "run.threads": 1, "run.device": "cpu", "run.progress": False, "run.plots": False,
    "run.epochs": 1, "run.max_steps_per_epoch": 2,
}
METHODS_AT_IMPORT = tuple(METHODS.names())
ALL = {"method": METHODS, "model": MODELS, "dataset": DATASETS, "format": FORMATS, "runtime": RUNTIMES,
       "target": TARGETS}


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_registry_is_the_shared_helper_and_finds_its_plugins(kind: str) -> None:
    registry = ALL[kind]
    assert isinstance(registry, Registry) and registry.names(), kind
    with pytest.raises(LesionliteError, match=f"unknown {registry.kind} 'no-such-plugin'; available: "):
        registry.get("no-such-plugin")


def test_a_second_plugin_under_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        METHODS.add("kd", type("Impostor", (DistillMethod,), {}))


# ------------------------------------------------------------------------------------------- methods
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distill.train import train

    out = tmp_path_factory.mktemp("registry") / "teacher"
    return train(resolve_config(flags={**TINY, "method.name": "scratch", "run.out": str(out)})).run_dir


@pytest.mark.parametrize("name", METHODS.names())
def test_method_declares_its_plugin_attributes(name: str) -> None:
    cls = METHODS.get(name)
    assert issubclass(cls, DistillMethod) and cls.name == name
    assert (cls.__doc__ or "").strip(), "its docstring's first line is what --list-methods shows"
    assert cls.num_views >= 1 and cls.view_mode in ("independent", "rotations")
    assert cls.config_cls is None or dataclasses.is_dataclass(cls.config_cls)
    assert isinstance(cls.default_overrides, dict) and isinstance(cls.ddp_find_unused_parameters, bool)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_and_writes_a_checkpoint(name: str, teacher_run: Path, tmp_path: Path) -> None:
    from distill.train import train

    flags = {**TINY, "method.name": name, "run.out": str(tmp_path / name)}
    if METHODS.get(name).needs_teacher:
        flags["model.teacher"] = str(teacher_run)
    if name == "ssdkd":
        flags["method.ss_epochs"] = 1  # its stage A (the teacher's self-supervised head), kept short
    result = train(resolve_config(flags=flags))
    man = read_manifest(result.run_dir)
    assert man.kind == "checkpoint" and man.extra["method"] == name and man.precision == "fp32"
    assert math.isfinite(result.history[-1]["train_loss"])


@pytest.mark.slow
def test_the_method_docs_architecture_md_adds_in_one_file_trains(teacher_run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/architecture.md's worked example, run as written: a newcomer's one-file method trains."""
    import importlib.util
    import re

    from distill.train import train

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n# distill/methods/(\w+)\.py\n(.*?)```", doc, re.S)
    assert code, "docs/architecture.md lost its worked method example"
    (tmp_path / f"{code.group(1)}.py").write_text(code.group(2))
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the example registers into a copy
    spec = importlib.util.spec_from_file_location(f"docs_example_{code.group(1)}", tmp_path / f"{code.group(1)}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    (name,) = set(METHODS.names()) - set(METHODS_AT_IMPORT)
    result = train(resolve_config(flags={**TINY, "method.name": name, "model.teacher": str(teacher_run),
                                         "method.weight": 0.5, "run.out": str(tmp_path / "run")}))
    assert read_manifest(result.run_dir).extra["method"] == name
    assert math.isfinite(result.history[-1]["train_loss"])


# -------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODELS.names())
def test_model_builds_a_classifier_with_the_shared_layout(name: str) -> None:
    spec = MODELS.get(name)
    model = build_model(name, num_classes=3).eval()
    assert model.arch == name
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 3)
    keys = model.state_dict().keys()
    assert all(k.startswith(("features.", "classifier.")) for k in keys), [k for k in keys][:5]
    assert model.classifier.in_features == spec.feature_dim


# ------------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_parses_its_spec_and_names_a_missing_folder(name: str, tmp_path: Path) -> None:
    loader = DATASETS.get(name)
    assert loader.description and parse_spec(name) == (name, None)
    assert parse_spec(f"{name.upper()}:x") == (name, "x")  # spec names are typed by hand
    if name == "synthetic":
        return  # generated: nothing to be missing
    missing = tmp_path / "nowhere" / ("data.npz" if name in ("dermamnist", "npz") else "data")
    with pytest.raises(LesionliteError, match="nowhere"):
        loader.load(str(missing), root=None)


# ------------------------------------------------------------------------------------- export formats
def test_format_order_starts_with_the_preferred_formats() -> None:
    assert list_formats()[:3] == ["onnx", "tflite", "coreml"] and sorted(list_formats()) == FORMATS.names()


@pytest.mark.parametrize("name", FORMATS.names())
def test_format_declares_its_artifact(name: str) -> None:
    fmt = FORMATS.get(name)()
    assert isinstance(fmt, ExportFormat) and fmt.name == name
    assert fmt.kind in KINDS and fmt.model_file and set(fmt.precisions) <= set(PRECISIONS)
    try:
        fmt.check_available()
    except MissingDependencyError as exc:  # allowed: a converter not installed says which package
        assert name in str(exc) or "pip install" in str(exc)


# ------------------------------------------------------------------------------------------ runtimes
@pytest.mark.parametrize("kind", RUNTIMES.names())
def test_runtime_serves_its_manifest_kind_and_names_a_missing_file(kind: str, tmp_path: Path) -> None:
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig
    from serve.runtimes import load_runtime

    cls = RUNTIMES.get(kind)
    assert issubclass(cls, Runtime) and cls.kind == kind and kind in KINDS and cls.platform
    manifest = Manifest(kind=kind, architecture="x", class_names=["a", "b"], preprocessing=PreprocessConfig())
    with pytest.raises((LesionliteError, ValueError, OSError)) as info:
        load_runtime(tmp_path / "absent.model", manifest)
    assert "absent.model" in str(info.value)


# ------------------------------------------------------------------------------------------- targets
_EXAMPLE = {"SERIAL": "R58M123", "[USER@]": "pi@", "HOST": "board.local", "[:PORT]": ":2222"}


@pytest.mark.parametrize("name", TARGETS.names())
def test_target_parses_every_form_it_documents(name: str) -> None:
    cls = TARGETS.get(name)
    assert issubclass(cls, BenchTarget) and cls.name == name
    for form in cls.spec_forms or (name,):
        spec = form
        for placeholder, value in _EXAMPLE.items():
            spec = spec.replace(placeholder, value)
        assert parse_target(spec)[0] == name, (form, spec)
