"""ExecuTorch: ``--format executorch`` writes ``model.pte`` (XNNPACK) and ``bench`` measures it on the host.

The fp32 and int8 ``.pte`` of the briefly trained tiny_cnn (tests/tiny_checkpoint.py) from conftest's shared
every-format export (int8 calibrated on its training images, as the other int8 artifacts are). The programs are then run by
``executorch.runtime`` directly — not through export's runner — and compared with PyTorch, and
``lesionlite bench`` measures them in its own subprocess runner. Skipped, with the reason, where executorch is
not installed (``pip install executorch==1.5.1``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("executorch.runtime", reason="executorch is not installed (pip install executorch==1.5.1)")

from tiny_checkpoint import EXPORT_ALL_CALIB, PREPROCESSING

from lesionlite.manifest import read_manifest
from lesionlite.preprocessing import preprocess_batch

pytestmark = pytest.mark.slow
PRECISIONS = ("fp32", "int8")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run, export_all):
    """The ``.pte`` artifacts of conftest's every-format export, copied (with the PyTorch reference export saved
    beside them) into a folder of their own: what bench and verify are pointed at holds ExecuTorch only."""
    src, report = export_all
    out = tmp_path_factory.mktemp("export")
    for prec in PRECISIONS:
        shutil.copytree(src / f"tiny_cnn_executorch_{prec}", out / f"tiny_cnn_executorch_{prec}")
    shutil.copy2(src / "pytorch_reference.npz", out / "pytorch_reference.npz")
    return tiny_run, out, [a for a in report.artifacts if a.format == "executorch" and a.precision in PRECISIONS]


def _pytorch_logits(run: Path, x: np.ndarray) -> np.ndarray:
    import torch

    from distill.artifacts import load_student

    model, _ = load_student(run)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_pte_written_with_manifest_and_parity(exported):
    _, out, artifacts = exported
    assert [a.status for a in artifacts] == ["written"] * len(PRECISIONS)
    for prec in PRECISIONS:
        d = out / f"tiny_cnn_executorch_{prec}"
        m = read_manifest(d)
        assert m.kind == "executorch" and m.files["model"] == "model.pte" and (d / "model.pte").stat().st_size > 0
        assert m.input["layout"] == "NCHW" and m.input["dtype"] == "float32" and m.input["shape"] == [1, 3, 32, 32]
        assert m.output["kind"] == "logits" and m.output["temperature_applied"] is False
        assert m.parity["verified"] is True and m.parity["accepted"] is True
        assert m.parity["top1_agreement"] >= m.parity["threshold"]
        assert set(m.metrics) >= {"accuracy", "balanced_accuracy"}
    m8 = read_manifest(out / "tiny_cnn_executorch_int8")
    q = m8.extra["quantization"]
    assert "XNNPACKQuantizer" in q["method"] and q["calibration_samples"] == EXPORT_ALL_CALIB and "preparation" in q
    # int8 weights: smaller than fp32
    assert (out / "tiny_cnn_executorch_int8" / "model.pte").stat().st_size < \
        (out / "tiny_cnn_executorch_fp32" / "model.pte").stat().st_size


def test_pte_outputs_match_pytorch_in_executorch_runtime(exported, bundle):
    import torch
    from executorch.runtime import Runtime

    run, out, _ = exported
    x = preprocess_batch([p[0] for p in bundle.test], PREPROCESSING, "NCHW")
    ref = _pytorch_logits(run, x)
    for prec, max_abs, min_agree in (("fp32", 1e-4, 1.0), ("int8", None, 0.97)):
        method = Runtime.get().load_program(str(out / f"tiny_cnn_executorch_{prec}" / "model.pte")).load_method("forward")
        got = np.concatenate([method.execute([torch.from_numpy(np.ascontiguousarray(r[None]))])[0].numpy() for r in x])
        assert got.shape == ref.shape
        assert float(np.mean(got.argmax(1) == ref.argmax(1))) >= min_agree, prec
        if max_abs is not None:
            assert float(np.abs(got - ref).max()) < max_abs


@pytest.fixture(scope="module")
def benched(exported, tmp_path_factory) -> Path:
    """One ``lesionlite bench --op-profile`` of the ``.pte`` folder (the latency rows and the op profiles are read
    by separate tests; ``--op-profile`` measures the latency as a plain bench does, then profiles)."""
    from mobile_benchmarks.cli import main

    _, out, _ = exported
    dest = tmp_path_factory.mktemp("bench")
    rc = main([str(out), "--op-profile", "--threads", "1", "--runs", "10", "--warmup", "2", "--repeats", "1",
               "--min-secs", "0", "--warmup-min-secs", "0", "--out", str(dest), "--quiet"])
    assert rc == 0
    return dest


def test_bench_measures_pte_on_the_host(benched):
    doc = json.loads((benched / "bench.json").read_text())
    rows = {r["artifact"]: r for r in doc["results"]}
    assert set(rows) == {f"tiny_cnn_executorch_{p}" for p in PRECISIONS}
    for r in rows.values():
        assert r["status"] == "ok" and r["kind"] == "executorch" and r["runtime"]["runtime"] == "executorch"
        assert r["delegate"]["name"] == "XNNPACK"
        assert 0 < r["latency_ms"]["p50"] < 1000
    assert doc["host"]["executorch"]
    md = (benched / "bench.md").read_text()
    assert "| tiny_cnn_executorch_int8 |" in md


def test_emulated_board_says_executorch_is_not_supported():
    from mobile_benchmarks.targets.common import board_skip

    art = {"name": "m_executorch_int8", "kind": "executorch", "precision": "int8"}
    skipped = board_skip(art, 1)
    assert skipped["status"] == "skipped" and "not supported on the emulated aarch64 board" in skipped["reason"]
    assert board_skip({**art, "kind": "tflite"}, 1) is None


def test_serve_refuses_executorch_clearly(exported):
    from lesionlite.errors import LesionliteError
    from serve.models import load_models

    _, out, _ = exported
    with pytest.raises(LesionliteError, match=r"\(executorch\); serve runs kinds"):
        load_models(out / "tiny_cnn_executorch_fp32")


def test_runner_without_executorch_skips_naming_the_install(monkeypatch, capsys):
    import sys

    from mobile_benchmarks import remote_runner

    monkeypatch.setitem(sys.modules, "executorch.runtime", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as info:
        remote_runner._load_executorch("model.pte", 1)
    assert info.value.code == 3
    out = capsys.readouterr().out
    assert '"skipped"' in out and "pip install executorch==1.5.1" in out


def test_golden_vectors_written_and_verified_through_executorch_runtime(exported, capsys):
    from lesionlite.cli import main

    _, out, _ = exported
    for prec in PRECISIONS:
        assert (out / f"tiny_cnn_executorch_{prec}" / "golden").is_dir(), prec
    assert main(["verify", str(out)]) == 0


def test_relu6_outputs_are_quantized_on_the_clamped_range():
    """The stock XNNPACKQuantizer gives a conv → ReLU6 output the conv's pre-activation scale (hardtanh shares its
    input's observer): here ±~30 for values that end in [0, 6]. The clamp-aware observer gives it [0, 6]."""
    import torch
    from torch import nn

    from export.formats.executorch import _quantize_pt2e

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # pre-activations far outside [0, 6]
    calib = np.random.default_rng(0).standard_normal((16, 3, 12, 12)).astype(np.float32)
    converted, info = _quantize_pt2e(model, (torch.zeros(1, 3, 12, 12),), calib)
    assert info["clamp_aware_outputs"] == 1 and "ReLU6" in info["method"]
    after_relu6 = [n for n in converted.graph.nodes if "quantize_per_tensor" in str(n.target)
                   and "dequantize" not in str(n.target) and "hardtanh" in str(n.args[0])]
    assert after_relu6, "no quantize node after the ReLU6"
    scale, zero_point = float(after_relu6[0].args[1]), int(after_relu6[0].args[2])
    assert scale <= 6.0 / 255 * 1.001 and zero_point == -128  # [0, 6] on the int8 grid, 0 exactly representable
    x = torch.from_numpy(calib[:4])
    with torch.no_grad():
        ref = model(x)
        got = torch.cat([converted(x[i:i + 1]) for i in range(len(x))])
    assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_bench_op_profile_reads_the_etdump_of_each_pte(benched):
    """`bench --op-profile`: ExecuTorch's devtools (ETDump + Inspector) work with the pip wheel; XNNPACK's own
    operators inside the delegate are the op types, int8 ones named as such (QS8/QC8)."""
    doc = json.loads((benched / "bench.json").read_text())
    profiles = {p["artifact"]: p for p in doc["op_profiles"]}
    assert set(profiles) == {f"tiny_cnn_executorch_{p}" for p in PRECISIONS}
    for p in profiles.values():
        s = p["summary"]
        assert p["status"] == "ok" and p["runtime"] == "executorch" and "ETDump" in s["source"]
        assert s["runs"] == 10 and s["ops"] and s["total_ms"] > 0
        assert not any("#" in r["op_type"] or r["op_type"] in ("DELEGATE_CALL", "Method::execute") for r in s["ops"])
    int8_types = " ".join(r["op_type"] for r in profiles["tiny_cnn_executorch_int8"]["summary"]["ops"])
    assert "QS8" in int8_types or "QC8" in int8_types
    assert "## Where the time goes (op profile)" in (benched / "bench.md").read_text()
