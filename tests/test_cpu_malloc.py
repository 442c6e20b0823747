"""lesionlite.cpu_malloc: applied once on glibc, off by environment, and numerically neutral."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lesionlite import cpu_malloc

TRAIN = r"""
import hashlib, sys, torch, torch.nn.functional as F
from lesionlite.cpu_malloc import tune_glibc_malloc
print("applied", tune_glibc_malloc())
from distill.models import build_model
torch.set_num_threads(1); torch.manual_seed(0)
m = build_model("tiny_cnn", num_classes=7).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
for _ in range(3):
    x = torch.randn(64, 3, 96, 96)  # 7 MB input: large buffers that glibc would otherwise mmap
    loss = F.cross_entropy(m(x), torch.randint(0, 7, (64,)))
    opt.zero_grad(); loss.backward(); opt.step()
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()
print("weights", h)
"""


def _train(env_value: str) -> tuple[str, str]:
    env = dict(os.environ, LESIONLITE_MALLOC_TUNING=env_value, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    return lines["applied"], lines["weights"]


def test_tuning_is_applied_on_glibc_and_leaves_training_bit_identical() -> None:
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only; elsewhere tune_glibc_malloc is a no-op")
    applied_on, weights_on = _train("1")
    applied_off, weights_off = _train("0")
    assert "M_MMAP_THRESHOLD" in applied_on and "M_TRIM_THRESHOLD" in applied_on and "M_TOP_PAD" in applied_on
    assert applied_off == "None"
    assert weights_on == weights_off


def test_off_switch_and_missing_mallopt_are_no_ops(monkeypatch) -> None:
    monkeypatch.setattr(cpu_malloc, "_applied", None)
    monkeypatch.setenv(cpu_malloc.ENV_VAR, "off")
    assert cpu_malloc.tune_glibc_malloc() is None
    monkeypatch.setenv(cpu_malloc.ENV_VAR, "1")
    monkeypatch.setattr(cpu_malloc.ctypes.util, "find_library", lambda name: None)  # no C library found
    assert cpu_malloc.tune_glibc_malloc() is None


SERVE = r"""
import sys
from lesionlite import cpu_malloc
from serve.app import create_app
create_app(sys.argv[1])
print(sorted(cpu_malloc._applied or {}))
"""


def test_serve_applies_the_tuning_when_it_builds_its_app(models_dir) -> None:
    """serve's per-request image buffers (the OOD statistics of a large phone input) stay in the heap too."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only; elsewhere tune_glibc_malloc is a no-op")
    env = dict(os.environ, LESIONLITE_MALLOC_TUNING="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SERVE, str(models_dir)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(sorted(cpu_malloc.SETTINGS))
