"""UDCD: uncertainty-driven contrastive self-distillation, in two named variants.

Sharma, Kumar, Chandra, "Confidence Matters: Enhancing Medical Image Classification Through
Uncertainty-Driven Contrastive Self-Distillation", MICCAI 2024 (code: github.com/philsaurabh/UDCD_MICCAI).

Self-distillation: the teacher is an exponential moving average (EMA) of the student that this
method creates and owns (``needs_teacher = False``). Each image comes as two independently
augmented views; the student sees view 1, the EMA teacher view 2.

Shared machinery (both variants)
--------------------------------
- EMA after every optimizer step: θ_t ← α θ_t + (1-α) θ_s with α = min(1 - 1/(step+1), ema_decay)
  (ema_decay = 0.99; ``step`` is the 0-based number of optimizer steps taken before this one, so
  the first update copies the student). It covers the backbone/classifier and, when the heads are
  trained (``udcd``; ``udcd-code`` with ``heads = "ema"``), the embedding and projection heads (the
  teacher's heads are then the EMA of the student's).
- BatchNorm buffers: float buffers (running mean/var) are EMA-ed with the same α, integer
  buffers (num_batches_tracked) are copied. With ``teacher_bn = "batch"`` (default, as in the
  public code and Mean Teacher) the teacher normalises with the statistics of its own batch but
  its forward pass never writes its running buffers, so they are exactly the EMA of the
  student's; with ``"running"`` the teacher runs fully in eval mode on those EMA buffers.
  Teacher dropout is always off.
- Trained heads: f = Linear(feature_dim → embed_dim) on the pooled feature, z = normalize(Linear(f)).
  ``udcd-code`` uses the code's fixed random heads instead (below).
- Memory banks M_s, M_t [n_train, embed_dim], seeded (``seed``, ``seed + 1``); rows of the batch's
  ``indices`` updated once per step: M[i] ← normalize(m·M[i] + (1-m)·z_i), m = bank_momentum = 0.5
  (student z → M_s, teacher z → M_t). Initial rows and the update's place in the step differ per
  variant (below).
- Bank labels: ``prepare`` reads the training labels from the train loader's dataset
  (attribute ``labels``/``targets`` or a ``get_labels()`` method, through ``Subset`` wrappers);
  in any case every batch writes its labels into the label buffer. Rows whose label is not known
  yet (label -1) are ignored by anchors, SupCon and negative sampling.
- Class anchors a_c = normalize(mean over class-c rows of ReLU(M[k])), detached; an empty class
  gets a zero anchor (read before this step's bank update in ``udcd``, after it in ``udcd-code``).
  Relation matrix R = z·Aᵀ/τ [B, C]; student R uses M_s's anchors, teacher R uses M_t's (as in the
  public code). τ = 0.07.
- ψ1 = u/log C (normalised entropy of softmax logits), ψ2 = 1 - ψ1, never differentiated.
- Weighted CE, w_c = N/N_c (∝ 1/N_c); the reduction differs per variant (below).
- Under DDP each rank applies every rank's bank rows (all-gather), so the banks stay identical.
- ``LossOutput.logs`` holds detached 0-d tensors (no device sync per step).
- Everything training-only (EMA teacher, heads, banks) lives outside ``self.student``; the
  exported student has exactly the keys of a plain ``build_model`` student and the same cost.

``udcd`` (the paper, Eq. 8)
---------------------------
L = Σ_i (1 + ψ2^s_i + ψ2^t_i)·w_{y_i}·CE_i / Σ_i w_{y_i}                 (wce_weight; factor optional)
  + λ1 · mean_i KL(p_s,i ‖ p_t,i)                                              (lambda_kl)
  + λ2 · mean_i ψ1^t_i · SupCon_i(z_s,i vs M_t, positives = same class)      (lambda_scl)
  + λ3 · mean_j ψ1^t_{p_j} · Huber(cos ϕ^s_j, cos ϕ^t_j)                      (lambda_cra)
with ψ^s from the student's logits (view 1), ψ^t from the teacher's (view 2). The WCE divides by
Σ_i w_{y_i} (PyTorch's weighted mean, so the scale of w cancels). Banks start as Gaussian unit
vectors and are updated after all losses (the anchors see the banks before this batch). SupCon
uses the whole labelled teacher bank as candidates (own row included). CRA: triplets (p,q,r) of distinct
batch positions, vertex p, cos ϕ = <unit(R(p)-R(q)), unit(R(p)-R(r))> on the student's and the
teacher's relation matrices; all ordered triplets when B(B-1)(B-2) ≤ max_triplets (4096), else
4096 sampled per step with a seeded generator; Huber δ = 1 (smooth-L1). All terms active from
step 0. The paper gives no training recipe beyond the public code's, so ``default_overrides``
(applied by the loop below the user's config and flags) are the code's settings, OneCycle's start
max_lr/25 included (see ``_CODE_RECIPE``).

``udcd-code`` (the public code)
-------------------------------
L = WCE + 1[epoch ≥ warmup_epochs]·( r(e)·L_cons + 0.1·L_CCD + 25·L_rel ),
WCE = (1/B) Σ_i w_{y_i}·CE_i: the code's ``nn.CrossEntropyLoss(weight=N/N_c)`` on one-hot targets,
whose mean divides by the batch size, not by Σ w (so, next to the other terms, it weighs about C
times PyTorch's weighted mean, as in the code);
r(e) = exp(-5 (1 - min(e,30)/30)²) with e the 0-based epoch, warmup_epochs = 20;
L_cons = mean_i ψ1(teacher logits_i)·KL(p_s,i ‖ p_t,i) (the code's consistency term);
L_CCD = NCE(student z vs M_t) + NCE(teacher z vs M_s): CRD's NCE with the sample's own bank row
as the positive and K = 4096 negatives drawn from OTHER classes, scores exp(m·z/τ)/Z with each
normaliser Z = mean(scores)·N frozen at the first batch (CRD's NCEAverage); the teacher half
carries no gradient and only enters the value (logged as ``ccd_t``; the student half as ``ccd_s``).
With ``negative_policy = "clip"`` (default) K is clipped to min over classes of the number of
other-class rows (computed once in ``prepare`` when all labels are known, else per batch over its
rows) and drawn without replacement (HAM10000: nv has 6705 of 10015 images, so K = 3310);
``"replace_if_short"`` reproduces the code's loader (K = 4096; rows with fewer than K candidates
draw with replacement). L_rel = mean_i ψ1(R_s,i)·KL(softmax R_t,i ‖ softmax R_s,i) with ψ1
normalised by log C, the anchors taken from the banks AFTER this batch's rows were written (the
code's memory returns its updated buffers, which the anchors then read); the NCE scores use the
banks before the update. Banks start as CRD's uniform vectors in [-a, a)^D, a = 1/√(D/3) (norm ≈ 1,
not exactly 1). During warm-up the teacher forward and bank updates are skipped (the code only
calls its CRA module after warm-up); the EMA update always runs.
Heads (``heads = "code"``, default): as in the code, z_s = normalize(W_s x + b_s) and
z_t = normalize(W_t x_t + b_t), two independently initialised random Linear layers (seed + 3)
that are outside the optimizer and never EMA-ed; here x is the pooled feature (the code's x is a
128-d fc layer of its DenseNet-121, on the classifier path). ``heads = "ema"`` gives the paper's
trained heads with an EMA teacher head (the former behaviour).

Why L_CCD can grow while CE falls, and why nothing bounds it: each normaliser Z is frozen at the first
batch, when the banks are random, so an NCE half's negative part is the mean exponentiated similarity to
other-class bank rows relative to that first batch, and nothing renormalises it (a cosine rise Δc multiplies it
by ≈ e^{Δc/τ}; only |s| ≤ 1 bounds it). With the code's two unrelated fixed projections those cosines stay at
chance and the term stays near its start; with shared trained/EMA heads the student half (the only one with a
gradient) falls while the teacher half grows as the embeddings align. No bound or guard is added: the code has
none, the values stay finite in float32 (e^{1/τ} ≈ 1.6e6), each score's gradient is at most 1/τ, and with the
code's heads the term does not drift; ``ccd_s``/``ccd_t`` show which half moves. The derivation and the runs
that measured it: ``benchmarks/RESULTS.md``, section 9a; a small version is
``tests/test_udcd.py::test_ccd_scale_with_the_codes_heads_vs_shared_ema_heads``.

Every weight, temperature, momentum, K and warm-up is a config field; a term with weight 0 is
not computed (and, if no term needs them, neither are the embeddings, banks or teacher).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from distill.methods import udcd_losses as L
from distill.methods.base import Batch, DistillMethod, LossOutput, MethodContext
from distill.methods.registry import register_method
from lesionlite.errors import LesionliteError

_log = logging.getLogger("distill.methods.udcd")
#: the sampling generator's state in :meth:`_UDCDBase.extra_state_dict` (not a module buffer)
_GENERATOR_KEY = "sampling_generator_state"
_GENERATOR_DEVICE_KEY = "sampling_generator_device"

# The authors' trainer: Adam (weight decay 1e-5 on every parameter), torch's OneCycleLR(max_lr=3e-4)
# with its defaults (div_factor 25, final_div_factor 1e4, pct_start 0.3, cosine, beta1 cycled), one
# step per batch, 80 epochs, batch 64. OneCycleLR overwrites the optimizer's lr at construction, so
# the code's Adam lr (1e-4) is never used: the schedule starts at 3e-4/25 = 1.2e-5 and ends at 1.2e-9.
# In the shared loop OneCycle's peak is ``optim.lr`` and its start ``optim.lr / div_factor``; the
# OneCycle fields are spelled out so that a change of the global defaults cannot move them.
_CODE_RECIPE = {
    "optim.name": "adam",
    "optim.lr": 3e-4,
    "optim.weight_decay": 1e-5,
    "optim.no_decay_bias_norm": False,
    "optim.batch_size": 64,
    "schedule.name": "onecycle",
    "schedule.div_factor": 25.0,
    "schedule.final_div_factor": 1e4,
    "schedule.pct_start": 0.3,
    "run.epochs": 80,
}
# ``udcd`` (paper): the paper gives no training recipe beyond the code's (module docstring), so it
# takes the code's, start included. The former "start 1e-4 (div_factor 3)" read the code's Adam lr,
# which OneCycleLR discards, as the start; should the paper's text state such a start, give ``udcd``
# its own "schedule.div_factor" here with the citation.
_PAPER_RECIPE = dict(_CODE_RECIPE)


@dataclass
class UDCDCommonConfig:
    embed_dim: int = 128  # embedding/projection size (memory-bank width)
    tau: float = 0.07  # temperature of relations, SupCon and NCE
    bank_momentum: float = 0.5  # M[i] <- normalize(m M[i] + (1-m) z_i)
    ema_decay: float = 0.99  # alpha = min(1 - 1/(step+1), ema_decay)
    teacher_bn: Literal["batch", "running"] = "batch"  # teacher BN statistics (see module doc)
    wce_weight: float = 1.0
    seed: int = 0  # bank initialisation and triplet/negative sampling


@dataclass
class UDCDConfig(UDCDCommonConfig):
    """``udcd`` (paper Eq. 8)."""

    uncertainty_wce: bool = True  # per-sample factor (1 + psi2_s + psi2_t) on the WCE
    lambda_kl: float = 1.0
    lambda_scl: float = 1.0
    lambda_cra: float = 1.0
    max_triplets: int = 4096
    huber_delta: float = 1.0


@dataclass
class UDCDCodeConfig(UDCDCommonConfig):
    """``udcd-code`` (public code)."""

    warmup_epochs: int = 20  # distillation terms from this (0-based) epoch on
    cons_weight: float = 1.0
    cons_rampup_epochs: float = 30.0
    ccd_weight: float = 0.1
    rel_weight: float = 25.0
    nce_k: int = 4096
    negative_policy: Literal["clip", "replace_if_short"] = "clip"
    # "code": the code's heads, two independently initialised random Linear+L2 projections (student,
    # teacher) that are never trained nor EMA-ed; "ema": the paper's trained student head (two
    # layers) with its EMA as the teacher head (what ``udcd`` uses).
    heads: Literal["code", "ema"] = "code"


class _Head(nn.Module):
    """f = Linear(pooled); z = normalize(Linear(f))."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.embed(pooled)), dim=1)


