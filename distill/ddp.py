"""Distributed data parallel helpers: ``torchrun --nproc_per_node=N -m distill ...`` just works.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and starts a process group (NCCL when the run uses CUDA, gloo
on CPU). Without them (``WORLD_SIZE`` unset or 1) everything degrades to a single process and the
helpers below are no-ops. Only rank 0 writes files and logs (``info.is_main``).

Semantics under DDP: ``optim.batch_size`` is per process (global batch = batch_size × world size);
each process sees a disjoint 1/world share of the training set per epoch (``DistributedSampler``,
reshuffled every epoch from ``run.seed``); evaluation is sharded too and the logits are gathered so
that every rank computes the same metrics (and takes the same early-stopping / LR decisions).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from lesionlite.errors import LesionliteError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(use_cuda: bool, timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group described by torchrun's environment, or return a single-process info."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise LesionliteError(
                f"DDP rank {rank} wants cuda:{local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc_per_node or pass --device cpu"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if use_cuda:
            kwargs["device_id"] = torch.device("cuda", local_rank)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # older torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:
            pass
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (pickled), in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a list of floats over ranks (float64, via CPU objects for gloo/nccl alike)."""
    if not info.enabled:
        return list(values)
    gathered = all_gather_objects([float(v) for v in values], info)
    return [float(sum(col)) for col in zip(*gathered)]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. a non-finite loss somewhere)."""
    if not info.enabled:
        return bool(flag)
    return any(all_gather_objects(bool(flag), info))


class ShardSampler(torch.utils.data.Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r+w, r+2w, …`` in order: no padding, no duplicates.

    Used for evaluation, where ``DistributedSampler``'s padding would count samples twice.
    """

    def __init__(self, n: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
