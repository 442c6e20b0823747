"""Dataset loaders: synthetic, DermaMNIST npz, HAM10000, ISIC 2019, image folders, errors.

Everything runs on small generated data; the real-data checks run when the data setting
(LESIONLITE_DATA, else ../shared/data) holds the files and skip with the reason otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _fixtures_data import make_ham, make_imagefolder, make_isic2019, make_npz, real_data_root, write_csv
from PIL import Image

from distill.data import DERMAMNIST_CLASSES, ISIC2019_CLASSES, load_dataset, parse_spec
from distill.data.splits import grouped_stratified_split
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import ImageDecodeError

REAL = real_data_root()


def _split_groups(bundle) -> list[set[str]]:
    return [set(bundle.split(s).groups) for s in ("train", "val", "test")]


# ------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_and_marked() -> None:
    a = load_dataset("synthetic", seed=3, synthetic_size=32)
    b = load_dataset("synthetic", seed=3, synthetic_size=32)
    c = load_dataset("synthetic", seed=4, synthetic_size=32)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.labels, b.test.labels)
    assert (len(a.train), len(a.val), len(a.test)) == (280, 70, 140)
    assert a.synthetic and a.name == "synthetic" and "SYNTHETIC" in a.source
    assert a.class_names == DERMAMNIST_CLASSES and a.native_size == 32
    img, y = a.train[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    assert isinstance(y, int) and 0 <= y < 7
    counts = a.train.class_counts()
    assert len(counts) == 7 and sum(counts) == 280 and min(counts) > 0
    assert load_dataset("synthetic:48").native_size == 48


def test_synthetic_classes_are_learnable() -> None:
    """Class mean images differ, and even a nearest-centroid rule on colour statistics beats chance by far."""
    b = load_dataset("synthetic", synthetic_size=32)

    def feats(ds):
        x = ds.images.astype(np.float32) / 255.0
        centre = x[:, 8:24, 8:24]
        return np.concatenate([centre.mean((1, 2)), centre.std((1, 2)), x.mean((1, 2))], 1)

    ftr, fte = feats(b.train), feats(b.test)
    cents = np.stack([ftr[b.train.labels == c].mean(0) for c in range(7)])
    dist = np.linalg.norm(cents[:, None] - cents[None], axis=-1)
    assert dist[~np.eye(7, dtype=bool)].min() > 0.02
    pred = np.argmin(np.linalg.norm(fte[:, None] - cents[None], axis=-1), axis=1)
    assert (pred == b.test.labels).mean() > 0.6


# ------------------------------------------------------------------ MedMNIST npz


def test_npz_loader_generated(tmp_path: Path) -> None:
    path = make_npz(tmp_path / "dermamnist" / "dermamnist.npz")
    b = load_dataset("dermamnist", root=tmp_path)
    assert (len(b.train), len(b.val), len(b.test)) == (70, 21, 35)
    assert b.train.class_counts() == [10] * 7 and b.class_names == DERMAMNIST_CLASSES
    assert b.native_size == 28 and not b.synthetic and "official" in b.source
    img, y = b.val[3]
    assert img.size == (28, 28) and img.mode == "RGB" and y == 3
    assert np.array_equal(np.asarray(img), np.load(path)["val_images"][3])
    import hashlib

    assert b.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    # same file by explicit path / bare path; a size that is not there → a clear error
    assert load_dataset(f"dermamnist:{path}").fingerprint == b.fingerprint
    assert load_dataset(str(path)).fingerprint == b.fingerprint
    with pytest.raises(LesionliteError, match="dermamnist_64.npz"):
        load_dataset("dermamnist:64", root=tmp_path)


def test_npz_lossy_rebuild_is_marked(tmp_path: Path) -> None:
    make_npz(tmp_path / "dermamnist_28_jpeg_reconstructed.npz")
    b = load_dataset("dermamnist", root=tmp_path)
    assert "lossy" in b.source.lower() and "lossy" in b.name and b.extra["lossy"]


def test_npz_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(LesionliteError, match="missing keys"):
        load_dataset(str(bad))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(LesionliteError, match="not a readable"):
        load_dataset(str(junk))
    (tmp_path / "emptyroot").mkdir()
    with pytest.raises(LesionliteError, match="DermaMNIST"):  # "not found; looked for …" (or a failed download)
        load_dataset("dermamnist", root=tmp_path / "emptyroot")  # a root without the file


def test_npz_real_dermamnist() -> None:
    cands = [REAL / "dermamnist" / n for n in ("dermamnist.npz", "dermamnist_28_jpeg_reconstructed.npz")] if REAL else []
    if not any(p.is_file() for p in cands):
        pytest.skip(f"no DermaMNIST npz under the data setting ({REAL or 'LESIONLITE_DATA unset, no ../shared/data'})")
    b = load_dataset("dermamnist", root=REAL)
    assert (len(b.train), len(b.val), len(b.test)) == (7007, 1003, 2005)
    assert b.train.class_counts() == [228, 359, 769, 80, 779, 4693, 99]
    assert b.test.class_counts() == [66, 103, 220, 23, 223, 1341, 29]
    assert b.train[0][0].size == (28, 28)


# ------------------------------------------------------------------ HAM10000


def test_ham10000_generated_split_by_lesion(tmp_path: Path) -> None:
    d = make_ham(tmp_path / "ham")
    b = load_dataset(f"ham10000:{d}", seed=1)
    n = sum(len(b.split(s)) for s in ("train", "val", "test"))
    assert n == len(list((d / "images").iterdir()))
    tr, va, te = _split_groups(b)
    assert not (tr & va) and not (tr & te) and not (va & te)
    for s in ("train", "val", "test"):
        assert min(b.split(s).class_counts()) > 0, f"a class is missing from {s}"
    assert len(b.train) > len(b.test) > len(b.val) * 0.8
    img, y = b.test[0]
    assert img.mode == "RGB" and 0 <= y < 7
    # seeded: same seed → same split; another seed → another split; data root lookup works too
    again = load_dataset("ham10000", root=tmp_path / "ham", seed=1)
    assert again.fingerprint == b.fingerprint and again.test.ids == b.test.ids
    assert load_dataset(f"ham10000:{d}", seed=2).fingerprint != b.fingerprint


def test_ham10000_train_exclude_dx_type_changes_the_training_split_only(tmp_path: Path) -> None:
    """Issue 28's case-mix option: follow-up nevi left out of training; validation and test unchanged (paired)."""
    d = make_ham(tmp_path / "ham", lesions_per_class=12)
    meta = (d / "HAM10000_metadata.csv").read_text().splitlines()
    rows = [meta[0]] + [line.replace(",nv,histo,", ",nv,follow_up,") if i % 2 else line
                        for i, line in enumerate(meta[1:])]
    (d / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    follow_up = {line.split(",")[1] for line in rows[1:] if ",follow_up," in line}
    assert follow_up
    plain = load_dataset(f"ham10000:{d}", seed=0)
    fewer = load_dataset(f"ham10000:{d}", seed=0, train_exclude_dx_type=["follow_up"])
    assert fewer.val.ids == plain.val.ids and fewer.test.ids == plain.test.ids
    assert set(fewer.train.ids) == set(plain.train.ids) - follow_up
    assert len(fewer.train) < len(plain.train) and fewer.fingerprint != plain.fingerprint
    assert "without dx_type follow_up" in fewer.source
    with pytest.raises(LesionliteError, match="'folow_up'.*not among"):
        load_dataset(f"ham10000:{d}", seed=0, train_exclude_dx_type=["folow_up"])
    with pytest.raises(LesionliteError, match="leaves no training image"):
        load_dataset(f"ham10000:{d}", seed=0, train_exclude_dx_type=["histo", "follow_up"])
    # a fraction of the follow-up lesions (all images of a kept lesion), seeded; 1 = all, 0 = none
    half = load_dataset(f"ham10000:{d}", seed=0, train_dx_type_fraction={"follow_up": 0.5})
    assert half.val.ids == plain.val.ids and half.test.ids == plain.test.ids
    kept = set(half.train.ids) & follow_up
    assert 0 < len(kept) < len(set(plain.train.ids) & follow_up)
    assert set(half.train.ids) - follow_up == set(plain.train.ids) - follow_up
    assert load_dataset(f"ham10000:{d}", seed=0, train_dx_type_fraction={"follow_up": 0.5}).train.ids == half.train.ids
    assert load_dataset(f"ham10000:{d}", seed=0, train_dx_type_fraction={"follow_up": 1}).fingerprint == plain.fingerprint
    none = load_dataset(f"ham10000:{d}", seed=0, train_dx_type_fraction={"follow_up": 0})
    assert none.fingerprint == fewer.fingerprint and none.train.ids == fewer.train.ids
    with pytest.raises(LesionliteError, match="not a fraction"):
        load_dataset(f"ham10000:{d}", seed=0, train_dx_type_fraction={"follow_up": 1.5})


def test_ham10000_isic8_labelling(tmp_path: Path) -> None:
    d = make_ham(tmp_path / "ham")
    b = load_dataset(f"ham10000-isic8:{d}")
    assert b.class_names == ISIC2019_CLASSES and b.name == "ham10000-isic8"
    total = np.sum([b.split(s).class_counts() for s in ("train", "val", "test")], axis=0)
    assert total[3] > 0 and total[7] > 0  # akiec became AK and SCC
    make_ham(tmp_path / "nolabels", with_labels_csv=False)
    with pytest.raises(LesionliteError, match="labels.csv"):
        load_dataset(f"ham10000-isic8:{tmp_path / 'nolabels'}")


def test_ham10000_image_split_is_per_image_and_says_so(tmp_path: Path) -> None:
    """The DermaMNIST-style comparison split: same images and counts, lesions may cross splits, and the
    bundle's name, fingerprint and description make it impossible to mistake for the lesion split."""
    d = make_ham(tmp_path / "ham", lesions_per_class=12)
    by_lesion = load_dataset(f"ham10000:{d}")
    per_image = load_dataset(f"ham10000-image-split:{d}")
    assert per_image.name == "ham10000-image-split" and "per image" in per_image.source
    assert per_image.fingerprint != by_lesion.fingerprint
    n = sum(len(per_image.split(s)) for s in ("train", "val", "test"))
    assert n == sum(len(by_lesion.split(s)) for s in ("train", "val", "test"))
    tr, _, te = _split_groups(per_image)
    assert tr & te, "a per-image split of lesions with 1-3 photos should put some lesion in train and test"
    # the lesion split is untouched by the new option (same fingerprint as an explicit split_by="lesion")
    assert load_dataset(f"ham10000:{d}", split_by="lesion").fingerprint == by_lesion.fingerprint
    with pytest.raises(LesionliteError, match="split_by"):
        load_dataset(f"ham10000:{d}", split_by="patient")


def test_ham10000_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(LesionliteError, match="not found"):
        load_dataset(f"ham10000:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LesionliteError, match="HAM10000_metadata.csv"):
        load_dataset(f"ham10000:{tmp_path / 'empty'}")
    d = make_ham(tmp_path / "ham", lesions_per_class=3)
    # bad columns
    meta = (d / "HAM10000_metadata.csv").read_text()
    (d / "HAM10000_metadata.csv").write_text(meta.replace("dx,", "diagnosis,", 1))
    with pytest.raises(LesionliteError, match="missing column"):
        load_dataset(f"ham10000:{d}")
    # unreadable / header-only CSVs
    (d / "HAM10000_metadata.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    with pytest.raises(LesionliteError, match="HAM10000_metadata.csv"):
        load_dataset(f"ham10000:{d}")
    write_csv(d / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"], [])
    with pytest.raises(LesionliteError, match="no rows"):
        load_dataset(f"ham10000:{d}")
    # unknown diagnosis
    (d / "HAM10000_metadata.csv").write_text(meta.replace(",nv,", ",zz,", 1))
    with pytest.raises(LesionliteError, match="unknown dx"):
        load_dataset(f"ham10000:{d}")
    # a listed image file is missing
    (d / "HAM10000_metadata.csv").write_text(meta)
    first = sorted((d / "images").iterdir())[0]
    first.unlink()
    with pytest.raises(LesionliteError, match="missing"):
        load_dataset(f"ham10000:{d}")
    # a corrupt image file: the loader is lazy, the error names the file when it is read
    first.write_bytes(b"\xff\xd8\xff garbage")
    b = load_dataset(f"ham10000:{d}")
    split = next(s for s in ("train", "val", "test") if first.stem in b.split(s).ids)
    ds = b.split(split)
    with pytest.raises(ImageDecodeError, match=first.name):
        ds[ds.ids.index(first.stem)]


def test_ham10000_real() -> None:
    d = REAL / "ham10000_200x150" if REAL else None
    if d is None or not (d / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"no ham10000_200x150/ under the data setting ({REAL or 'LESIONLITE_DATA unset, no ../shared/data'})")
    b = load_dataset("ham10000", root=REAL)
    sizes = [len(b.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 10015
    total = np.sum([b.split(s).class_counts() for s in ("train", "val", "test")], axis=0).tolist()
    assert total == [327, 514, 1099, 115, 1113, 6705, 142]
    tr, va, te = _split_groups(b)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 7470
    assert abs(sizes[0] / 10015 - 0.7) < 0.01 and abs(sizes[2] / 10015 - 0.2) < 0.01
    img, _ = b.val[0]
    assert img.size == (200, 150)
    b8 = load_dataset("ham10000-isic8", root=REAL)
    total8 = np.sum([b8.split(s).class_counts() for s in ("train", "val", "test")], axis=0).tolist()
    assert total8 == [1113, 6705, 514, 130, 1099, 115, 142, 197]


# ------------------------------------------------------------------ ISIC 2019, image folders


def test_isic2019_one_hot_unk_dropped_and_grouped(tmp_path: Path) -> None:
    d = make_isic2019(tmp_path / "isic")
    b = load_dataset(f"isic2019:{d}")
    assert b.class_names == ISIC2019_CLASSES
    total = np.sum([b.split(s).class_counts() for s in ("train", "val", "test")], axis=0).tolist()
    assert total == [6] * 8  # the 3 UNK rows are gone
    assert "grouped by lesion_id" in b.source
    groups = [set(g for g in b.split(s).groups if g) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    (d / "ISIC_2019_Training_Metadata.csv").unlink()
    assert "stratified" in load_dataset(f"isic2019:{d}").source
    # a non-one-hot row is refused
    gt = d / "ISIC_2019_Training_GroundTruth.csv"
    lines = gt.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1.0,1.0,0,0,0,0,0,0,0"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(LesionliteError, match="one-hot"):
        load_dataset(f"isic2019:{d}")
    with pytest.raises(LesionliteError, match="needs a path"):
        load_dataset("isic2019")


def test_imagefolder_layouts(tmp_path: Path) -> None:
    flat = make_imagefolder(tmp_path / "flat", per_class=10)
    b = load_dataset(f"imagefolder:{flat}")
    assert b.class_names == ["benign", "malignant", "other"]
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [21, 3, 6]
    assert load_dataset(str(flat)).fingerprint == b.fingerprint  # bare folder path is detected
    split = make_imagefolder(tmp_path / "split", per_class=5, split_layout=True)
    b2 = load_dataset(f"imagefolder:{split}")
    assert [len(b2.split(s)) for s in ("train", "val", "test")] == [15, 9, 12]
    assert b2.test.class_counts() == [4, 4, 4]
    (tmp_path / "one" / "onlyclass").mkdir(parents=True)
    with pytest.raises(LesionliteError, match="at least 2 class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'one'}")


# ------------------------------------------------------------------ specs, root, splits, views


def test_spec_errors_and_root_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LesionliteError, match="unknown dataset"):
        load_dataset("cifar10")
    with pytest.raises(LesionliteError, match="empty dataset spec"):
        parse_spec("")
    assert parse_spec("ham10000-isic8") == ("ham10000-isic8", None)
    assert parse_spec("dermamnist:64") == ("dermamnist", "64")
    make_ham(tmp_path / "ham10000", lesions_per_class=3)
    monkeypatch.setenv("LESIONLITE_DATA", str(tmp_path))
    assert load_dataset("ham10000").extra["dir"] == str(tmp_path / "ham10000")
    monkeypatch.setenv("LESIONLITE_DATA", str(tmp_path / "missing"))
    with pytest.raises(LesionliteError, match="LESIONLITE_DATA"):
        load_dataset("ham10000")
    with pytest.raises(LesionliteError, match="data root"):
        load_dataset("ham10000", root=tmp_path / "missing")


def test_grouped_split_keeps_groups_and_proportions() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{i // 2}" for i in range(1000)]
    labels = np.repeat(rng.integers(0, 4, 500), 2)
    tr, va, te = grouped_stratified_split(labels, groups, seed=5)
    assert len(tr) + len(va) + len(te) == 1000
    sets = [set(groups[i] for i in ix) for ix in (tr, va, te)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert abs(len(tr) / 1000 - 0.7) < 0.02 and abs(len(te) / 1000 - 0.2) < 0.02
    again = grouped_stratified_split(labels, groups, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))


def test_multiview_dataset_and_collate() -> None:
    import torch

    from distill.methods.base import Batch
    from distill.transforms import MultiViewDataset, collate_views, eval_transform, train_transform
    from lesionlite.preprocessing import PreprocessConfig

    b = load_dataset("synthetic", synthetic_size=32, synthetic_counts=(14, 7, 7))
    cfg = PreprocessConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    mv = MultiViewDataset(b.train, train_transform(cfg), num_views=2, view_mode="independent")
    views, y, idx = mv[3]
    assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32 and idx == 3 and y == b.train.labels[3]
    batch = collate_views([mv[i] for i in range(4)])
    assert isinstance(batch, Batch) and batch.images.shape == (4, 2, 3, 32, 32)
    assert batch.labels.dtype == torch.long and batch.indices.tolist() == [0, 1, 2, 3]
    # rotations: view k is the image turned k*90° (exact with no augmentation at the native size)
    rot = MultiViewDataset(b.train, eval_transform(cfg), num_views=4, view_mode="rotations")
    v = rot[0][0]
    for k in range(4):
        assert torch.equal(v[k], torch.rot90(v[0], k, dims=(1, 2)))
    # and with augmentation the vertical flip is switched off (it would alias a 180° turn)
    assert MultiViewDataset(b.train, train_transform(cfg), 4, "rotations").transform.vertical_flip is False
    with pytest.raises(LesionliteError):
        MultiViewDataset(b.train, eval_transform(cfg), 5, "rotations")
