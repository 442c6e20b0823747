"""External validation: the evaluation-only ISIC-archive set, bootstrap CIs, the operating point,
``lesionlite evaluate`` and export's internal/external section — on generated data, and on the real
external set where the data setting finds it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _fixtures_data import real_data_root, write_csv
from PIL import Image

from distill.bootstrap import bootstrap, replicate_indices
from distill.clinical import (
    OperatingPoint,
    choose_operating_point,
    clinical_metrics,
    paired_deltas,
    positive_classes,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from distill.data import load_dataset
from distill.data.base import ISIC2019_CLASSES
from distill.metrics import binary_auc
from lesionlite.classes import class_mapping
from lesionlite.errors import LesionliteError

HAM7 = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
#: ISIC 2019 code → the tiny fixture's class index whose colour pattern the generated image gets
PATTERN = {"MEL": 4, "NV": 5, "BKL": 2}


def make_isic_archive(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """An ISIC-archive-like external folder (labels.csv, label8) + ISIC 2019 metadata in isic2019_labels/."""
    rng = np.random.default_rng(seed)
    d = root / "isic_ext"
    (d / "images").mkdir(parents=True)
    (root / "isic2019_labels").mkdir()
    rows, meta = [], []
    k = 0
    for code, c in PATTERN.items():
        for j in range(per_class):
            a = rng.integers(0, 70, (40, 48, 3)).astype(np.int32)
            a[..., c % 3] += 120
            a[: 8 + 4 * c, :, (c + 1) % 3] += 60
            name = f"ISIC_{k:07d}"
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(d / "images" / f"{name}.png")
            rows.append([name, f"images/{name}.png", name, code, ISIC2019_CLASSES.index(code)])
            # two images per lesion for the first four of each class: the bootstrap must keep them together
            meta.append([name, 30 + 5 * (j % 6), "anterior torso" if j % 2 else "lower extremity",
                         f"IL_{code}_{j // 2}" if j < 4 else "", "female" if j % 3 else "male"])
            k += 1
    write_csv(d / "labels.csv", ["image_id", "file", "isic2019_image", "isic2019_dx", "label8"], rows)
    write_csv(root / "isic2019_labels" / "ISIC_2019_Training_Metadata.csv",
              ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], meta)
    return d


@pytest.fixture(scope="module")
def external_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extdata")
    make_isic_archive(root)
    return root


def test_isic_archive_is_an_evaluation_only_test_split_with_metadata(external_root: Path):
    b = load_dataset("isic-archive:isic_ext", root=external_root)
    assert b.evaluation_only and len(b.train) == 0 and len(b.val) == 0 and len(b.test) == 36
    assert b.test.class_counts()[ISIC2019_CLASSES.index("MEL")] == 12
    assert b.test.attributes[0] == {"sex": "male", "age": "30", "localization": "lower extremity"}
    assert b.test.groups[0] == b.test.groups[1] == "IL_MEL_0" and b.test.groups[5] == b.test.ids[5]
    assert "evaluation only" in b.source and b.summary()["evaluation_only"] is True


def test_the_external_set_is_refused_for_training_and_calibration(external_root: Path, tmp_path: Path):
    from distill.config import TrainConfig
    from distill.run_setup import load_data
    from export.data import prepare_data
    from lesionlite.preprocessing import PreprocessConfig

    cfg = TrainConfig()
    cfg.data.name, cfg.data.root = "isic-archive:isic_ext", str(external_root)
    with pytest.raises(LesionliteError, match="external validation set.*training"):
        load_data(cfg, None, tmp_path)
    bundle = load_dataset("isic-archive:isic_ext", root=external_root)
    with pytest.raises(LesionliteError, match="external validation set.*calibration"):
        prepare_data(bundle, PreprocessConfig(input_size=32), HAM7)
    with pytest.raises(LesionliteError, match="validation split only"):
        choose_operating_point(np.full((4, 7), 1 / 7), np.array([4, 4, 5, 5]), HAM7, split="test")


def test_isic_codes_map_onto_the_ham_classes():
    m = class_mapping(ISIC2019_CLASSES, HAM7)
    assert m == {0: 4, 1: 5, 2: 1, 3: 0, 4: 2, 5: 3, 6: 6}  # SCC (7) has no counterpart
    assert class_mapping(HAM7, HAM7) == {i: i for i in range(7)}


def test_operating_point_reaches_the_declared_sensitivity_on_validation():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    pos = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], bool)
    assert threshold_for_sensitivity(scores, pos, 0.9) == 0.1  # 9 of 10 at or above
    assert threshold_for_sensitivity(scores, pos, 0.95) == 0.05
    sens, spec = sensitivity_specificity(np.array([0.2, 0.6, 0.7, 0.1]), np.array([1, 1, 0, 0], bool), 0.5)
    assert (sens, spec) == (0.5, 0.5)
    probs = np.eye(7)[[4, 4, 4, 5, 5, 0]] * 0.7 + 0.3 / 7
    op = choose_operating_point(probs, np.array([4, 4, 4, 5, 5, 0]), HAM7, "malignant", 1.0)
    assert op.positive_classes == ["akiec", "bcc", "mel"] and op.sensitivity == 1.0 and op.n_positive == 4
    assert OperatingPoint.from_dict(op.to_dict()) == op
    with pytest.raises(LesionliteError, match="none for target"):
        positive_classes(["a", "b"], "mel")


def test_vectorised_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)
    y = rng.random(60) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[y] for b in s[~y]]
    assert binary_auc(y, s) == pytest.approx(np.mean(pairs))
    assert binary_auc(np.ones(3, bool), s[:3]) is None


def test_bootstrap_keeps_class_counts_and_lesions_together():
    y = np.array([0, 0, 0, 1, 1, 2])
    groups = ["a", "a", "b", "c", "d", "e"]
    for idx in replicate_indices(y, groups, 50, seed=3):
        assert sorted(set(y[idx].tolist())) == [0, 1, 2]  # every class in every replicate
        assert (y[idx] == 1).sum() == 2 and (y[idx] == 2).sum() == 1
        assert (idx == 0).sum() == (idx == 1).sum()  # lesion "a" drawn whole
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    res = bootstrap({"mean": lambda i: float(labels[i].mean())}, labels, n_boot=200)
    m = res["metrics"]["mean"]
    assert m["ci_low"] == m["ci_high"] == m["value"]  # stratified by class: the class share cannot move
    res = bootstrap({"auc": lambda i: binary_auc(labels[i] == 1, labels[i] + rng.random(i.size))}, labels, n_boot=200)
    assert res["metrics"]["auc"]["ci_low"] <= res["metrics"]["auc"]["value"] <= res["metrics"]["auc"]["ci_high"]


def test_clinical_metrics_and_paired_deltas_on_known_predictions():
    y = np.array([4] * 20 + [5] * 60 + [2] * 20)
    p = np.full((100, 7), 0.01)
    p[np.arange(100), y] = 0.94  # a perfect model
    op = choose_operating_point(p, y, HAM7)
    c = clinical_metrics(y, p, HAM7, op, ood=np.r_[np.ones(10), np.zeros(90)], n_boot=100)
    m = c["metrics"]
    assert m["melanoma_auc"]["value"] == 1.0 and m["sensitivity"]["value"] == 1.0 and m["specificity"]["value"] == 1.0
    assert m["ood_rate"]["value"] == 0.1 and c["classes_present"] == ["bkl", "mel", "nv"] and c["n_melanoma"] == 20
    worse = p.copy()
    worse[:10] = worse[:10][:, [0, 1, 2, 3, 5, 4, 6]]  # half the melanomas now look like nevi
    d = paired_deltas(y, worse, p, HAM7, op, n_boot=100)["metrics"]
    assert d["sensitivity"]["value"] == -0.5 and d["sensitivity"]["ci_high"] < 0
    assert d["top1_agreement"]["value"] == 0.9


# ------------------------------------------------------------------------------------------ export + evaluate
@pytest.fixture(scope="module")
def exported_with_external(tmp_path_factory: pytest.TempPathFactory, external_root: Path, tiny_run: Path, tiny_bundle):
    pytest.importorskip("onnxruntime")
    from export.api import export_model

    tmp = tmp_path_factory.mktemp("extexport")
    bundle, run = tiny_bundle, tiny_run  # conftest's: make_tiny_checkpoint on synthetic_bundle() (read-only)
    ext = load_dataset("isic-archive:isic_ext", root=external_root)
    out = tmp / "out"
    report = export_model(run, out, "onnx", "fp32,int8", dataset=bundle, calib_samples=50, external=ext)
    return run, out, report


def test_export_writes_internal_and_external_figures_with_cis(exported_with_external):
    from lesionlite.manifest import read_manifest

    _, out, report = exported_with_external
    ev = report.source["evidence"]
    assert ev["operating_point"]["chosen_on"] == "val" and set(ev["sets"]) == {"internal", "external"}
    assert ev["sets"]["external"]["n"] == 36
    ext = report.source["clinical"]["external"]["metrics"]["melanoma_auc"]
    assert ext["ci_low"] <= ext["value"] <= ext["ci_high"]
    for a in report.artifacts:
        assert set(a.clinical) == {"internal", "external"}
        assert "vs_pytorch" in a.clinical["external"]
        m = read_manifest(out / a.name)
        assert m.calibration["operating_point"]["threshold"] == ev["operating_point"]["threshold"]
        assert m.metrics["external_melanoma_auc"]["value"] == a.clinical["external"]["metrics"]["melanoma_auc"]["value"]
    md = (out / "export_report.md").read_text()
    assert "External: isic-archive:isic_ext" in md and "Operating point: refer when P(mel | mel or nv)" in md
    card = (out / "MODEL_CARD.md").read_text()
    assert "External: isic-archive:isic_ext" in card and "External site, PyTorch model, by sex" in card
    for text in (md, card):  # every table row has as many cells as its header (no stray "|" in a title)
        assert_tables_well_formed(text)
    assert "tiny_cnn_onnx_int8:" in card  # the one-line verdict per compressed artifact
    assert "SYNTHETIC TRAINING DATA" in md


def test_external_none_turns_it_off_and_a_non_external_spec_is_refused(exported_with_external, tmp_path: Path):
    from tiny_checkpoint import synthetic_bundle

    from export.api import export_model

    run, _, _ = exported_with_external
    r = export_model(run, tmp_path / "o", "onnx", "fp32", dataset=synthetic_bundle(), calib_samples=20, external="none")
    assert set(r.source["evidence"]["sets"]) == {"internal"}
    assert any("turned off" in n for n in r.source["evidence"]["notes"])
    with pytest.raises(LesionliteError, match="not an external"):
        export_model(run, tmp_path / "p", "onnx", "fp32", dataset=synthetic_bundle(), calib_samples=20,
                     external=synthetic_bundle())


def test_evaluate_an_artifact_reproduces_an_independent_auc(exported_with_external, external_root: Path, tmp_path: Path):
    """``lesionlite evaluate`` on the ONNX artifact: its melanoma AUC equals a plain loop's (own preprocessing, ORT)."""
    import onnxruntime as ort

    from lesionlite.cli import main
    from lesionlite.manifest import read_manifest
    from lesionlite.preprocessing import preprocess

    _, out, report = exported_with_external
    art = out / "tiny_cnn_onnx_fp32"
    rc = main(["evaluate", str(art), "--data", "isic-archive:isic_ext", "--data-root", str(external_root),
               "--out", str(tmp_path / "ev"), "--n-boot", "100", "--no-progress"])
    assert rc == 0
    doc = json.loads((tmp_path / "ev" / art.name / "evaluation.json").read_text())
    assert (tmp_path / "ev" / art.name / "evaluation.md").is_file() and (tmp_path / "ev" / "evaluation_summary.md").is_file()
    assert (tmp_path / "ev" / art.name / "evaluation.png").is_file()
    assert doc["data"]["external"] and doc["model"]["synthetic_training_data"]
    # independent: read the files, preprocess, run onnxruntime, count pairs
    m = read_manifest(art)
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    import csv

    rows = list(csv.DictReader(open(external_root / "isic_ext" / "labels.csv")))
    x = np.stack([preprocess(Image.open(external_root / "isic_ext" / r["file"]).convert("RGB"), m.preprocessing) for r in rows])
    z = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0] / m.temperature
    mel_p = np.exp(z[:, 4]) / np.exp(z).sum(1)
    is_mel = np.array([r["isic2019_dx"] == "MEL" for r in rows])
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in mel_p[is_mel] for b in mel_p[~is_mel]]
    assert doc["clinical"]["metrics"]["melanoma_auc"]["value"] == pytest.approx(np.mean(pairs), abs=1e-6)
    assert doc["predictions"]["mel_prob"] == pytest.approx(mel_p.tolist(), abs=1e-5)
    # and the same figure export wrote for this artifact
    a = next(a for a in report.artifacts if a.name == art.name)
    assert a.clinical["external"]["metrics"]["melanoma_auc"]["value"] == pytest.approx(np.mean(pairs), abs=1e-6)


