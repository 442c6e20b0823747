"""The training-speed features, by behaviour (speed itself: benchmarks/train_throughput.py):
the decode-once caches, the one-resampling rotation/crop, automatic loader workers, channels_last on
CPU, the loop's data-wait meter, and the paired bootstrap used by the CPU protocol's table."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import ArrayDataset
from distill.data.cache import CachedViewDataset, DecodedImageCache, TensorCache, downscale_to_short_side
from distill.metrics import balanced_accuracy, paired_bootstrap_balanced_accuracy_delta
from distill.runtime import resolve_workers
from distill.transforms import RandomRotatedResizedCrop, eval_transform, train_transform
from lesionlite.preprocessing import PreprocessConfig


def _images(n: int = 6, h: int = 150, w: int = 200) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), [i % 3 for i in range(n)], 3)


def test_tensor_cache_is_bit_identical_to_the_eval_transform():
    ds = _images()
    tf = eval_transform(PreprocessConfig(input_size=32))
    cache = TensorCache(ds, tf)
    for i in range(len(ds)):
        t, y = cache[i]
        assert torch.equal(t, tf(ds[i][0])) and y == ds[i][1]
    views, y, idx = CachedViewDataset(cache)[2]
    assert views.shape == (1, 3, 32, 32) and (y, idx) == (ds[2][1], 2)
    assert cache.nbytes == len(ds) * 3 * 32 * 32 * 4


def test_decoded_cache_downscales_the_shorter_side_and_never_enlarges():
    ds = _images()
    cache = DecodedImageCache(ds, short_side=64)
    img, y = cache[1]
    assert img.size == (85, 64) and img.mode == "RGB" and y == ds[1][1]  # 200x150 -> 85x64 (aspect kept)
    assert DecodedImageCache(ds, short_side=500)[0][0].size == (200, 150)
    assert np.array_equal(np.asarray(DecodedImageCache(ds, None)[3][0]), ds.images[3])  # None: exact pixels
    assert downscale_to_short_side(Image.new("RGB", (10, 40)), 5).size == (5, 20)


def test_rotated_resized_crop_without_rotation_or_crop_is_a_plain_resize():
    rng = np.random.default_rng(1)
    # a smooth image, so that the 2x-then-box resampling and PIL's resize agree to within a grey level
    yy, xx = np.mgrid[0:150, 0:200]
    arr = np.stack([(xx * 1.2) % 256, (yy * 1.5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    img = Image.fromarray(arr)
    out = RandomRotatedResizedCrop(64, degrees=0, scale=(1, 1), ratio=(200 / 150, 200 / 150))(img)
    ref = img.resize((64, 64), Image.BILINEAR)
    assert out.size == (64, 64)
    assert np.abs(np.asarray(out, float) - np.asarray(ref, float)).mean() < 2.0
    del rng


def test_rotated_resized_crop_never_shows_fill_corners():
    img = Image.new("RGB", (200, 150), (200, 100, 50))  # a flat image: any black pixel is fill
    torch.manual_seed(0)
    aug = RandomRotatedResizedCrop(32, degrees=30, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3))
    for _ in range(50):
        arr = np.asarray(aug(img)).astype(int)
        assert arr.shape == (32, 32, 3)
        assert np.abs(arr - [200, 100, 50]).max() <= 1


def test_train_transform_output_shape_and_determinism_under_seed():
    pre = PreprocessConfig(input_size=48)
    tf = train_transform(pre, "default")
    img = _images()[0][0]
    torch.manual_seed(3)
    a = tf(img)
    torch.manual_seed(3)
    b = tf(img)
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32 and torch.equal(a, b)


def test_workers_auto_leaves_the_training_threads_their_cores(monkeypatch):
    monkeypatch.setattr("lesionlite.cpus.usable_cpu_count", lambda: 2)
    assert resolve_workers(None, torch.device("cpu"), 2) == 0  # 2 cores, 2 torch threads: no worker
    monkeypatch.setattr("lesionlite.cpus.usable_cpu_count", lambda: 16)
    assert resolve_workers(None, torch.device("cpu"), 4) == 4
    assert resolve_workers(None, torch.device("cuda"), None) == 8
    assert resolve_workers(3, torch.device("cpu"), 2) == 3  # an explicit value wins


def test_workers_auto_counts_the_cores_the_process_may_use_not_the_machines(monkeypatch):
    """Pinned to one core of two (taskset -c 0), one torch thread leaves no core for a loader worker."""
    from lesionlite.cpus import usable_cpu_count

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cpu_count() == 1
    assert resolve_workers(None, torch.device("cpu"), 1) == 0
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # no affinity API (macOS): the machine's count
    assert usable_cpu_count() == 2


def test_paired_bootstrap_identical_methods_give_zero_and_a_better_one_a_positive_ci():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    noisy = [np.where(rng.random(400) < 0.5, y, rng.integers(0, 4, 400)) for _ in range(2)]
    same = paired_bootstrap_balanced_accuracy_delta(y, noisy, noisy, 4, n_boot=300)
    assert same["delta"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0 and same["seeds"] == 2
    better = [np.where(rng.random(400) < 0.9, y, p) for p in noisy]  # mostly fixed errors
    res = paired_bootstrap_balanced_accuracy_delta(y, better, noisy, 4, n_boot=300)
    expect = np.mean([balanced_accuracy(y, b, 4) - balanced_accuracy(y, n, 4) for b, n in zip(better, noisy)])
    assert res["delta"] == pytest.approx(expect) and res["per_seed"][0] > 0
    assert 0 < res["ci_low"] < res["delta"] < res["ci_high"]
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap_balanced_accuracy_delta(y, noisy, noisy[:1], 4)


def test_loop_runs_channels_last_on_cpu_and_meters_data_waits(tmp_path):
    from distill.config import resolve_config
    from distill.train import train

    cfg = resolve_config(flags={"method.name": "scratch", "data.name": "synthetic", "data.image_size": 32,
                                "data.options": {"synthetic_counts": [40, 14, 14]}, "model.arch": "tiny_cnn",
                                "run.epochs": 1, "run.device": "cpu", "run.threads": 1, "run.progress": False,
                                "run.plots": False, "optim.batch_size": 8, "run.out": str(tmp_path / "r")})
    res = train(cfg)
    rec = res.history[0]
    assert 0 <= rec["data_time_s"] <= rec["time_s"]
    assert rec["compute_images_per_s"] >= rec["images_per_s"] > 0
    assert "data cache:" in (tmp_path / "r" / "train.log").read_text()


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_linear_color_jitter_matches_torchvision_on_each_linear_operation(op):
    from torchvision.transforms import functional as TF

    from distill.transforms import LinearColorJitter

    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(30, 220, (40, 40, 3), dtype=np.uint8))  # no clipping either way
    jit = LinearColorJitter(**{op: 0.2})
    torch.manual_seed(7)
    _, _, steps = jit.params()
    (name, factor), = steps
    torch.manual_seed(7)
    ours = jit(img).astype(int)
    ref = np.asarray({"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                      "saturation": TF.adjust_saturation}[op](img, factor)).astype(int)
    assert name == op and 0.8 <= factor <= 1.2
    assert np.abs(ours - ref).max() <= 2  # PIL rounds its own grey image and blends in uint8


def test_linear_color_jitter_small_hue_shift_turns_colours_as_torchvision_does():
    from torchvision.transforms import functional as TF

    from distill.transforms import LinearColorJitter

    img = Image.new("RGB", (8, 8), (180, 90, 80))  # a reddish skin tone
    jit = LinearColorJitter(hue=0.02)
    torch.manual_seed(11)
    (_, h), = jit.params()[2]
    torch.manual_seed(11)
    ours = jit(img)[0, 0].astype(int)
    ref = np.asarray(TF.adjust_hue(img, h))[0, 0].astype(int)
    base = np.array([180, 90, 80])
    moved, ref_moved = ours - base, ref - base
    assert np.sign(moved[1]) == np.sign(ref_moved[1]) != 0  # green, the channel HSV moves, moves the same way
    assert 0.5 <= np.abs(moved).sum() / np.abs(ref_moved).sum() <= 2.0  # by a similar amount
    assert LinearColorJitter()(img).tolist() == np.asarray(img).tolist()  # all off: unchanged


def test_throughput_benchmark_measures_a_native_size_teacher_under_the_loops_allocator(tmp_path):
    """benchmarks/train_throughput.py: ``--teacher-image-size`` larger than the student's makes the KD run
    distil at the teacher's native input (as the cpu protocol), and the bare loop runs under the same
    allocator settings the project's loop applies."""
    import json
    import os

    from benchmarks import train_throughput
    from lesionlite import cpu_malloc

    rc = train_throughput.main([
        "--data", "synthetic", "--model", "tiny_cnn", "--teacher-arch", "tiny_cnn", "--image-size", "32",
        "--teacher-image-size", "48", "--batch-size", "8", "--threads", "1", "--steps", "1",
        "--epochs", "1", "--methods", "scratch,kd", "--out", str(tmp_path), "--name", "t.json"])
    assert rc == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["teacher_image_size"] == 48
    loops = {r["method"]: r for r in res["loops"]}
    assert loops["kd"]["teacher_input"] == "native" and loops["scratch"]["teacher_input"] is None
    assert loops["kd"]["cost_per_image_vs_scratch"] > 0
    import platform

    if platform.libc_ver()[0] == "glibc" and os.environ.get(cpu_malloc.ENV_VAR, "1") != "0":
        assert res["malloc"]["tuned"] is True
        assert res["malloc"]["settings"] == {k: v for k, (_, v) in cpu_malloc.SETTINGS.items()}
    else:
        assert res["malloc"] == {"tuned": False, "settings": {}}
