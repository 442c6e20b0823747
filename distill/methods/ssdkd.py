"""SSD-KD: self-supervised diverse knowledge distillation (Wang et al., Medical Image Analysis 84:102693, 2023).

What it does (and the defaults, which follow the authors' public training script):

Data. Each image ``i`` of a batch of ``B`` is given as its four 90° rotations ``k = 0..3``, each rotated
copy independently augmented (``num_views = 4``, ``view_mode = "rotations"``). The ``[B, 4, C, H, W]``
batch is flattened sample-major to ``4B`` rows, row ``4i + k`` (see :mod:`distill.methods.ssdkd_losses`);
``nor`` = the ``k = 0`` rows, ``aug`` = the ``k ≠ 0`` rows ordered ``(i, k)``.

Stage A (:meth:`SSDKD.prepare`): a projection head ``Linear(d,d)→ReLU→Linear(d,d)`` on the frozen
teacher's pooled feature (``d`` = teacher ``feature_dim``) learns to recognise which original image a
rotated copy came from: ``S ∈ R^{3B×B}``, ``S[(i,r), j] = cos(z_aug(i,r), z_nor(j))``, cross-entropy with
target ``i``. SGD (lr ``ss_lr`` = 1e-3, momentum 0.9, weight decay 1e-3), LR ×0.1 at 50 % and 75 % of
``ss_epochs``, early stop after ``ss_early_stop`` = 15 epochs without improvement; the head with the
lowest validation loss is kept. The authors ran 60 epochs (MultiStepLR at 30 and 45); the default here
is ``ss_epochs = 10`` to keep the stage affordable (set 60 to reproduce). ``ss_epochs = 0`` skips the
stage and leaves a random head (logged as a loud warning).

Stage B (:meth:`SSDKD.training_loss`), total = 0.1·L1 + 0.9·L2 + 2.7·L3 + 10·L4 + 1·L5:

* L1 class-weighted CE on ``nor`` rows, ``w_c = N / N_c`` from ``ctx.class_counts``;
* L2 ``T²·KL(p_t^T ‖ p_s^T)`` on ``nor`` rows, T = 4;
* L3 the same KL on the *selected* ``aug`` rows (T = 4);
* L4 ``0.5²·KL(softmax(S_t/0.5) ‖ softmax(S_s/0.5))`` on the selected rows of the similarity matrix,
  ``S_s`` from a student projection head (``d`` = student ``feature_dim``);
* L5 = 25·RKD-distance + 50·RKD-angle on the pooled features of all 4B rows + 1000·sqrt(MSE(G_s, G_t)+ε),
  ``G = F·Fᵀ/(C·H·W)`` the per-sample channel Gram of the last feature maps; the student map first
  goes through a trainable Conv1×1(C_s→C_t)→BN→ReLU regressor. If the maps differ spatially, the
  larger one is adaptive-average-pooled to the smaller size (the authors' pair is 7×7 on both sides).
  The Gram MSE is computed exactly without materialising ``[N, C, C]`` (see ``gram_mode``).

Row selection ("error-level ranking") for L3/L4: rank of the correct target (class for L3, source index
``i`` for L4) in the teacher's sorted output; keep all rows where the teacher is right plus the best
``ratio × n_wrong`` of the others (ratio 1.0 for L3, 0.75 for L4).

Every weight, temperature and ratio is a config field; a weight of 0 skips that term's computation
(and the modules only it needs: no projection heads / stage A without L4, no regressor without the Gram
term, no teacher forward at all when only L1 is on).

Logs (per step, only for terms that are on): ``ce kd tf ss rkd_dist rkd_angle gram`` = the unweighted
L1..L4 and L5 parts, ``hr`` = L5 = 25·rkd_dist + 50·rkd_angle + 1000·gram; ``tf_kept``/``ss_kept`` =
fraction of rows the selection keeps, ``tf_teacher_acc``/``ss_teacher_acc`` = fraction the teacher gets
right (rank 0), ``ss_acc`` = the student head's rotation-matching accuracy. The total is not repeated
in the logs (the loop records it).

Training-only parts (teacher, both projection heads, the regressor) live outside ``self.student`` so
``student.state_dict()`` is exactly a plain student's.
"""
from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from distill.methods import ssdkd_losses as L
from distill.methods.base import Batch, DistillMethod, LossOutput, MethodContext, missing_teacher_error
from distill.methods.registry import register_method
from lesionlite.errors import LesionliteError

log = logging.getLogger("distill.ssdkd")