def test_evaluate_names_a_folder_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from lesionlite.cli import main

    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the real files
def test_the_real_external_set_when_present():
    root = real_data_root()
    if root is None or not (root / "isic2017_msk_256" / "labels.csv").is_file():
        pytest.skip("the real ISIC 2017 external set is not under the data root")
    b = load_dataset("isic-archive", root=root)
    counts = dict(zip(ISIC2019_CLASSES, b.test.class_counts()))
    assert (counts["MEL"], counts["NV"], counts["BKL"], len(b.test)) == (263, 933, 106, 1302)
    assert "metadata joined from ISIC_2019_Training_Metadata.csv for 1302/1302" in b.source
    assert sum(1 for a in b.test.attributes if a["sex"]) > 1000


# ------------------------------------------------------------------------------------------ lesionlite adapt
def test_adapt_never_measures_on_the_images_it_adapted_on(external_root: Path, tmp_path: Path):
    pytest.importorskip("torch")
    from tiny_checkpoint import make_tiny_checkpoint, synthetic_bundle

    from distill.adapt import AdaptConfig, adapt, site_split
    from export.evaluate import evaluate
    from lesionlite.manifest import read_manifest

    run = make_tiny_checkpoint(tmp_path / "run", synthetic_bundle(),
                               data={"name": "synthetic", "spec": "synthetic", "synthetic": True})
    spec = "isic-archive:isic_ext"
    info = adapt(run, spec, tmp_path / "bn", AdaptConfig(method="bn"), data_root=str(external_root), progress=False)
    assert info["batchnorm_layers"] > 0 and info["pool_images"] + len(info["held_out_ids"]) == 36
    assert not set(info["adapted_on_ids"]) & set(info["held_out_ids"])
    # lesions stay whole: both images of a lesion fall on one side
    site = load_dataset(spec, root=external_root)
    pool, held = site_split(list(site.test.ids), site.test.groups, 0.5)
    sides = {}
    for side, idx in (("pool", pool), ("held", held)):
        for i in idx:
            sides.setdefault(site.test.groups[i], set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    doc = evaluate(tmp_path / "bn", spec, str(external_root), n_boot=20, progress=False)
    assert doc["data"]["n"] == len(info["held_out_ids"])  # evaluated on the held-out images only
    assert set(doc["predictions"]["ids"]) == set(info["held_out_ids"])
    assert read_manifest(tmp_path / "bn").extra["adaptation"]["method"] == "bn"
    ft = adapt(run, spec, tmp_path / "ft", AdaptConfig(method="finetune", labelled=6, epochs=1),
               data_root=str(external_root), progress=False)
    assert ft["labelled_images"] >= 3 and set(ft["labelled_ids"]) <= set(ft["adapted_on_ids"])
    with pytest.raises(LesionliteError, match="unknown adaptation method"):
        adapt(run, spec, tmp_path / "x", AdaptConfig(method="magic"), data_root=str(external_root))


def test_evaluate_a_probabilities_tflite_matches_export(exported_with_external, external_root: Path, tmp_path: Path):
    """A TFLite artifact (softmax in the graph): evaluate's figures equal what export measured for it."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    from tiny_checkpoint import synthetic_bundle

    from export.api import export_model
    from export.evaluate import evaluate

    run, _, _ = exported_with_external
    ext = load_dataset("isic-archive:isic_ext", root=external_root)
    report = export_model(run, tmp_path / "t", "tflite", "fp32,int8", dataset=synthetic_bundle(), calib_samples=40, external=ext)
    for a in report.artifacts:
        doc = evaluate(a.path, "isic-archive:isic_ext", str(external_root), n_boot=20, progress=False)
        assert doc["clinical"]["metrics"]["melanoma_auc"]["value"] == pytest.approx(
            a.clinical["external"]["metrics"]["melanoma_auc"]["value"], abs=0.02)
        assert doc["clinical"]["metrics"]["accuracy"]["value"] == pytest.approx(
            a.clinical["external"]["metrics"]["accuracy"]["value"], abs=0.03)


def test_evaluate_with_flip_tta_averages_the_four_flips(exported_with_external, external_root: Path):
    from export.evaluate import evaluate, load_predictor

    _, out, _ = exported_with_external
    art = out / "tiny_cnn_onnx_fp32"
    doc = evaluate(art, "isic-archive:isic_ext", str(external_root), n_boot=10, progress=False, tta="flips")
    assert doc["data"]["tta"] == "flips"
    pred = load_predictor(art)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    plain = [pred.probabilities(np.ascontiguousarray(v))[0] for v in (x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1])]
    pred.tta = "flips"
    np.testing.assert_allclose(pred.probabilities(x)[0], np.mean(plain, axis=0), atol=1e-9)
    with pytest.raises(LesionliteError, match="test-time augmentation"):
        evaluate(art, "isic-archive:isic_ext", str(external_root), tta="rotations")


def test_evaluate_an_artifact_runs_without_torch(exported_with_external, external_root: Path):
    """``lesionlite evaluate`` on an exported artifact needs no torch (serve's runtimes run it)."""
    import subprocess
    import sys

    _, out, report = exported_with_external
    art = out / "tiny_cnn_onnx_fp32"
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lesionlite.cli import main\n"
        f"rc = main(['evaluate', {str(art)!r}, '--data', 'isic-archive:isic_ext', '--data-root', {str(external_root)!r},"
        " '--n-boot', '20', '--no-progress'])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    auc = next(a for a in report.artifacts if a.name == art.name).clinical["external"]["metrics"]["melanoma_auc"]["value"]
    assert f"{auc:.3f}" in proc.stdout


def assert_tables_well_formed(markdown: str) -> None:
    """Each Markdown table's rows split into as many cells as its header row."""
    width = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = len(line.replace("\\|", "").split("|"))
        if width is None:
            width = cells
        assert cells == width, f"table row with {cells - 2} cells under a header of {width - 2}: {line}"
