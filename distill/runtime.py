"""Seeds, devices and worker counts for a training run (no model or data code here).

Every epoch reseeds python / numpy / torch and the loader from ``(run.seed, epoch, rank)`` with
:func:`derive_seed`, which is what makes an interrupted and resumed CPU run bit-identical to an
uninterrupted one.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch

from lesionlite import cpus
from lesionlite.cpu_malloc import tune_glibc_malloc
from lesionlite.errors import LesionliteError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    """DataLoader worker seeding: python and numpy from the worker's torch seed (torch seeds itself)."""
    s = torch.initial_seed() % (2**32)
    random.seed(s)
    np.random.seed(s)


def resolve_device(spec: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LesionliteError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if distributed:
            return torch.device("cuda", local_rank)
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LesionliteError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    return torch.device("cpu")


def resolve_workers(workers: int | None, device: torch.device, threads: int | None) -> int:
    """``data.workers``, with None resolved: CUDA min(8, cores); CPU the cores left by the torch threads.

    Cores are those this process may run on (:func:`lesionlite.cpus.usable_cpu_count`): under ``taskset`` or a
    container cpuset a worker sized from the machine's count would share the training thread's core."""
    if workers is not None:
        return int(workers)

    cores = cpus.usable_cpu_count()  # looked up on the module: tests patch it there
    if device.type == "cuda":
        return min(8, cores)
    return max(0, min(4, cores - (threads or torch.get_num_threads())))


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU bf16 was not faster on the hosts measured)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked (also on CUDA); otherwise cuDNN autotuning and TF32 on CUDA; on CPU,
    glibc malloc kept from re-faulting large buffers every step (:mod:`lesionlite.cpu_malloc`)."""
    if device.type == "cpu":
        tune_glibc_malloc()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
