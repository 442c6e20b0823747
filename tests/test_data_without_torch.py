"""distill.data imports, parses specs, lists and loads datasets without torch.

bench's ARM-vs-host agreement check and export's data rebuild read datasets through ``distill.data``;
bench runs in environments without torch. The dataset registry imports every public module of the
package, so a torch import anywhere in it breaks them all: the torch transforms live in
``distill/transforms.py``. When data really is missing, bench's agreement check says why.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig
from mobile_benchmarks.agreement import eval_images, run_agreement, why_no_data
from mobile_benchmarks.artifacts import Artifact

ROOT = Path(__file__).resolve().parents[1]

#: installed before anything else in the child: importing torch or torchvision fails as if not installed
BLOCK_TORCH = '''
import importlib.abc, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
'''


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_data_layer_works_without_torch() -> None:
    code = '''
from distill.data import list_datasets, load_dataset, parse_spec
import distill.data

assert parse_spec("synthetic") == ("synthetic", None)
names = list_datasets()  # imports every module of the package (the registry's discovery)
assert "synthetic" in names and "ham10000" in names, names
bundle = load_dataset("synthetic", synthetic_size=16)
image, label = bundle.split("test")[0]
assert image.mode == "RGB" and 0 <= int(label) < len(bundle.class_names)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
assert not loaded, loaded
try:  # the lazy transform names still point at torch, and say so
    distill.data.eval_transform
except ModuleNotFoundError as exc:
    assert exc.name == "torch", exc
else:
    raise AssertionError("distill.data.eval_transform imported without torch")
print("ok")
'''
    assert _run_without_torch(code).stdout.strip() == "ok"


def test_bench_agreement_reads_real_images_without_torch() -> None:
    """The agreement check's images come from the data layer in bench's torch-free environment."""
    code = '''
from pathlib import Path
from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig
from mobile_benchmarks.agreement import eval_images
from mobile_benchmarks.artifacts import Artifact

m = Manifest(kind="onnx", architecture="x", class_names=list("abcdefg"), preprocessing=PreprocessConfig(input_size=32),
             data={"spec": "synthetic", "split_seed": 0})
images, labels, source, _ = eval_images(Artifact("a", Path("."), m, None), 4)
assert labels is not None and len(images) == 4, source
assert "synthetic images of the test split" in source, source
print("ok")
'''
    assert _run_without_torch(code).stdout.strip() == "ok"


def test_transform_names_still_reachable_through_distill_data() -> None:
    pytest.importorskip("torch")
    import distill.data
    from distill import transforms

    for name in distill.data._TRANSFORM_NAMES:
        assert getattr(distill.data, name) is getattr(transforms, name)
    with pytest.raises(AttributeError):
        distill.data.no_such_name  # noqa: B018


def _artifact(tmp_path: Path, spec: str) -> Artifact:
    m = Manifest(kind="onnx", architecture="x", class_names=list("abcdefg"),
                 preprocessing=PreprocessConfig(input_size=16), data={"spec": spec, "split_seed": 0})
    return Artifact("a", tmp_path, m, tmp_path / "model.onnx")


def test_agreement_says_the_data_layer_failed_to_import(monkeypatch, tmp_path: Path) -> None:
    """A missing package is not missing data: the reason names the module, not "data not available"."""
    import distill.data

    def broken(*_a, **_k):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(distill.data, "load_dataset", broken)
    images, labels, source, _ = eval_images(_artifact(tmp_path, "synthetic"), 3)
    assert len(images) == 3 and labels is None
    assert "module 'torch' is not installed" in source and "ModuleNotFoundError" in source
    assert "not available here" not in source


def test_agreement_names_the_folder_when_data_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-ham-here"
    images, labels, source, _ = eval_images(_artifact(tmp_path, f"ham10000:{missing}"), 2)
    assert labels is None and len(images) == 2
    assert "seeded random images" in source and "not available here" in source
    assert str(missing) in source  # the loader's own error names where it looked


def test_why_no_data_words() -> None:
    assert "not available here: gone" in why_no_data("ham10000", FileNotFoundError("gone"))
    assert "module" not in why_no_data("ham10000", ValueError("bad split"))
    assert "module 'torchvision' is not installed" in why_no_data("x", ImportError("no", name="torchvision"))


class _Failing:
    """A target / host whose predictions fail: the agreement run stops after choosing the images."""
    name = "fake"

    def predict(self, *_a, **_k) -> dict:
        return {"status": "failed", "reason": "fake"}


def test_agreement_run_logs_why_it_uses_random_images(tmp_path: Path) -> None:
    lines: list[str] = []
    missing = tmp_path / "no-ham-here"
    doc = run_agreement([_artifact(tmp_path, f"ham10000:{missing}")], _Failing(), _Failing(), 2, lines.append)
    said = [line for line in lines if "seeded random images" in line]
    assert said and str(missing) in said[0], lines
    assert any(str(missing) in s for s in doc["inputs"])