class _Embed(nn.Module):
    """z = normalize(Linear(pooled)): the public code's embedding head (one layer)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, embed_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(pooled), dim=1)


class _EMATeacher(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head


@contextmanager
def _teacher_mode(model: nn.Module, bn_batch_stats: bool) -> Iterator[None]:
    """Eval mode (no dropout); optionally BN on batch statistics without touching running buffers."""
    saved = [(m, m.training) for m in model.modules()]
    bns: list[tuple[nn.Module, Any]] = []
    model.eval()
    if bn_batch_stats:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                bns.append((m, m.momentum))
                m.train(True)
                m.momentum = 0.0  # running = 1·running + 0·batch: unchanged
    try:
        yield
    finally:
        for m, mom in bns:
            m.momentum = mom
        for m, mode in saved:
            m.training = mode


def _unwrap_labels(dataset: Any) -> list[int] | None:
    """Training labels in dataset-index order, if the dataset exposes them cheaply."""

    if isinstance(dataset, Subset):
        inner = _unwrap_labels(dataset.dataset)
        return None if inner is None else [inner[int(i)] for i in dataset.indices]
    try:
        for name in ("labels", "targets"):
            val = getattr(dataset, name, None)
            if val is not None and not callable(val):
                return [int(x) for x in (val.tolist() if hasattr(val, "tolist") else val)]
        fn = getattr(dataset, "get_labels", None)
        if callable(fn):
            return [int(x) for x in fn()]
    except (TypeError, ValueError):  # not integer class ids: fall back to labels seen in batches
        return None
    return None


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over DDP ranks (equal batch sizes: the loop's sampler pads, tails are dropped)."""
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _UDCDBase(DistillMethod):
    num_views: ClassVar[int] = 2
    view_mode: ClassVar[Literal["independent", "rotations"]] = "independent"
    needs_teacher: ClassVar[bool] = False
    default_overrides: ClassVar[dict[str, Any]] = dict(_PAPER_RECIPE)

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any, ctx: MethodContext) -> None:
        super().__init__(student, None, cfg, ctx)
        if cfg.tau <= 0:
            raise LesionliteError(f"udcd: tau must be positive, got {cfg.tau}")
        if not 0.0 <= cfg.bank_momentum < 1.0 or not 0.0 <= cfg.ema_decay <= 1.0:
            raise LesionliteError("udcd: bank_momentum must be in [0, 1) and ema_decay in [0, 1]")
        if cfg.teacher_bn not in ("batch", "running"):
            raise LesionliteError(f"udcd: teacher_bn must be 'batch' or 'running', got {cfg.teacher_bn!r}")
        feature_dim = int(student.feature_dim)
        self.num_classes = int(ctx.num_classes)
        self.student_head, teacher_head = self._build_heads(feature_dim, cfg)
        self.ema = _EMATeacher(copy.deepcopy(student), teacher_head)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        n = int(ctx.num_train)
        self.register_buffer("class_weight", L.inverse_frequency_weights(ctx.class_counts))
        self.register_buffer("memory_s", self._initial_bank(n, cfg.embed_dim, cfg.seed))
        self.register_buffer("memory_t", self._initial_bank(n, cfg.embed_dim, cfg.seed + 1))
        self.register_buffer("bank_labels", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._generator: torch.Generator | None = None
        #: a checkpoint's generator state and its device type, applied when the generator is next made
        self._pending_generator_state: tuple[torch.Tensor, str | None] | None = None
        self._indices_checked = False
        # Host-side min over classes of the number of other-class bank rows, known once every row's
        # label is (set in ``prepare``); lets negative sampling pick K without a device sync.
        self._min_negatives: int | None = None
        self.to(ctx.device)

    @staticmethod
    def _initial_bank(n: int, dim: int, seed: int) -> torch.Tensor:
        """Initial memory-bank rows (``udcd``: Gaussian unit vectors; ``udcd-code`` overrides)."""
        return L.random_unit_bank(n, dim, seed)

    def _build_heads(self, feature_dim: int, cfg: Any) -> tuple[nn.Module, nn.Module]:
        """(student head, teacher head): a trained head and its copy, which then follows the EMA."""
        head = _Head(feature_dim, cfg.embed_dim)
        return head, copy.deepcopy(head)

    def _heads_follow_ema(self) -> bool:
        return True

    # ------------------------------------------------------------------ loop hooks
    def prepare(self, train_loader: Any, val_loader: Any) -> None:
        dataset = getattr(train_loader, "dataset", None)
        labels = _unwrap_labels(dataset) if dataset is not None else None
        if labels is not None and len(labels) == self.bank_labels.shape[0]:
            lab = torch.as_tensor(labels, dtype=torch.long)
            self.bank_labels.copy_(lab.to(self.bank_labels.device))
            if len(labels) and int(lab.min()) >= 0 and int(lab.max()) < self.num_classes:
                counts = torch.bincount(lab, minlength=self.num_classes)
                present = counts[counts > 0]
                self._min_negatives = int((len(labels) - present).min())
        if int(self.ema_updates) == 0:  # fresh run: the teacher starts as the (possibly pretrained) student
            self._copy_student_to_teacher()

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        alpha = min(1.0 - 1.0 / (step + 1), self.cfg.ema_decay)
        self.ema_update(alpha)

    # ------------------------------------------------------------------ EMA
    def _pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        yield self.ema.model, self.student
        if self._heads_follow_ema():
            yield self.ema.head, self.student_head

    @torch.no_grad()
    def _copy_student_to_teacher(self) -> None:
        for t_mod, s_mod in self._pairs():
            t_mod.load_state_dict(s_mod.state_dict())

    @torch.no_grad()
    def ema_update(self, alpha: float) -> None:
        """θ_t ← α θ_t + (1-α) θ_s on parameters and float buffers; integer buffers copied."""
        for t_mod, s_mod in self._pairs():
            s_params = dict(s_mod.named_parameters())
            for name, tp in t_mod.named_parameters():
                tp.mul_(alpha).add_(s_params[name].detach(), alpha=1.0 - alpha)
            s_bufs = dict(s_mod.named_buffers())
            for name, tb in t_mod.named_buffers():
                sb = s_bufs[name]
                if tb.is_floating_point():
                    tb.mul_(alpha).add_(sb, alpha=1.0 - alpha)
                else:
                    tb.copy_(sb)
        self.ema_updates += 1

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student + student heads; never the EMA teacher (its parameters have requires_grad=False)."""
        yield from self.student.parameters()
        yield from (p for p in self.student_head.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ resume
    def extra_state_dict(self) -> dict[str, Any]:
        """Heads, banks, EMA — and where the triplet/negative sampling generator stands.

        The generator runs on across epochs (the training loop's per-epoch reseeding does not reach it), so a
        resumed run that restarted it from its seed sampled other triplets than the uninterrupted run: a CPU
        protocol seed resumed at epoch 17 matched its record to epoch 17 and differed from epoch 18 on. An empty
        state means the generator was not used yet (warm-up epochs, ``lambda_cra = 0``): it starts from its seed."""
        state = super().extra_state_dict()
        if self._generator is not None:
            state[_GENERATOR_KEY] = self._generator.get_state()
            state[_GENERATOR_DEVICE_KEY] = self._generator.device.type
        elif self._pending_generator_state is not None:  # resumed, not sampled since: the loaded state stands
            state[_GENERATOR_KEY], state[_GENERATOR_DEVICE_KEY] = self._pending_generator_state
        else:
            state[_GENERATOR_KEY] = torch.zeros(0, dtype=torch.uint8)
        return state

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        generator_state = state.pop(_GENERATOR_KEY, None)
        device_type = state.pop(_GENERATOR_DEVICE_KEY, None)
        super().load_extra_state_dict(state)
        self._generator = None
        self._pending_generator_state = None
        if generator_state is None:
            _log.warning("this checkpoint has no state of UDCD's sampling generator (written before it was saved): "
                         "the resumed run samples its triplets/negatives from the seed again, so it will not be "
                         "bit-identical to an uninterrupted run")
        elif generator_state.numel():
            self._pending_generator_state = (generator_state, device_type)

    # ------------------------------------------------------------------ helpers
    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(int(self.cfg.seed) + 2)
            pending, self._pending_generator_state = self._pending_generator_state, None
            if pending is not None:  # resumed: continue where the checkpoint stood
                state, device_type = pending
                try:  # a CUDA generator's state does not fit a CPU one (run.device may change on resume)
                    if device_type not in (None, device.type):
                        raise RuntimeError(f"it ran on {device_type}")
                    self._generator.set_state(state)
                except RuntimeError as exc:
                    self._generator.manual_seed(int(self.cfg.seed) + 2)
                    _log.warning("the checkpoint's UDCD sampling generator cannot continue on %s (%s): it starts "
                                 "from its seed, so the resumed run is not bit-identical to an uninterrupted one",
                                 device.type, exc)
        return self._generator

    def _views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.images
        if x.dim() != 5:
            raise LesionliteError(f"udcd expects images [B, V, C, H, W], got shape {tuple(x.shape)}")
        return x[:, 0], x[:, 1] if x.shape[1] > 1 else x[:, 0]

    def _student_forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """The teacher's view, labels and indices of ``batch`` (its labels written to the bank rows), and the
        student's forward on its own view."""
        x_s, x_t = self._views(batch)
        y, idx = batch.labels, batch.indices
        self._check_indices(idx)
        self.bank_labels[idx] = y
        return x_t, y, idx, self.student.forward_all(x_s)

    def _embeddings(self, s_pooled: torch.Tensor, t_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_s through the student head (with gradient) and z_t through the teacher's head (without)."""
        z_s = self.student_head(s_pooled.float())
        with torch.no_grad():
            z_t = self.ema.head(t_pooled.float())
        return z_s, z_t

    def _check_indices(self, idx: torch.Tensor) -> None:
        """Dataset indices must address bank rows; checked on the first batch only (it syncs)."""
        if self._indices_checked:
            return
        self._indices_checked = True
        n = self.bank_labels.shape[0]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise LesionliteError(f"udcd: dataset indices must lie in [0, {n}), got "
                                  f"[{int(idx.min())}, {int(idx.max())}] (num_train mismatch?)")

    def _teacher_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), _teacher_mode(self.ema.model, self.cfg.teacher_bn == "batch"):
            out = self.ema.model.forward_all(x)
            return out.logits.float(), out.pooled

    def _update_banks(self, idx: torch.Tensor, z_s: torch.Tensor, z_t: torch.Tensor) -> None:
        """Momentum update of both banks; under DDP every rank applies every rank's rows."""
        m = float(self.cfg.bank_momentum)
        with torch.no_grad():
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                idx, z_s, z_t = (_all_gather_cat(t) for t in (idx, z_s.detach().float(), z_t.detach().float()))
            self.memory_s = L.momentum_update_rows(self.memory_s, idx, z_s.detach().float(), m)
            self.memory_t = L.momentum_update_rows(self.memory_t, idx, z_t.detach().float(), m)

    @staticmethod
    def _logs(terms: dict[str, Any]) -> dict[str, Any]:
        """Detached 0-d tensors (no device sync per step; the loop accepts them) or plain floats."""
        return {k: v.detach().float().reshape(()) if torch.is_tensor(v) else float(v) for k, v in terms.items()}


@register_method("udcd")
class UDCD(_UDCDBase):
    """UDCD as in the paper (Eq. 8): uncertainty-weighted WCE + KL + ψ1^t-weighted SupCon and CRA.

    See the module docstring for the exact reductions; λ1..λ3 = ``lambda_kl``, ``lambda_scl``,
    ``lambda_cra`` (default 1). Differs from ``udcd-code`` in: no warm-up/ramp-up, the WCE carries
    the (1 + ψ2^s + ψ2^t) factor, KL is unweighted, SupCon vs the teacher bank replaces CRD's NCE,
    and the relational term is a triplet-angle Huber loss (CRA) instead of a relation KL.

    Why KL(p_s ‖ p_t) and not Hinton's KL(p_t ‖ p_s): it is the direction the authors' code
    computes. Its trainer calls ``uncertainity_loss(t_logits, s_logits)`` (utils/trainer.py:130),
    which takes log_softmax of its FIRST argument as ``F.kl_div``'s input and softmax of its SECOND
    as the target (utils/losses.py:25-28); ``kl_div(log q, p) = Σ p (log p - log q)``, so the value
    is KL(p_s ‖ p_t), with the gradient reaching the student through p_s (the teacher is
    detached). We follow that executable definition in both variants rather than Hinton's order.
    KL(p_s ‖ p_t) is the reverse, mode-seeking KL: it penalises student mass where the teacher
    has little and, unlike KL(p_t ‖ p_s), is not a cross-entropy to soft labels (its gradient also
    contains the student's own entropy term).

    Where SupCon departs from the paper's Eq. 2 (Khosla et al.'s L_out, whose denominator runs
    over A(i) = the other samples of the batch): here the anchor is the student's z_i and both
    the denominator and the positives come from the teacher's memory bank M_t, i.e. the
    denominator sums exp(z_i·m_a/τ) over ALL labelled bank rows (N of them, positives included),
    not over the batch; the sample's own bank row is not excluded (it is the teacher's embedding
    of the same image from an earlier visit, not the anchor itself); rows not labelled yet are
    left out; a sample with no same-class row gets 0 (see ``udcd_losses.supcon_vs_bank``).
    """

    name: ClassVar[str] = "udcd"
    config_cls: ClassVar[type] = UDCDConfig

    def training_loss(self, batch: Batch, epoch: int, step: int) -> LossOutput:
        cfg: UDCDConfig = self.cfg
        x_t, y, idx, out_s = self._student_forward(batch)
        need_emb = cfg.lambda_scl != 0 or cfg.lambda_cra != 0
        need_teacher = need_emb or cfg.lambda_kl != 0 or (cfg.wce_weight != 0 and cfg.uncertainty_wce)
        if need_teacher:
            t_logits, t_pooled = self._teacher_forward(x_t)
        terms: dict[str, Any] = {}
        with torch.autocast(device_type=y.device.type, enabled=False):
            s_logits = out_s.logits.float()
            psi1_t = L.normalized_entropy(t_logits) if need_teacher else None
            total = s_logits.sum() * 0.0
            if cfg.wce_weight != 0:
                factor = None
                if cfg.uncertainty_wce:
                    factor = 1.0 + (1.0 - L.normalized_entropy(s_logits)) + (1.0 - psi1_t)
                wce = L.weighted_ce(s_logits, y, self.class_weight, factor)
                total = total + cfg.wce_weight * wce
                terms["wce"] = wce
            if cfg.lambda_kl != 0:
                kl = L.kl_per_sample(s_logits, t_logits).mean()
                total = total + cfg.lambda_kl * kl
                terms["kl"] = kl
            if need_emb:
                z_s, z_t = self._embeddings(out_s.pooled, t_pooled)
                if cfg.lambda_scl != 0:
                    scl = (psi1_t * L.supcon_vs_bank(z_s, y, self.memory_t, self.bank_labels, cfg.tau)).mean()
                    total = total + cfg.lambda_scl * scl
                    terms["scl"] = scl
                if cfg.lambda_cra != 0:
                    r_s = L.relation_matrix(z_s, L.class_anchors(self.memory_s, self.bank_labels, self.num_classes), cfg.tau)
                    r_t = L.relation_matrix(z_t, L.class_anchors(self.memory_t, self.bank_labels, self.num_classes), cfg.tau)
                    trip = L.sample_triplets(y.shape[0], cfg.max_triplets, self._gen(y.device), y.device)
                    cra = L.cra_loss(r_s, r_t, trip, psi1_t, cfg.huber_delta)
                    total = total + cfg.lambda_cra * cra
                    terms["cra"] = cra
                self._update_banks(idx, z_s, z_t)
            if psi1_t is not None:
                terms["psi1_t"] = psi1_t.mean()
        logs = self._logs(terms)  # the loop logs the total itself
        return LossOutput(loss=total, logs=logs, logits=out_s.logits.detach())


@register_method("udcd-code")
class UDCDCode(_UDCDBase):
    """UDCD as in the authors' public code: WCE, then after warm-up r(e)·L_cons + 0.1·L_CCD + 25·L_rel.

    WCE is averaged over the batch (the code's weighted CE on one-hot targets), L_cons is the
    ψ1(teacher)-weighted KL(p_s ‖ p_t), L_CCD is CRD's NCE with class-aware negatives on both banks
    (Z frozen at the first batch), L_rel the ψ1(R_s)-weighted KL(softmax R_t ‖ softmax R_s) on
    anchors read after this batch's bank update. Banks start uniform in ±1/√(D/3), the embedding
    heads are the code's fixed random projections, and the default recipe is the code's (OneCycle
    from 3e-4/25). See the module docstring for details, for the scale of L_CCD (it is not
    renormalised after the first batch) and for how it differs from ``udcd`` (the paper).
    """

    name: ClassVar[str] = "udcd-code"
    config_cls: ClassVar[type] = UDCDCodeConfig
    default_overrides: ClassVar[dict[str, Any]] = dict(_CODE_RECIPE)

    @staticmethod
    def _initial_bank(n: int, dim: int, seed: int) -> torch.Tensor:
        """CRD's ``ContrastMemory`` start, as in the code: uniform in [-a, a), a = 1/√(dim/3)."""
        return L.uniform_bank(n, dim, seed)

    def _build_heads(self, feature_dim: int, cfg: Any) -> tuple[nn.Module, nn.Module]:
        """``heads="code"``: the code's ``embed_s``/``embed_t``, independent, frozen, seeded (seed + 3)."""
        if cfg.heads not in ("code", "ema"):
            raise LesionliteError(f"udcd-code: heads must be 'code' or 'ema', got {cfg.heads!r}")
        if cfg.heads == "ema":
            return super()._build_heads(feature_dim, cfg)
        with torch.random.fork_rng(devices=[]):  # PyTorch's default Linear init, without touching the global RNG
            torch.manual_seed(int(cfg.seed) + 3)
            s_head, t_head = _Embed(feature_dim, cfg.embed_dim), _Embed(feature_dim, cfg.embed_dim)
        for p in s_head.parameters():
            p.requires_grad_(False)
        return s_head, t_head

    def _heads_follow_ema(self) -> bool:
        return self.cfg.heads == "ema"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any, ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        if cfg.negative_policy not in ("clip", "replace_if_short"):
            raise LesionliteError(f"udcd-code: negative_policy must be 'clip' or 'replace_if_short', "
                                  f"got {cfg.negative_policy!r}")
        # CRD's NCEAverage normalisers, frozen at the first batch (-1 = not set yet).
        self.register_buffer("nce_z_s", torch.tensor(-1.0, device=ctx.device))
        self.register_buffer("nce_z_t", torch.tensor(-1.0, device=ctx.device))
        self._z_reported: set[str] = set()

    def _normalise(self, scores: torch.Tensor, which: str) -> torch.Tensor:
        """scores / Z, Z = mean(scores)·N taken from the first batch that reaches here, then frozen."""
        z = getattr(self, which)
        with torch.no_grad():
            z.copy_(torch.where(z < 0, scores.detach().mean() * self.bank_labels.shape[0], z))
        if which not in self._z_reported:  # once per run (one host sync), like the code's print
            self._z_reported.add(which)
            _log.info("udcd-code: NCE normaliser %s = %.1f, frozen from now on (CRD's NCEAverage, as in the "
                      "authors' code); 'ccd' is never renormalised, so it scales like exp(cos/tau) of the "
                      "similarity to other-class bank rows (see the udcd-code docstring)", which, float(z))
        return scores / z.clone()  # the buffer itself may change before a later backward

    def training_loss(self, batch: Batch, epoch: int, step: int) -> LossOutput:
        cfg: UDCDCodeConfig = self.cfg
        x_t, y, idx, out_s = self._student_forward(batch)
        distill = epoch >= cfg.warmup_epochs
        need_cons = distill and cfg.cons_weight != 0
        need_emb = distill and (cfg.ccd_weight != 0 or cfg.rel_weight != 0)
        if need_cons or need_emb:
            t_logits, t_pooled = self._teacher_forward(x_t)
        terms: dict[str, Any] = {}
        with torch.autocast(device_type=y.device.type, enabled=False):
            s_logits = out_s.logits.float()
            total = s_logits.sum() * 0.0
            if cfg.wce_weight != 0:  # the code's CrossEntropyLoss(weight) on one-hot targets: mean over B
                wce = L.weighted_ce(s_logits, y, self.class_weight, denominator="batch")
                total = total + cfg.wce_weight * wce
                terms["wce"] = wce
            ramp = L.sigmoid_rampup(epoch, cfg.cons_rampup_epochs)
            if need_cons:
                cons = L.uncertainty_weighted_kl(t_logits, s_logits, t_logits)
                total = total + cfg.cons_weight * ramp * cons
                terms["cons"] = cons
                terms["rampup"] = ramp
            if need_emb:
                z_s, z_t = self._embeddings(out_s.pooled, t_pooled)
                if cfg.ccd_weight != 0:
                    neg = L.sample_negative_indices(y, self.bank_labels, cfg.nce_k, self._gen(y.device),
                                                    cfg.negative_policy, self._min_negatives)
                    if neg is not None:
                        cidx = torch.cat([idx.unsqueeze(1), neg], dim=1)
                        out_ss = self._normalise(L.nce_scores(z_s, self.memory_t, cidx, cfg.tau), "nce_z_s")
                        with torch.no_grad():
                            out_tt = self._normalise(L.nce_scores(z_t, self.memory_s, cidx, cfg.tau), "nce_z_t")
                        n = self.bank_labels.shape[0]
                        ccd_s, ccd_t = L.nce_loss(out_ss, n), L.nce_loss(out_tt, n)
                        ccd = ccd_s + ccd_t
                        total = total + cfg.ccd_weight * ccd
                        terms.update(ccd=ccd, ccd_s=ccd_s, ccd_t=ccd_t)
                        terms["nce_k"] = float(neg.shape[1])
                # The code's memory writes this batch's rows and returns the UPDATED buffers, from
                # which the class anchors are then taken; the NCE scores above used the old rows.
                self._update_banks(idx, z_s, z_t)
                if cfg.rel_weight != 0:
                    r_s = L.relation_matrix(z_s, L.class_anchors(self.memory_s, self.bank_labels, self.num_classes), cfg.tau)
                    r_t = L.relation_matrix(z_t, L.class_anchors(self.memory_t, self.bank_labels, self.num_classes), cfg.tau)
                    rel = L.uncertainty_weighted_kl(r_s, r_t, r_s)
                    total = total + cfg.rel_weight * rel
                    terms["rel"] = rel
        logs = self._logs({**terms, "distill": float(distill)})  # the loop logs the total itself
        return LossOutput(loss=total, logs=logs, logits=out_s.logits.detach())
