"""The torch-free contracts: manifest round-trip, atomic writes, CLI dispatch and error lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lesionlite.atomic import atomic_path, write_json_atomic
from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest, read_manifest
from lesionlite.preprocessing import PreprocessConfig

REPO = Path(__file__).resolve().parents[1]


def _manifest() -> Manifest:
    return Manifest(
        kind="onnx",
        architecture="tiny_cnn",
        class_names=["a", "b", "c"],
        preprocessing=PreprocessConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, 32, 32], "quantization": None},
        calibration={"temperature": 1.5},
        files={"model": "model.onnx"},
    )


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = _manifest()
    m.write(tmp_path)
    back = read_manifest(tmp_path)
    assert back.to_dict() == m.to_dict()
    assert back.temperature == 1.5 and back.num_classes == 3


@pytest.mark.parametrize(
    "content, needle",
    [
        ("not json", "unreadable manifest"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"kind": "onnx"}), "missing architecture"),
        (json.dumps({**_manifest().to_dict(), "kind": "pickle"}), "unknown artifact kind"),
        (json.dumps({**_manifest().to_dict(), "schema_version": 99}), "newer"),
    ],
)
def test_manifest_bad_input_names_problem(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(LesionliteError, match=needle):
        read_manifest(tmp_path)


def test_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LesionliteError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_preprocessing_version_mismatch_is_refused() -> None:
    d = PreprocessConfig().to_dict()
    d["version"] = "0"
    with pytest.raises(LesionliteError, match="preprocessing version"):
        PreprocessConfig.from_dict(d)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    write_json_atomic(dest, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("converter crashed")
    assert json.loads(dest.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_replace(tmp_path: Path) -> None:
    dest = tmp_path / "model.mlpackage"
    for version in ("1", "2"):
        with atomic_path(dest, is_dir=True) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text(version)
    assert (dest / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lesionlite.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_help_lists_subcommands() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for sub in ("distill", "export", "serve", "bench"):
        assert sub in out.stdout


def test_cli_unknown_subcommand_is_one_clear_error() -> None:
    out = _cli("frobnicate")
    assert out.returncode == 2
    assert "unknown subcommand 'frobnicate'" in out.stderr
    assert "Traceback" not in out.stderr
