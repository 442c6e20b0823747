"""Building one training run (:func:`build_run`): data, student, teacher, loaders, method, optimizer.

The pieces are built in a fixed order (data, then the seeded student, teacher, loaders and method),
because the global RNG they draw from is part of what makes two runs with the same seed identical.
Preprocessing: mean/std come from ``--weights`` (what the file expects), else from the teacher (a
random-init student may as well share it), else ImageNet's; when student and teacher preprocessing
still differ (normalisation or input size) the teacher's inputs are re-normalised and resized on the
fly by a forward pre-hook. With ``model.teacher_input=native`` and a teacher with a larger input, the
training views are made at the teacher's size and the student gets their antialiased downscale.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill import ddp
from distill.artifacts import load_student
from distill.config import TrainConfig
from distill.data import load_dataset
from distill.data.base import DatasetBundle, refuse_evaluation_only
from distill.data.cache import CachedViewDataset, DecodedImageCache, TensorCache
from distill.methods.base import MethodContext, missing_teacher_error
from distill.methods.registry import get_method
from distill.models import build_model
from distill.optim import build_optimizer, build_scheduler
from distill.runtime import configure_backends, resolve_workers, seed_everything, worker_init
from distill.transforms import MultiViewDataset, collate_views, eval_transform, train_transform
from distill.weights import load_imagenet_weights, recalibrate_folded_bn
from lesionlite.errors import LesionliteError
from lesionlite.manifest import read_manifest
from lesionlite.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

log = logging.getLogger("distill.train")

#: images whose BatchNorm input statistics unfold BN-folded ImageNet weights (model.folded_bn=recalibrate)
BN_CALIBRATION_IMAGES = 512


@dataclass
class Student:
    model: nn.Module
    pre: PreprocessConfig
    weights_note: str
    weights_meta: dict[str, Any] | None


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    sampler: torch.utils.data.DistributedSampler
    generator: torch.Generator  # reseeded every epoch (exact resume)
    val: torch.utils.data.DataLoader
    test: torch.utils.data.DataLoader | None
    steps_per_epoch: int
    downscale_hook: Any  # the student's downscale pre-hook (teacher_input=native), removed before evaluation


@dataclass
class Run:
    """Everything one training run is made of; built once by :func:`build_run`."""

    cfg: TrainConfig
    info: ddp.DistInfo
    device: torch.device
    run_dir: Path
    amp: bool
    channels_last: bool
    method_cls: Any
    bundle: DatasetBundle
    student: nn.Module
    pre: PreprocessConfig
    weights_note: str
    weights_meta: dict[str, Any] | None
    teacher: nn.Module | None
    tman: Any
    loaders: Loaders
    method: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sched_when: str

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)


def build_run(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device, run_dir: Path,
              ckpt: dict[str, Any] | None) -> Run:
    """Data → student → teacher → loaders → method + optimizer + scheduler (``ckpt``: resuming)."""

    method_cls = get_method(cfg.method_name)
    amp = cfg.run.amp and device.type == "cuda"
    channels_last = cfg.run.channels_last  # measured faster on CPU too (benchmarks/train_throughput.py)
    configure_backends(cfg.run.deterministic, device)
    bundle = load_data(cfg, ckpt, run_dir)
    s = build_student(cfg, method_cls, bundle, ckpt, device, channels_last)
    teacher, tman = attach_teacher(cfg, method_cls, bundle, s.pre, device, channels_last)
    loaders = build_loaders(cfg, info, device, bundle, s, tman, method_cls)
    method, params, optimizer, scheduler, sched_when = build_method(cfg, info, device, bundle, s.model, teacher,
                                                                    method_cls, loaders.steps_per_epoch)
    return Run(cfg=cfg, info=info, device=device, run_dir=run_dir, amp=amp, channels_last=channels_last,
               method_cls=method_cls, bundle=bundle, student=s.model, pre=s.pre, weights_note=s.weights_note,
               weights_meta=s.weights_meta, teacher=teacher, tman=tman, loaders=loaders, method=method,
               params=params, optimizer=optimizer, scheduler=scheduler, sched_when=sched_when)


# ------------------------------------------------------------------------------------------------ data
def load_data(cfg: TrainConfig, ckpt: dict[str, Any] | None, run_dir: Path) -> Any:
    """The dataset bundle, checked (non-empty train/val; the same data a resumed run started on) and logged."""

    bundle = load_dataset(cfg.data.name, root=cfg.data.root, seed=cfg.data.split_seed,
                          synthetic_size=cfg.data.synthetic_size or cfg.data.image_size, **cfg.data.options)
    refuse_evaluation_only(bundle, "training, early stopping, model selection or temperature fitting")
    class_names = list(bundle.class_names)
    for split in ("train", "val"):
        if len(bundle.split(split)) == 0:
            raise LesionliteError(f"dataset {bundle.name!r} has an empty {split} split")
    if ckpt is not None and ckpt.get("data_fingerprint") not in (None, bundle.fingerprint):
        raise LesionliteError(
            f"cannot resume {run_dir}: dataset {bundle.name!r} is not the one the run started on "
            f"(fingerprint {bundle.fingerprint[:12]}… vs {str(ckpt['data_fingerprint'])[:12]}… in the checkpoint)"
        )
    train_counts = bundle.train.class_counts()
    tag = " [SYNTHETIC DATA]" if bundle.synthetic else ""
    log.info("data: %s%s — %s | train %d / val %d / test %d | %d classes, train counts %s",
             bundle.name, tag, bundle.source, len(bundle.train), len(bundle.val), len(bundle.test),
             len(class_names), dict(zip(class_names, train_counts)))
    missing = [c for c, n in zip(class_names, train_counts) if n == 0]
    if missing:
        log.warning("WARNING: classes with no training image: %s (weight 0, cannot be learned)", missing)
    return bundle


# ------------------------------------------------------------------------------------------------ student
def build_student(cfg: TrainConfig, method_cls: Any, bundle: DatasetBundle, ckpt: dict[str, Any] | None,
                  device: torch.device, channels_last: bool) -> Student:
    """The seeded student with its ImageNet weights (or the checkpoint's preprocessing when resuming)."""

    seed_everything(cfg.run.seed)
    dropout_kw = {} if cfg.model.dropout is None else {"dropout": cfg.model.dropout}
    model = build_model(cfg.model.arch, num_classes=len(bundle.class_names), **dropout_kw)
    if ckpt is not None:
        s = Student(model, PreprocessConfig.from_dict(ckpt["preprocessing"]),
                    str(ckpt.get("weights_note", "restored")), ckpt.get("weights_meta"))
    else:
        s = _initialise_student(cfg, method_cls, model)
    _prepare_folded_bn(cfg, s, bundle, fresh=ckpt is None)
    log.info("student: %s (%s), %.2fM parameters, input %dpx, mean %s std %s",
             cfg.model.arch, s.weights_note, sum(p.numel() for p in model.parameters()) / 1e6,
             s.pre.input_size, [round(v, 4) for v in s.pre.mean], [round(v, 4) for v in s.pre.std])
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return s


def _initialise_student(cfg: TrainConfig, method_cls: Any, model: nn.Module) -> Student:
    """Load ``--weights`` into a new student and choose its preprocessing (weights > teacher > ImageNet)."""
    mean, std, note = IMAGENET_MEAN, IMAGENET_STD, "random init"
    meta: dict[str, Any] | None = None
    teacher_pre = None
    if method_cls.needs_teacher and cfg.model.teacher:
        with contextlib.suppress(LesionliteError):
            teacher_pre = read_manifest(cfg.model.teacher).preprocessing
    if cfg.model.weights:
        winfo = load_imagenet_weights(model, cfg.model.weights) or {}
        mean = tuple(winfo.get("mean", IMAGENET_MEAN))
        std = tuple(winfo.get("std", IMAGENET_STD))
        note = f"ImageNet weights {cfg.model.weights}"
        meta = {k: winfo.get(k) for k in ("path", "sha256", "source", "normalization_source", "bn_folded")}
    elif teacher_pre is not None:  # a random-init student may as well share the teacher's normalisation
        mean, std = tuple(teacher_pre.mean), tuple(teacher_pre.std)
    pre = PreprocessConfig(input_size=cfg.data.image_size, resize_size=cfg.data.resize_size,
                           mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    return Student(model, pre, note, meta)


def _prepare_folded_bn(cfg: TrainConfig, s: Student, bundle: DatasetBundle, fresh: bool) -> None:
    """Weights with BatchNorm folded in: recalibrate, freeze or train BN as ``model.folded_bn`` says."""
    folded = bool((s.weights_meta or {}).get("bn_folded"))
    if folded and cfg.model.folded_bn == "recalibrate" and fresh:
        n_bn = recalibrate_folded_bn(s.model, _bn_calibration_batches(bundle.train, s.pre))
        log.info("weights have BatchNorm folded into the convolutions: recalibrated %d BatchNorm layers on "
                 "%d training images (model.folded_bn=recalibrate)", n_bn, BN_CALIBRATION_IMAGES)
    s.model.frozen_bn = folded and cfg.model.folded_bn == "freeze"
    if s.model.frozen_bn:
        log.info("weights have BatchNorm folded into the convolutions: BatchNorm kept in eval mode while "
                 "training (model.folded_bn=freeze)")
    elif folded and cfg.model.folded_bn == "train":
        log.warning("WARNING: weights have BatchNorm folded into the convolutions and model.folded_bn=train: "
                    "batch statistics will re-normalise the pretrained features")


def _bn_calibration_batches(ds: Any, pre: PreprocessConfig, batch: int = 64) -> Iterator[torch.Tensor]:
    """The first :data:`BN_CALIBRATION_IMAGES` of a fixed permutation of ``ds``, eval transform, on CPU.

    Deterministic (same images on every rank and every run of the same split), so DDP ranks agree.
    """

    tf = eval_transform(pre)
    order = np.random.default_rng(0).permutation(len(ds))[:BN_CALIBRATION_IMAGES]
    for i in range(0, len(order), batch):
        yield torch.stack([tf(ds[int(j)][0]) for j in order[i:i + batch]])


# ------------------------------------------------------------------------------------------------ teacher
def attach_teacher(cfg: TrainConfig, method_cls: Any, bundle: DatasetBundle, pre: PreprocessConfig, device: torch.device,
                   channels_last: bool) -> tuple[nn.Module | None, Any]:
    """The frozen teacher and its manifest when the method needs one (else ``(None, None)``)."""
    if not method_cls.needs_teacher:
        if cfg.model.teacher:
            log.warning("note: method %r does not use a teacher; --teacher %s is ignored", cfg.method_name,
                        cfg.model.teacher)
        return None, None
    teacher, tman = load_teacher(cfg, list(bundle.class_names), bundle.fingerprint, device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    if adapt_teacher_input(teacher, pre, tman.preprocessing):
        log.info("teacher expects %dpx mean %s std %s: its inputs are re-normalised/resized on the fly",
                 tman.preprocessing.input_size, list(tman.preprocessing.mean), list(tman.preprocessing.std))
    return teacher, tman


def load_teacher(cfg: TrainConfig, class_names: list[str], data_fingerprint: str,
                 device: torch.device) -> tuple[nn.Module, Any]:

    tdir = cfg.model.teacher
    if not tdir:
        raise missing_teacher_error(cfg.method_name)
    teacher, tman = load_student(tdir, map_location="cpu")
    if tman.num_classes != len(class_names):
        raise LesionliteError(
            f"teacher {tdir} predicts {tman.num_classes} classes ({', '.join(tman.class_names)}) but dataset "
            f"{cfg.data.name!r} has {len(class_names)} ({', '.join(class_names)}); train the teacher on the same dataset"
        )
    if list(tman.class_names) != list(class_names):
        raise LesionliteError(
            f"teacher {tdir} classes {tman.class_names} differ from the dataset's {class_names} "
            "(names or order); the teacher's logits would be matched to the wrong classes"
        )
    tfp = (tman.data or {}).get("fingerprint")
    if tfp and tfp != data_fingerprint:
        log.warning("WARNING: teacher %s was trained on different data (fingerprint %s… vs %s…): if its training "
                    "split overlaps this run's val/test split, the reported metrics are optimistic",
                    tdir, str(tfp)[:12], data_fingerprint[:12])
    return teacher.to(device), tman


def adapt_teacher_input(teacher: nn.Module, student_pre: PreprocessConfig, teacher_pre: PreprocessConfig) -> bool:
    """Make the teacher see its own preprocessing when the student's differs (mean/std/size).

    Installs a forward pre-hook on ``teacher.features`` (or the teacher itself) that undoes the
    student normalisation, applies the teacher's and resizes to the teacher's input size.
    Returns True when a hook was installed.
    """
    same_norm = (np.allclose(student_pre.mean, teacher_pre.mean) and np.allclose(student_pre.std, teacher_pre.std))
    same_size = student_pre.input_size == teacher_pre.input_size
    if same_norm and same_size:
        return False
    ms = torch.tensor(student_pre.mean).view(1, 3, 1, 1)
    ss = torch.tensor(student_pre.std).view(1, 3, 1, 1)
    mt = torch.tensor(teacher_pre.mean).view(1, 3, 1, 1)
    st = torch.tensor(teacher_pre.std).view(1, 3, 1, 1)
    size = teacher_pre.input_size

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if not same_norm:
            dt = x.dtype
            xf = x.float() * ss.to(x.device) + ms.to(x.device)
            x = ((xf - mt.to(x.device)) / st.to(x.device)).to(dt)
        if not same_size and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x, *args[1:])

    target = getattr(teacher, "features", None)
    (target if isinstance(target, nn.Module) else teacher).register_forward_pre_hook(hook)
    return True


def training_view_preprocessing(cfg: TrainConfig, pre: PreprocessConfig, tman: Any) -> PreprocessConfig:
    """The preprocessing training views are made with: the student's, or (``model.teacher_input=native``
    and a teacher with a larger input) the student's normalisation at the teacher's input size."""
    if cfg.model.teacher_input != "native" or tman is None:
        return pre
    t_size = int(tman.preprocessing.input_size)
    if t_size <= pre.input_size:
        return pre
    return PreprocessConfig.from_dict({**pre.to_dict(), "input_size": t_size, "resize_size": None})


def install_student_downscale(student: nn.Module, size: int) -> Any:
    """A pre-hook on the student's feature extractor that shrinks larger training views to ``size``.

    Antialiased bilinear, on the normalised tensor (normalisation is affine per channel, so this
    equals downscaling the pixels first). Inputs already at ``size`` (evaluation) pass untouched.
    Returns the hook handle (removed before the student is evaluated and saved).
    """
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x, *args[1:])

    target = getattr(student, "features", None)
    return (target if isinstance(target, nn.Module) else student).register_forward_pre_hook(hook)


# ------------------------------------------------------------------------------------------------ loaders
def build_loaders(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device, bundle: DatasetBundle, s: Student, tman: Any,
                  method_cls: Any) -> Loaders:
    """The multi-view training loader (seeded sampler), the val/test loaders and the steps per epoch."""

    bs = cfg.optim.batch_size
    view_pre = training_view_preprocessing(cfg, s.pre, tman)
    downscale_hook = None
    if view_pre.input_size != s.pre.input_size:
        downscale_hook = install_student_downscale(s.model, s.pre.input_size)
        log.info("teacher sees its native %dpx: training views are made at %dpx and the student gets their "
                 "antialiased downscale to %dpx (model.teacher_input=native)", view_pre.input_size,
                 view_pre.input_size, s.pre.input_size)
    train_source, eval_sources = cached_splits(cfg, bundle, s.pre, info, view_pre.input_size)
    train_ds = MultiViewDataset(train_source, train_transform(view_pre, cfg.data.augment, cfg.data.illuminant_augment),
                                method_cls.num_views, method_cls.view_mode)
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                                  shuffle=True, seed=cfg.run.seed, drop_last=False)
    shard = len(sampler)
    workers = resolve_workers(cfg.data.workers, device, cfg.run.threads)
    loader_kw: dict[str, Any] = dict(num_workers=workers, collate_fn=collate_views, worker_init_fn=worker_init,
                                     pin_memory=False)
    if workers > 0:
        loader_kw["prefetch_factor"] = 4
    generator = torch.Generator()
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=min(bs, shard), sampler=sampler,
                                               drop_last=shard >= bs,  # never a 1-image tail batch (BatchNorm)
                                               generator=generator, **loader_kw)
    steps = len(train_loader)
    if cfg.run.max_steps_per_epoch:
        steps = min(steps, cfg.run.max_steps_per_epoch)
    if steps == 0:
        raise LesionliteError("the training split is too small for one batch")
    eval_bs = cfg.run.eval_batch_size or 2 * bs
    val = _eval_loader("val", bundle, s.pre, eval_sources, eval_bs, info, loader_kw)
    test = _eval_loader("test", bundle, s.pre, eval_sources, eval_bs, info, loader_kw) if len(bundle.test) else None
    return Loaders(train=train_loader, sampler=sampler, generator=generator, val=val, test=test,
                   steps_per_epoch=steps, downscale_hook=downscale_hook)


