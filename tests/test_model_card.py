"""export writes MODEL_CARD.md + model_card.json: per-class figures, calibration,
artifacts, and subgroups where the data has the metadata."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoint import make_tiny_checkpoint, synthetic_bundle

from export.model_card import CARD_JSON, CARD_MD, balanced_accuracy, subgroups

pytestmark = pytest.mark.slow  # real exports

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


class _WithAttributes(list):
    """A test split (list of (image, label)) that carries per-image metadata like HAM10000's."""
    attributes: list[dict[str, str]]


def test_subgroup_figures_by_hand() -> None:
    labels = np.array([4, 4, 4, 5, 5, 5, 4, 5])
    pred = np.array([4, 5, 4, 5, 5, 4, 4, 5])
    attrs = [{"sex": s, "age": a, "localization": "back"} for s, a in
             zip(["male"] * 4 + ["female"] * 4, ["25", "35", "50", "65", "80", "", "40", "70"])]
    rows = {r["group"]: r for r in subgroups(labels, pred, attrs, CLASSES)["sex"]}
    # male: mel 2/3 recall, nv 1/1 → bal 0.8333; female: mel 1/1, nv 2/3
    assert rows["male"]["n"] == 4 and rows["male"]["melanoma_n"] == 3
    assert rows["male"]["melanoma_recall"] == pytest.approx(2 / 3)
    assert rows["male"]["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert rows["female"]["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    ages = [r["group"] for r in subgroups(labels, pred, attrs, CLASSES)["age band"]]
    assert ages == ["< 30", "30–44", "45–59", "60–74", "≥ 75", "unknown"]
    assert all(r["small"] for r in subgroups(labels, pred, attrs, CLASSES)["sex"])
    assert balanced_accuracy(np.array([], int), np.array([], int)) is None


def test_export_writes_the_model_card_with_subgroups(tmp_path: Path) -> None:
    from export.api import export_model

    bundle = synthetic_bundle(n_train=70, n_val=14, n_test=42)
    test = _WithAttributes(bundle.test)
    test.attributes = [{"sex": "male" if i % 2 else "female", "age": str(20 + 5 * (i % 12)),
                        "localization": "back" if i % 3 else "face"} for i in range(len(test))]
    bundle.test = test
    ckpt = make_tiny_checkpoint(tmp_path / "run", bundle)
    report = export_model(ckpt, tmp_path / "out", "onnx", "fp32,int8", dataset=bundle, eval_samples=30,
                          calib_samples=28)
    card = json.loads((tmp_path / "out" / CARD_JSON).read_text())
    md = (tmp_path / "out" / CARD_MD).read_text()
    assert "not a diagnosis" in md and "## Subgroups" in md and "### sex" in md and "melanoma recall" in md
    assert card["evaluation"]["n"] == 30 and len(card["evaluation"]["per_class"]) == 7
    assert {r["group"] for r in card["subgroups"]["sex"]} == {"male", "female"}
    assert sum(r["n"] for r in card["subgroups"]["sex"]) == 30
    names = {a["name"] for a in card["artifacts"]}
    assert names == {a.name for a in report.artifacts}
    for a in card["artifacts"]:
        assert a["latency_ms_p50"] > 0 and a["size_bytes"] > 0 and a["top1_agreement"] is not None
    assert 0 <= card["calibration"]["ece_calibrated"] <= 1
    # the eval subset's metadata matches its images: the sex split equals a recount from the chosen indices
    from export.data import _take_indices

    idx = list(_take_indices(test, 30, 0 + 1))
    males = sum(test.attributes[i]["sex"] == "male" for i in idx)
    assert next(r["n"] for r in card["subgroups"]["sex"] if r["group"] == "male") == males


def test_card_without_metadata_says_so(small_export: Path) -> None:
    """conftest's small_export: a tiny_cnn exported (ONNX fp32 + fp16) with a synthetic set that has no metadata."""
    md = (small_export / CARD_MD).read_text()
    assert "carries no subgroup metadata" in md
