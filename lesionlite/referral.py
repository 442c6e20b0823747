"""Referral targets: which probabilities make up the score a clinic thresholds (numpy only, one definition
for export, evaluate and serve).

A target names its *positive* classes and, optionally, the classes the score is *conditioned on*:

- ``mel``: P(melanoma) — the melanoma probability among all classes.
- ``malignant``: P(mel) + P(bcc) + P(akiec/AK/SCC) among all classes.
- ``melanocytic``: P(melanoma | melanocytic) = P(mel) / (P(mel) + P(nv)) — the second step of the two-step
  dermoscopy algorithm (first: is the lesion melanocytic; second: is the melanocytic lesion a melanoma). It
  ignores the probability a shifted image leaks into classes the lesion is not (another clinic's
  illumination pushes mass into ``vasc``/``bcc``; benchmarks/RESULTS.md section 8f measures what that does).
  It says nothing about non-melanocytic lesions: a lesion the model calls vascular can still score high,
  so it is a melanoma triage score, not a "refer anything malignant" one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lesionlite.classes import MALIGNANT, canonical
from lesionlite.errors import LesionliteError


@dataclass(frozen=True)
class ReferralTarget:
    """Positive classes and the classes the score is conditioned on (None: every class)."""

    name: str
    description: str
    positives: tuple[str, ...]
    given: tuple[str, ...] | None = None


TARGETS: dict[str, ReferralTarget] = {t.name: t for t in (
    ReferralTarget("mel", "P(melanoma)", ("mel",)),
    ReferralTarget("malignant", "P(mel) + P(bcc) + P(akiec)", MALIGNANT),
    ReferralTarget("melanocytic", "P(melanoma | melanocytic) = P(mel) / (P(mel) + P(nv))", ("mel",), ("mel", "nv")),
)}


#: the default target: ``melanocytic`` where the model has both mel and nv, else ``mel`` (chosen between
#: the named scores on the external dev half, RESULTS.md 8f; internally the two rank alike)
AUTO = "auto"
DEFAULT_TARGET = AUTO
CHOICES = (AUTO, *TARGETS)


def resolve_target(class_names: Sequence[str], target: str) -> str:
    """``auto`` → ``melanocytic`` when the model has mel and nv, else ``mel``; any other name unchanged."""
    if target != AUTO:
        return target
    has = {canonical(c) for c in class_names} | {str(c).lower() for c in class_names}
    return "melanocytic" if {"mel", "nv"} <= has else "mel"


def _indices(class_names: Sequence[str], codes: Sequence[str]) -> list[int]:
    return [j for j, c in enumerate(class_names) if canonical(c) in codes or str(c).lower() in codes]


def get_target(target: str) -> ReferralTarget | None:
    """The target called ``target`` (None for ``auto``, resolved per model), or a clear error naming the choices."""
    if target == AUTO:
        return None
    if target not in TARGETS:
        raise LesionliteError(f"unknown operating-point target {target!r}; choose from {', '.join(CHOICES)}")
    return TARGETS[target]


def target_classes(class_names: Sequence[str], target: str) -> tuple[list[int], list[int] | None]:
    """(positive output indices, conditioning output indices or None) of ``target`` for these classes."""
    target = resolve_target(class_names, target)
    t = get_target(target)
    assert t is not None
    pos = _indices(class_names, t.positives)
    if not pos:
        raise LesionliteError(f"the model's classes ({', '.join(class_names)}) have none for target {target!r}")
    if t.given is None:
        return pos, None
    given = _indices(class_names, t.given)
    if len(given) != len(t.given):
        raise LesionliteError(f"target {target!r} needs the classes {', '.join(t.given)}; the model has "
                              f"{', '.join(class_names)}")
    return pos, given


def referral_scores(probs: np.ndarray, positives: Sequence[int], given: Sequence[int] | None = None) -> np.ndarray:
    """Per image: the summed probability of ``positives``, divided by that of ``given`` when it is set
    (0 where the conditioning classes have no probability at all)."""
    p = np.asarray(probs, dtype=np.float64)
    num = p[:, list(positives)].sum(axis=1)
    if given is None:
        return num
    den = p[:, list(given)].sum(axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def referral_score(p: np.ndarray, positives: Sequence[int], given: Sequence[int] | None = None) -> float:
    """:func:`referral_scores` for one image's probabilities ``p`` (1-D), equal to it bit for bit (the same numpy
    sums, on the row itself). Why a second form: ``serve`` scores one image per request on its event loop, where
    the batch form's 2-D copies and masked divide cost ~15 µs (benchmarks/RESULTS.md 3a)."""
    if not positives:
        return 0.0
    score = float(p[list(positives)].sum())
    if given is None:
        return score
    den = float(p[list(given)].sum())
    return score / den if den > 0 else 0.0


def operating_point_indices(class_names: Sequence[str], op: dict) -> tuple[list[int], list[int] | None]:
    """(positive output indices, conditioning output indices or None) of a stored operating point (a manifest's
    ``calibration.operating_point``) for these classes. Older manifests carry no ``given_classes``: None."""
    names = list(class_names)
    pos = [names.index(c) for c in op.get("positive_classes", []) if c in names]
    given_names = op.get("given_classes")
    return pos, (None if not given_names else [names.index(c) for c in given_names if c in names])


def scores_for_operating_point(probs: np.ndarray, class_names: Sequence[str], op: dict) -> np.ndarray:
    """The scores of a stored operating point for ``probs`` (N, C) — what serve thresholds."""
    pos, given = operating_point_indices(class_names, op)
    return referral_scores(np.atleast_2d(probs), pos, given)


def describe_score(op: dict) -> str:
    """The score of a stored operating point in words for reports: ``P(mel)``, ``P(akiec + bcc + mel)``,
    ``P(mel | mel or nv)``."""
    score = f"P({' + '.join(op.get('positive_classes', []))}"
    given = op.get("given_classes")
    return f"{score} | {' or '.join(given)})" if given else f"{score})"