@dataclass
class SSDKDConfig:
    # ---- stage B loss weights (0 = term off, not computed) ----
    ce_weight: float = 0.1  # L1
    kd_weight: float = 0.9  # L2
    tf_weight: float = 2.7  # L3 ("transformation" KD on rotated views)
    ss_weight: float = 10.0  # L4 (self-supervised similarity KD)
    hr_weight: float = 1.0  # L5 as a whole
    rkd_dist_weight: float = 25.0  # inside L5
    rkd_angle_weight: float = 50.0  # inside L5
    gram_weight: float = 1000.0  # inside L5
    # ---- temperatures / selection ratios ----
    kd_T: float = 4.0
    tf_T: float = 4.0
    ss_T: float = 0.5
    tf_ratio: float = 1.0
    ss_ratio: float = 0.75
    # ---- details ----
    class_weighted_ce: bool = True  # w_c = N / N_c (False: plain CE)
    gram_eps: float = 1e-12  # sqrt(MSE + eps)
    gram_mode: str = "auto"  # auto | spatial (HW×HW identity) | chunked (exact, recomputed) | naive
    gram_chunk: int = 16  # samples per chunk for gram_mode=chunked
    # ---- stage A: teacher projection head ----
    ss_epochs: int = 10  # authors: 60; 0 = skip (random head, loud warning)
    ss_lr: float = 1e-3
    ss_momentum: float = 0.9
    ss_weight_decay: float = 1e-3
    ss_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of ss_epochs (authors: 30, 45 of 60)
    ss_gamma: float = 0.1
    ss_early_stop: int = 15
    ss_max_batches: int = 0  # >0: cap batches per stage-A epoch (demos/tests)
    ss_amp: bool = False  # bf16 autocast for the frozen teacher forward in stage A (CUDA only)
    progress: bool = True  # tqdm progress bar in stage A


def projection_head(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d))


class ConvRegressor(nn.Sequential):
    """Student feature map → teacher channels: Conv1×1(C_s→C_t) → BN → ReLU (authors' ConvReg, equal sizes)."""

    def __init__(self, c_s: int, c_t: int) -> None:
        super().__init__(nn.Conv2d(c_s, c_t, kernel_size=1), nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Up-cast half-precision activations (autocast) to float32; leave float32/float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, Batch):
        return batch.images
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["images"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    raise TypeError(f"cannot read images from a {type(batch).__name__}")


def rotation_views(images: torch.Tensor, views: int) -> torch.Tensor:
    """Return ``[B, V, C, H, W]``: as given when it already has V views, else build rot90 views of view 0."""
    if images.dim() == 5 and images.shape[1] == views:
        return images
    if images.dim() == 5:
        images = images[:, 0]
    if images.dim() != 4:
        raise ValueError(f"expected images [B, V, C, H, W] or [B, C, H, W], got {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError("rotation views need square images")
    return torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(views)], dim=1)


