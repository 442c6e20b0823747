"""DDP: a 2-process CPU run (torchrun, gloo) completes and only rank 0 writes the run directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.ddp import DistInfo, ShardSampler, all_reduce_sum, any_rank, broadcast_object

REPO = Path(__file__).resolve().parents[1]


def test_single_process_helpers_are_no_ops() -> None:
    info = DistInfo()
    assert not info.enabled and info.is_main
    assert all_reduce_sum([1.0, 2.0], info) == [1.0, 2.0]
    assert broadcast_object({"a": 1}, info) == {"a": 1}
    assert any_rank(False, info) is False


def test_shard_sampler_covers_every_index_once() -> None:
    shards = [list(ShardSampler(11, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "distill",
           "--data", "synthetic", "--image-size", "16", "--model", "tiny_cnn", "--epochs", "1", "--batch-size", "8",
           "--workers", "0", "--device", "cpu", "--no-progress", "--set", "run.threads=1",
           "--set", "data.options={synthetic_counts: [84, 21, 21]}", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "× 2 processes" in text
    assert text.count("epoch 1/1") == 1  # only rank 0 logs
    for name in ("student.pt", "manifest.json", "metrics.json", "last.pt", "config.yaml", "curves.png"):
        assert (out / name).is_file(), name
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 writes
    rec = json.loads(lines[0])
    # each rank: 42 images -> 5 steps of 8 (tail dropped); the record counts both ranks' images
    assert rec["step"] == 5
    assert not list(out.glob(".*.tmp"))  # no half-written files left behind

    from distill.artifacts import load_student

    model, man = load_student(out)
    assert man.extra["method"] == "scratch" and man.num_classes == 7
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)
    # val metrics were computed on the whole val split (gathered from both ranks), not one shard
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["val"]["n"] == 21 and doc["test"]["n"] == 21
