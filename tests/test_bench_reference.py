"""ARM/target vs PyTorch per image: export saves PyTorch's logits, bench compares with them.

Board-independent: the target here is this host (``--target local --agreement-images N``), which
runs the same code path as ``--target board`` (remote_runner ``--predict`` on both sides); what is
checked is that the images bench draws are the ones PyTorch was measured on, and that a reference
from another checkpoint is never used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # a training run, an export and bench on it

TINY = {
    "data.name": "synthetic", "data.image_size": 16, "data.workers": 0,
    "data.options": {"synthetic_counts": [84, 21, 21]}, "model.arch": "tiny_cnn", "optim.lr": 0.01,
    "optim.batch_size": 16, "run.threads": 1, "run.device": "cpu", "run.progress": False,
    "run.plots": False, "run.epochs": 2,
}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distill.config import resolve_config
    from distill.train import train
    from export.api import export_model

    base = tmp_path_factory.mktemp("ref")
    run = train(resolve_config(flags={**TINY, "run.out": str(base / "run")})).run_dir
    out = base / "export"
    export_model(run, out, formats="onnx", precisions="fp32,int8", force=True)
    return out


def _bench(export: Path, out: Path, n: int = 8) -> dict:
    from mobile_benchmarks.cli import main

    rc = main([str(export), "--target", "local", "--agreement-images", str(n), "--threads", "1", "--runs", "2",
               "--warmup", "0", "--repeats", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    return json.loads((out / "bench.json").read_text())


def test_export_saves_pytorch_logits_with_the_images_they_belong_to(export_dir: Path) -> None:
    report = json.loads((export_dir / "export_report.json").read_text())
    with np.load(export_dir / "pytorch_reference.npz") as z:
        logits, indices, labels = z["logits"], z["indices"], z["labels"]
        assert str(z["split"]) == report["data"]["eval_split"]
        assert str(z["checkpoint_sha256"]) == report["source"]["sha256"]
    assert logits.shape == (report["data"]["eval_samples"], 7) and np.isfinite(logits).all()
    assert len(indices) == len(logits) == len(labels) and len(set(indices.tolist())) == len(indices)


def test_bench_compares_target_outputs_with_pytorch_per_image(export_dir: Path, tmp_path: Path) -> None:
    doc = _bench(export_dir, tmp_path / "b")
    rows = {r["precision"]: r for r in doc["agreement"]["rows"]}
    assert set(rows) == {"fp32", "int8"} and all(r["status"] == "ok" for r in rows.values())
    fp32, int8 = rows["fp32"]["vs_pytorch"], rows["int8"]["vs_pytorch"]
    assert fp32["n"] == 8 and fp32["target_top1_agreement"] == 1.0 and fp32["target_max_abs_diff"] < 1e-3
    assert int8["n"] == 8 and int8["target_max_abs_diff"] > 0  # int8 is not PyTorch's float model
    # the same images as export's: fp32 vs PyTorch here equals what export measured on them (all agree)
    assert "export evaluated against PyTorch" in " ".join(doc["agreement"]["inputs"])
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "target vs PyTorch top-1" in md and "1.0000 (" in md


def test_a_reference_from_another_checkpoint_is_not_used(export_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    ref = copy / "pytorch_reference.npz"
    with np.load(ref) as z:
        fields = {k: z[k] for k in z.files}
    fields["checkpoint_sha256"] = np.str_("0" * 64)
    with open(ref, "wb") as fh:
        np.savez(fh, **fields)
    doc = _bench(copy, tmp_path / "b")
    assert all(r["vs_pytorch"] is None for r in doc["agreement"]["rows"])
    assert "no per-image reference from export" in (tmp_path / "b" / "bench.md").read_text()