def _eval_loader(split: str, bundle: DatasetBundle, pre: PreprocessConfig, eval_sources: dict[str, Any], batch_size: int,
                 info: ddp.DistInfo, loader_kw: dict[str, Any]) -> torch.utils.data.DataLoader:

    mv = eval_sources.get(split) or MultiViewDataset(bundle.split(split), eval_transform(pre), 1, "independent")
    kw = dict(loader_kw)
    if split in eval_sources:  # cached eval tensors need no worker processes (nothing left to compute per item)
        kw["num_workers"] = 0
        kw.pop("prefetch_factor", None)
    return torch.utils.data.DataLoader(mv, batch_size=batch_size, sampler=ddp.ShardSampler(len(mv), info), **kw)


def cached_splits(cfg: TrainConfig, bundle: DatasetBundle, pre: PreprocessConfig,
                  info: ddp.DistInfo, view_size: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The training source and the eval loaders' datasets, decoded once when ``data.cache`` is on.

    Returns ``(train_source, {split: dataset})``; without the cache the train source is the split
    itself and the dict is empty (the loaders then decode every epoch).
    """
    if not cfg.data.cache:
        return bundle.train, {}

    t0 = time.time()
    side = cfg.data.cache_short_side or 2 * max(pre.input_size, view_size or 0)
    show = cfg.run.progress and info.is_main
    train_source = DecodedImageCache(bundle.train, side, progress=show, desc="decode train")
    evals: dict[str, Any] = {}
    nbytes = train_source.nbytes
    for split in ("val", "test"):
        if len(bundle.split(split)):
            tc = TensorCache(bundle.split(split), eval_transform(pre), progress=show, desc=f"preprocess {split}")
            evals[split] = CachedViewDataset(tc)
            nbytes += tc.nbytes
    log.info("data cache: %d training images decoded once (shorter side <= %d px) + val/test eval tensors, "
             "%.0f MB in RAM, %.1f s (data.cache=false turns it off)", len(train_source), side, nbytes / 1e6,
             time.time() - t0)
    return train_source, evals


# ------------------------------------------------------------------------------------------------ method
def build_method(cfg: TrainConfig, info: ddp.DistInfo, device: torch.device, bundle: DatasetBundle, student: nn.Module,
                 teacher: nn.Module | None, method_cls: Any, steps_per_epoch: int) -> tuple[Any, ...]:
    """The method (student + teacher + its heads), its trainable parameters, optimizer and scheduler."""

    ctx = MethodContext(num_classes=len(bundle.class_names), class_counts=list(bundle.train.class_counts()),
                        num_train=len(bundle.train), device=device, epochs=cfg.run.epochs,
                        steps_per_epoch=steps_per_epoch)
    method = method_cls(student, teacher, cfg.method, ctx)
    method.to(device)
    if info.enabled and cfg.run.sync_bn:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    params = list(method.trainable_parameters())
    optimizer = build_optimizer(cfg, method, params)
    scheduler, sched_when = build_scheduler(cfg, optimizer, steps_per_epoch)
    return method, params, optimizer, scheduler, sched_when
