"""The emulated aarch64 board, for real: built (cached) into $LESIONLITE_CACHE/board-aarch64, reached
over a loopback sshd with its generated key, and used by ``lesionlite bench --target board`` to run an
int8 TFLite and an int8 ONNX artifact on aarch64 Python under qemu-aarch64.

The first run downloads ~75 MB of Debian packages and ~60 MB of aarch64 wheels (about 35 s here);
later runs find everything cached. Without network access to the Debian and PyPI registries and no
board built yet, the board tests skip and say so; every other failure fails.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lesionlite.errors import LesionliteError
from mobile_benchmarks.agreement import compare_outputs, eval_images
from mobile_benchmarks.board import board_dir
from mobile_benchmarks.board import sshd as board_sshd
from mobile_benchmarks.cli import main

pytestmark = pytest.mark.slow


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def board():
    """The board, up: built where missing (cached), sshd started unless it already ran; stopped after
    the module only if this module started it."""
    from mobile_benchmarks.board.build import Builder

    paths = board_dir()
    was_running = board_sshd.running(paths) is not None
    try:
        Builder(paths, _quiet).build()
    except LesionliteError as exc:
        if "cannot download" in str(exc) and not paths.stamp("wheels").is_file():
            pytest.skip(f"emulated board cannot be built here: {exc}")
        raise
    board_sshd.start(paths, _quiet)
    yield paths
    if not was_running:
        board_sshd.stop(paths, _quiet)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, export_all, phone_exports) -> Path:
    """A real int8 ONNX and int8 TFLite (the default phone input) export of a tiny trained CNN: conftest's shared
    exports of one run, copied into one folder with the PyTorch reference export saved beside them."""
    import shutil

    src = export_all[0]
    out = tmp_path_factory.mktemp("board_export") / "export"
    shutil.copytree(src / "tiny_cnn_onnx_int8", out / "tiny_cnn_onnx_int8")
    shutil.copytree(phone_exports["int8"], out / "tiny_cnn_tflite_int8")
    shutil.copy2(src / "pytorch_reference.npz", out / "pytorch_reference.npz")
    kinds = sorted(p.parent.name for p in out.glob("*/manifest.json"))
    assert any("onnx" in k for k in kinds) and any("tflite" in k for k in kinds), kinds
    return out


def test_board_up_is_idempotent(board):
    from mobile_benchmarks.board.build import Builder

    lines: list[str] = []
    Builder(board, lines.append).build()
    results = lines[1::2]
    assert results and all(("cached" in r) or r.endswith("python3-aarch64") for r in results), lines
    before = board_sshd.running(board)
    again = board_sshd.start(board, lines.append)
    assert again["pid"] == before["pid"] and "already running" in lines[-1]


def _bench(model_dir: Path, out: Path, target: str, runs: int, warmup: int, agreement_images: int) -> dict:
    """``lesionlite bench`` on ``target``; its bench.json."""
    assert main([str(model_dir), "--target", target, "--runs", str(runs), "--warmup", str(warmup),
                 "--agreement-images", str(agreement_images), "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "bench.json").read_text())


def test_bench_int8_tflite_and_onnx_on_the_board_over_ssh(board, int8_export, tmp_path):
    out = tmp_path / "bench"
    doc = _bench(int8_export, out, "board", runs=3, warmup=1, agreement_images=8)
    assert doc["target"]["name"] == "board" and doc["target"]["device"]["machine"] == "aarch64"
    assert doc["emulated"]["emulator"].startswith("qemu-aarch64")
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert sorted(r["kind"] for r in ok) == ["onnx", "tflite"]
    for r in ok:
        assert r["platform"]["machine"] == "aarch64" and r["source"].startswith("ssh ")
        assert r["emulated"] and any(n.startswith("EMULATED") for n in r["notes"])
        assert r["latency_ms"]["count"] == 3
    rows = doc["agreement"]["rows"]
    assert sorted(r["kind"] for r in rows) == ["onnx", "tflite"]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["n"] == 8 and r["target_machine"] == "aarch64" and r["host_machine"] == os.uname().machine
        assert 0.0 <= r["top1_agreement"] <= 1.0 and np.isfinite(r["max_abs_diff"])
        assert r["target_runtime"] == r["host_runtime"]  # same version on both sides: differences are kernels
    assert doc["ship"] == []  # an emulator's times never pick what to ship
    md = (out / "bench.md").read_text()
    assert "EMULATED" in md and "## ARM vs host agreement" in md and "not a device's latency" in md


def test_qemu_target_runs_without_ssh(board, int8_export, tmp_path):
    doc = _bench(int8_export, tmp_path / "bench", "qemu", runs=2, warmup=0, agreement_images=0)
    assert doc["target"]["name"] == "qemu" and "agreement" not in doc
    assert all(r["status"] == "ok" and r["platform"]["machine"] == "aarch64" and r["emulated"] for r in doc["results"])


def test_compare_refuses_emulated_against_real(board, int8_export, tmp_path):
    out = tmp_path / "emu"
    emu = _bench(int8_export, out, "qemu", runs=2, warmup=0, agreement_images=0)
    real = copy.deepcopy(emu)  # the same file, relabelled as a real measurement
    real.pop("emulated")
    for r in real["results"]:
        r.pop("emulated", None)
    (tmp_path / "real.json").write_text(json.dumps(real))
    with pytest.raises(LesionliteError, match="emulat"):
        main(["compare", str(tmp_path / "real.json"), str(out / "bench.json")])
    assert main(["compare", str(out / "bench.json"), str(out / "bench.json")]) == 0  # emulated vs emulated: allowed


def test_board_down_stops_by_pid_and_up_restarts(board):
    st = board_sshd.running(board)
    assert st is not None
    assert board_sshd.stop(board, _quiet) is True
    assert board_sshd.running(board) is None and not board.state.exists()
    assert not board_sshd._alive(st["pid"])
    assert board_sshd.stop(board, _quiet) is False  # down twice: nothing to stop
    st2 = board_sshd.start(board, _quiet)
    assert st2["pid"] != st["pid"] and board_sshd._login_ok(board)


def test_board_target_when_board_is_down_is_one_line(tmp_path):
    from mobile_benchmarks.targets import BenchOptions, get_target

    opts = BenchOptions(board_dir=str(tmp_path / "none"))
    with pytest.raises(LesionliteError, match="not running.*board up"):
        get_target("board", opts)
    with pytest.raises(LesionliteError, match="board up --no-sshd"):
        get_target("qemu", opts)


def test_board_build_names_a_missing_tool(tmp_path, monkeypatch):
    from mobile_benchmarks.board.build import check_tools

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LesionliteError, match="missing host tool.*'apt-get'"):
        check_tools()


def test_board_build_says_when_the_registry_is_unreachable(tmp_path, monkeypatch):
    import shutil

    from mobile_benchmarks.board import build

    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get on this machine")
    monkeypatch.setattr(build, "DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # nothing listens on port 9
    with pytest.raises(LesionliteError, match=r"^board: cannot download Debian package lists from .*127\.0\.0\.1:9"):
        build.Builder(board_dir(tmp_path / "b"), _quiet).apt_lists()
    assert not board_dir(tmp_path / "b").stamp("apt").exists()


def test_compare_outputs_figures():
    a = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    b = np.array([[1.0, 2.5, 0.0], [0.0, 3.0, 1.0]])
    r = compare_outputs(a, b, labels=np.array([1, 0]))
    assert r["top1_agreement"] == 0.5 and r["max_abs_diff"] == 3.0 and not r["bit_identical"]
    assert r["accuracy_target"] == 1.0 and r["accuracy_host"] == 0.5
    assert compare_outputs(a, a.copy(), None)["bit_identical"]


def test_agreement_images_come_from_the_manifest_data(data_root, tmp_path):
    if data_root is None or not (Path(data_root) / "ham10000_200x150").is_dir():
        pytest.skip("real HAM10000 not present (set LESIONLITE_DATA)")
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig
    from mobile_benchmarks.artifacts import Artifact

    m = Manifest(kind="tflite", architecture="x", class_names=list("abcdefg"), preprocessing=PreprocessConfig(input_size=64),
                 data={"spec": "ham10000", "split_seed": 0})
    images, labels, source, _ = eval_images(Artifact("a", tmp_path, m, None), 6)
    assert len(images) == 6 and labels is not None and labels.shape == (6,)
    assert "real images of the test split of ham10000" in source