@register_method("ssdkd")
class SSDKD(DistillMethod):
    """SSD-KD (Wang et al. 2023): logit KD + channel relations + RKD + rotation self-supervision from a teacher."""

    name: ClassVar[str] = "ssdkd"
    num_views: ClassVar[int] = 4
    view_mode: ClassVar[str] = "rotations"
    needs_teacher: ClassVar[bool] = True
    config_cls: ClassVar[type] = SSDKDConfig
    #: The authors' student-training settings, as dotted keys of :mod:`distill.config`: plain SGD
    #: (lr 1e-3, momentum 0.9, no Nesterov, weight decay 1e-3 on every parameter), ReduceLROnPlateau
    #: on the validation loss (factor 0.1, patience 10, min lr 1e-6), batch 32 images (×4 rotations),
    #: 224 px, at most 150 epochs, early stop after 15 epochs without improvement (the authors watch
    #: the validation loss; the shared loop's early stop watches balanced accuracy). The loop applies
    #: these below the user's YAML and flags (see :mod:`distill.config`).
    default_overrides: ClassVar[dict[str, Any]] = {
        "optim.name": "sgd",
        "optim.lr": 1e-3,
        "optim.momentum": 0.9,
        "optim.nesterov": False,
        "optim.weight_decay": 1e-3,
        "optim.no_decay_bias_norm": False,
        "optim.batch_size": 32,
        "schedule.name": "plateau",
        "schedule.plateau_monitor": "val_loss",
        "schedule.plateau_factor": 0.1,
        "schedule.plateau_patience": 10,
        "schedule.plateau_min_lr": 1e-6,
        "data.image_size": 224,
        "run.epochs": 150,
        "run.early_stop": 15,
    }

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: SSDKDConfig | None,
                 ctx: MethodContext) -> None:
        if teacher is None:
            raise missing_teacher_error(self.name)
        cfg = SSDKDConfig() if cfg is None else cfg
        super().__init__(student, teacher, cfg, ctx)
        for name in ("kd_T", "tf_T", "ss_T"):
            if getattr(cfg, name) <= 0:
                raise LesionliteError(f"ssdkd: {name} must be > 0, got {getattr(cfg, name)}")
        for name in ("ce_weight", "kd_weight", "tf_weight", "ss_weight", "hr_weight", "rkd_dist_weight",
                     "rkd_angle_weight", "gram_weight", "gram_eps"):
            if getattr(cfg, name) < 0:
                raise LesionliteError(f"ssdkd: {name} must be >= 0, got {getattr(cfg, name)}")
        for name in ("tf_ratio", "ss_ratio"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise LesionliteError(f"ssdkd: {name} must be in [0, 1], got {getattr(cfg, name)}")
        if cfg.gram_mode not in ("auto", "spatial", "chunked", "naive"):
            raise LesionliteError(f"ssdkd: gram_mode must be auto, spatial, chunked or naive, got {cfg.gram_mode!r}")
        d_s, d_t = int(student.feature_dim), int(teacher.feature_dim)

        self.use_ss = cfg.ss_weight > 0
        self.use_gram = cfg.hr_weight > 0 and cfg.gram_weight > 0
        self.use_rkd_d = cfg.hr_weight > 0 and cfg.rkd_dist_weight > 0
        self.use_rkd_a = cfg.hr_weight > 0 and cfg.rkd_angle_weight > 0
        self.needs_teacher_forward = (cfg.kd_weight > 0 or cfg.tf_weight > 0 or self.use_ss or self.use_gram
                                      or self.use_rkd_d or self.use_rkd_a)

        if not (cfg.ce_weight > 0 or self.needs_teacher_forward):
            raise LesionliteError("ssdkd: every loss term is switched off (all weights are 0)")

        # Training-only modules (never part of self.student). The teacher head is trained in stage A
        # only, with its own optimizer; it is frozen at all other times so the loop never optimises it.
        self.t_proj: nn.Module | None = None
        self.s_proj: nn.Module | None = None
        if self.use_ss:
            self.t_proj = projection_head(d_t)
            self.t_proj.requires_grad_(False)
            self.s_proj = projection_head(d_s)
        self.regressor: nn.Module | None = ConvRegressor(d_s, d_t) if self.use_gram else None
        self.register_buffer("class_weights", L.class_weights_from_counts(ctx.class_counts), persistent=False)
        # True once stage A ran (saved with the method state, so a resumed run does not redo it).
        self.register_buffer("ss_prepared", torch.zeros((), dtype=torch.bool))
        self.ss_history: list[dict[str, float]] = []

    # ------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        mods: list[nn.Module] = [self.student]
        mods += [m for m in (self.s_proj, self.regressor) if m is not None]
        for m in mods:
            for p in m.parameters():
                if p.requires_grad:
                    yield p

    def describe(self) -> dict[str, Any]:
        """Config and which terms are on (for run logs)."""
        cfg = asdict(self.cfg)
        cfg["ss_milestones"] = list(cfg["ss_milestones"])
        return {"config": cfg, "terms": self.active_terms(), "ss_history": self.ss_history}

    def active_terms(self) -> list[str]:
        c = self.cfg
        on = [("ce", c.ce_weight > 0), ("kd", c.kd_weight > 0), ("tf", c.tf_weight > 0), ("ss", self.use_ss),
              ("rkd_dist", self.use_rkd_d), ("rkd_angle", self.use_rkd_a), ("gram", self.use_gram)]
        return [n for n, b in on if b]

    # ------------------------------------------------------------------------------------------
    # Stage A
    # ------------------------------------------------------------------------------------------
    def prepare(self, train_loader: Any, val_loader: Any) -> None:
        cfg = self.cfg
        if not self.use_ss:
            log.info("ssdkd: L4 (ss_weight) is off; no projection-head stage")
            return
        if bool(self.ss_prepared):
            log.info("ssdkd: teacher projection head already trained (restored state); skipping stage A")
            return
        device = torch.device(self.ctx.device)
        self.teacher.to(device)
        self.t_proj.to(device)
        if cfg.ss_epochs <= 0:
            msg = ("ssdkd: ss_epochs=0 — the teacher projection head is NOT trained (random weights); "
                   "the self-supervised term L4 will distil a random similarity structure")
            log.warning("!" * 80)
            log.warning(msg)
            log.warning("!" * 80)
            warnings.warn(msg, stacklevel=2)
            self._sync_teacher_head()
            self.ss_prepared.fill_(True)
            return
        head = self.t_proj
        head.requires_grad_(True)
        opt = torch.optim.SGD(head.parameters(), lr=cfg.ss_lr, momentum=cfg.ss_momentum,
                              weight_decay=cfg.ss_weight_decay)
        milestones = sorted({max(1, int(round(f * cfg.ss_epochs))) for f in cfg.ss_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.ss_gamma)
        best_loss, best_state, since_best = math.inf, copy.deepcopy(head.state_dict()), 0
        if val_loader is None:
            log.warning("ssdkd: no validation loader; stage A keeps the head with the lowest TRAIN loss")
        try:
            for ep in range(cfg.ss_epochs):
                head.train()
                lr = opt.param_groups[0]["lr"]
                tr_loss, tr_acc = self._ss_epoch(train_loader, device, opt, f"ssdkd stage A {ep + 1}/{cfg.ss_epochs} train")
                sched.step()
                if val_loader is not None:
                    head.eval()
                    with torch.no_grad():
                        va_loss, va_acc = self._ss_epoch(val_loader, device, None,
                                                         f"ssdkd stage A {ep + 1}/{cfg.ss_epochs} val")
                else:
                    va_loss, va_acc = tr_loss, tr_acc
                rec = {"epoch": ep + 1, "train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss,
                       "val_acc": va_acc, "lr": lr}
                self.ss_history.append(rec)
                improved = va_loss < best_loss
                if improved:
                    best_loss, best_state, since_best = va_loss, copy.deepcopy(head.state_dict()), 0
                else:
                    since_best += 1
                log.info("ssdkd stage A epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f%s",
                         ep + 1, cfg.ss_epochs, tr_loss, tr_acc, va_loss, va_acc, " *" if improved else "")
                if since_best >= cfg.ss_early_stop:
                    log.info("ssdkd stage A: early stop after %d epochs without improvement", since_best)
                    break
        finally:
            head.load_state_dict(best_state)
            head.requires_grad_(False)
            head.eval()
        self._sync_teacher_head()
        self.ss_prepared.fill_(True)
        log.info("ssdkd stage A done: best val loss %.4f", best_loss)

    def _sync_teacher_head(self) -> None:
        """Under DDP every rank trains its own head on its data shard: adopt rank 0's."""

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in self.t_proj.state_dict().values():
                dist.broadcast(t, src=0)

    def _ss_epoch(self, loader: Any, device: torch.device, opt: torch.optim.Optimizer | None,
                  desc: str) -> tuple[float, float]:

        cfg, views = self.cfg, self.num_views
        total = len(loader) if hasattr(loader, "__len__") else None
        if cfg.ss_max_batches > 0:
            total = min(total, cfg.ss_max_batches) if total is not None else cfg.ss_max_batches
        loss_sum = acc_sum = 0.0
        n_rows = 0
        # disable=None: tqdm shows the bar only on a terminal (epoch summaries always go to the log)
        bar = tqdm(total=total, desc=desc, leave=False, disable=None if cfg.progress else True, dynamic_ncols=True)
        try:
            for bi, batch in enumerate(loader):
                if cfg.ss_max_batches > 0 and bi >= cfg.ss_max_batches:
                    break
                imgs = rotation_views(_images_of(batch), views).to(device, non_blocking=True)
                b = imgs.shape[0]
                bar.update(1)
                if b < 2:  # one image: the 3×1 similarity matrix carries no signal
                    continue
                x = L.flatten_views(imgs)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                     enabled=cfg.ss_amp and device.type == "cuda"):
                    pooled = self.teacher.forward_all(x).pooled
                pooled = pooled.float()
                with torch.set_grad_enabled(opt is not None):
                    sim = L.rotation_similarity(self.t_proj(pooled), b, views)
                    target = L.ss_targets(b, views, device)
                    loss = F.cross_entropy(sim, target)
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                rows = sim.shape[0]
                loss_sum += float(loss.detach()) * rows
                acc_sum += float((sim.argmax(1) == target).float().sum())
                n_rows += rows
                bar.set_postfix(loss=f"{loss_sum / n_rows:.4f}", acc=f"{acc_sum / n_rows:.3f}")
        finally:
            bar.close()
        if n_rows == 0:
            raise LesionliteError("ssdkd stage A: the loader gave no batch with at least 2 images")
        return loss_sum / n_rows, acc_sum / n_rows

    # ------------------------------------------------------------------------------------------
    # Stage B
    # ------------------------------------------------------------------------------------------
    def training_loss(self, batch: Batch, epoch: int, step: int) -> LossOutput:
        cfg = self.cfg
        images = batch.images
        if images.dim() != 5 or images.shape[1] < 2:
            raise ValueError(f"ssdkd expects images [B, {self.num_views}, C, H, W], got {tuple(images.shape)}")
        b, v = images.shape[:2]
        x = L.flatten_views(images)
        labels = batch.labels
        nor, aug = L.nor_aug_index(b, v, x.device)

        out_s = self.student.forward_all(x)
        out_t = None
        if self.needs_teacher_forward:
            with torch.no_grad():
                out_t = self.teacher.forward_all(x)

        terms: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor | float] = {}
        with torch.autocast(x.device.type, enabled=False):
            logit_s = _f32(out_s.logits)
            logit_t = _f32(out_t.logits) if out_t is not None else None
            if cfg.ce_weight > 0:
                w = self.class_weights.to(x.device, logit_s.dtype) if cfg.class_weighted_ce else None
                terms["ce"] = F.cross_entropy(logit_s[nor], labels, weight=w)
            if cfg.kd_weight > 0:
                terms["kd"] = L.kl_soft(logit_s[nor], logit_t[nor], cfg.kd_T)
            if cfg.tf_weight > 0:
                t_aug = logit_t[aug]
                rank = L.target_rank(t_aug, labels.repeat_interleave(v - 1))
                keep = L.select_rows(rank, cfg.tf_ratio)
                terms["tf"] = L.kl_soft(logit_s[aug][keep], t_aug[keep], cfg.tf_T)
                stats["tf_kept"] = keep.numel() / max(1, t_aug.shape[0])
                stats["tf_teacher_acc"] = (rank == 0).float().mean()
            if self.use_ss:
                with torch.no_grad():
                    sim_t = L.rotation_similarity(self.t_proj(_f32(out_t.pooled)), b, v)
                sim_s = L.rotation_similarity(self.s_proj(_f32(out_s.pooled)), b, v)
                target = L.ss_targets(b, v, x.device)
                rank = L.target_rank(sim_t, target)
                keep = L.select_rows(rank, cfg.ss_ratio)
                terms["ss"] = L.kl_soft(sim_s[keep], sim_t[keep], cfg.ss_T)
                stats["ss_kept"] = keep.numel() / max(1, sim_t.shape[0])
                stats["ss_acc"] = (sim_s.detach().argmax(1) == target).float().mean()
                stats["ss_teacher_acc"] = (rank == 0).float().mean()
            hr: torch.Tensor | None = None
            if self.use_rkd_d or self.use_rkd_a:
                ps, pt = _f32(out_s.pooled), _f32(out_t.pooled)
                if self.use_rkd_d:
                    terms["rkd_dist"] = L.rkd_distance(ps, pt)
                    hr = cfg.rkd_dist_weight * terms["rkd_dist"]
                if self.use_rkd_a:
                    terms["rkd_angle"] = L.rkd_angle(ps, pt)
                    a = cfg.rkd_angle_weight * terms["rkd_angle"]
                    hr = a if hr is None else hr + a
        if self.use_gram:
            fs = self.regressor(out_s.feature_map)  # under the loop's autocast, like the student
            with torch.autocast(x.device.type, enabled=False):
                fs, ft = L.match_spatial(_f32(fs), _f32(out_t.feature_map).to(_f32(fs).dtype))
                terms["gram"] = L.gram_loss(fs, ft, eps=cfg.gram_eps, mode=cfg.gram_mode, chunk=cfg.gram_chunk)
                g = cfg.gram_weight * terms["gram"]
                hr = g if hr is None else hr + g

        weights = {"ce": cfg.ce_weight, "kd": cfg.kd_weight, "tf": cfg.tf_weight, "ss": cfg.ss_weight}
        total: torch.Tensor | None = None
        for k, wk in weights.items():
            if k in terms:
                total = wk * terms[k] if total is None else total + wk * terms[k]
        if hr is not None:
            terms["hr"] = hr
            total = cfg.hr_weight * hr if total is None else total + cfg.hr_weight * hr
        if total is None:
            raise LesionliteError("ssdkd: every loss term is switched off (all weights are 0)")

        # Per-term scalars (the loop records the total itself), one device→host transfer for all.
        names = [*terms, *stats]
        vals = [*(t.detach().float() for t in terms.values()),
                *(torch.as_tensor(s, dtype=torch.float32, device=x.device) for s in stats.values())]
        logs = dict(zip(names, torch.stack([v_.reshape(()) for v_ in vals]).tolist()))
        return LossOutput(loss=total, logs=logs, logits=out_s.logits[nor].detach())


__all__ = ["SSDKD", "SSDKDConfig", "ConvRegressor", "projection_head", "rotation_views"]
