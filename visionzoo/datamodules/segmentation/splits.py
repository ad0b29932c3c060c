"""Split protocols of the segmentation DataModules, decided here and nowhere else.

Every protocol yields three disjoint splits: ``train`` (fitted), ``val`` (checkpoint selection and monitoring)
and ``test`` (evaluated once, at the end). Two building blocks:

* :func:`holdout_indices` -- a seeded validation hold-out of ``val_size`` samples (a float in (0, 1): that
  fraction, rounded; an int: that many), stratified by ``groups`` when given (largest-remainder allocation,
  so the total is exact), drawn with ``numpy.random.default_rng(val_seed)``;
* :func:`kfold_indices` -- ``num_folds`` folds over names sorted beforehand: with a ``split_seed`` a seeded
  permutation cut into near-equal folds, with ``split_seed: null`` contiguous folds of ``n // num_folds``
  (QTSeg's protocol: the last ``n % num_folds`` samples are never in a test fold).

Protocols: a release with an official labelled test set (ISIC 2016, FIVES, DRIVE, ADE20K's val, a folder's
own test folder) is :func:`official_split` -- val held out of the official training set, test = the official
set; a release without a split (Kvasir-SEG, BKAI, BUSI, DSB2018, MSD volumes, a flat folder) is
:func:`kfold_split` -- test = fold ``fold``, val held out of the other folds, train = the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ...errors import ConfigError, DatasetError
from .._base import _positive_int

T = TypeVar("T")


@dataclass(frozen=True)
class ValHoldout:
    """``val_size`` (fraction in (0, 1) or a count >= 1) and ``val_seed`` of a validation hold-out."""

    size: float | int
    seed: int

    @classmethod
    def parse(cls, val_size: Any, val_seed: Any) -> ValHoldout:
        fraction = isinstance(val_size, float) and 0.0 < val_size < 1.0
        count = isinstance(val_size, int) and not isinstance(val_size, bool) and val_size >= 1
        if not (fraction or count):
            raise ConfigError(
                f"data.val_size must be a fraction in (0, 1) or a count >= 1, got {val_size!r}."
            )
        if isinstance(val_seed, bool) or not isinstance(val_seed, int):
            raise ConfigError(f"data.val_seed must be an integer, got {val_seed!r}.")
        return cls(val_size, val_seed)

    def count(self, n: int, where: str) -> int:
        """How many of ``n`` samples validate (at least 1, at most ``n - 1``)."""
        k = self.size if isinstance(self.size, int) else max(1, round(self.size * n))
        if n < 2 or k >= n:
            raise DatasetError(
                f"data.val_size={self.size} would hold out {k} of the {n} training samples under '{where}': "
                "expected a smaller val_size, so that some samples still train."
            )
        return k

    def describe(self) -> str:
        amount = f"{self.size:.0%}" if isinstance(self.size, float) else f"{self.size}-sample"
        return f"a seeded {amount} hold-out (val_seed {self.seed})"


def check_fold(fold: Any, num_folds: Any) -> tuple[int, int]:
    num_folds = _positive_int(num_folds, "data.num_folds")
    if num_folds < 2:
        raise ConfigError(f"data.num_folds must be at least 2, got {num_folds}.")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ConfigError(
            f"data.fold must be an integer in [0, {num_folds - 1}] for data.num_folds={num_folds}, got {fold!r}."
        )
    return fold, num_folds


def _by_group(indices: Sequence[int], groups: Sequence[Any] | None) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for i in indices:
        out.setdefault(0 if groups is None else groups[i], []).append(i)
    return {key: out[key] for key in sorted(out, key=str)}


def kfold_indices(
    n: int, num_folds: int, fold: int, seed: int | None, groups: Sequence[Any] | None = None
) -> tuple[list[int], list[int]]:
    """``(rest, fold)`` indices of fold ``fold`` over ``n`` samples already sorted by name.

    ``seed``: permute with ``default_rng(seed)`` then cut into near-equal folds; ``None``: contiguous folds
    of ``n // num_folds`` in sorted order (the remainder is never in a fold). ``groups`` (one key per sample):
    split every group that way and join the parts (stratified folds, e.g. BUSI's benign/malignant).
    """
    picked: list[int] = []
    for idx in _by_group(range(n), groups).values():
        arr = np.asarray(idx)
        if seed is None:
            size = len(arr) // num_folds
            part = arr[fold * size : (fold + 1) * size]
        else:
            part = np.array_split(arr[np.random.default_rng(seed).permutation(len(arr))], num_folds)[fold]
        picked.extend(int(i) for i in part)
    chosen = set(picked)
    return [i for i in range(n) if i not in chosen], sorted(picked)


def holdout_indices(
    indices: Sequence[int], holdout: ValHoldout, where: str, groups: Sequence[Any] | None = None
) -> tuple[list[int], list[int]]:
    """``(train, val)``: ``holdout.count`` of ``indices`` drawn per group (largest remainder), seeded."""
    indices = list(indices)
    total = holdout.count(len(indices), where)
    parts = _by_group(indices, groups)
    quotas = {g: total * len(idx) / len(indices) for g, idx in parts.items()}
    take = {g: int(q) for g, q in quotas.items()}
    by_remainder = sorted(parts, key=lambda g: -(quotas[g] - take[g]))  # stable: ties keep group order
    for g in by_remainder[: total - sum(take.values())]:
        take[g] += 1
    val: list[int] = []
    for g, idx in parts.items():
        perm = np.random.default_rng(holdout.seed).permutation(len(idx))
        val.extend(idx[int(j)] for j in perm[: take[g]])
    chosen = set(val)
    return [i for i in indices if i not in chosen], sorted(val)


def _pick(items: Sequence[T], idx: Sequence[int]) -> list[T]:
    return [items[i] for i in idx]


def official_split(
    train: Sequence[T],
    test: Sequence[T],
    holdout: ValHoldout,
    where: str,
    groups: Sequence[Any] | None = None,
    names: tuple[str, str] = ("the official training set", "the official test set"),
) -> tuple[dict[str, list[T]], dict[str, str]]:
    """``({train, val, test}, {split: source})``: val held out of the official training set, test = the official
    test set. ``groups`` (one key per training sample) stratify the hold-out."""
    tr, va = holdout_indices(range(len(train)), holdout, where, groups)
    strat = ", stratified by class," if groups is not None else ""
    sources = {
        "train": f"{names[0]} minus the validation hold-out",
        "val": f"{holdout.describe()}{strat} of {names[0]}",
        "test": names[1],
    }
    return {"train": _pick(train, tr), "val": _pick(train, va), "test": list(test)}, sources


def kfold_split(
    samples: Sequence[T],
    fold: int,
    num_folds: int,
    split_seed: int | None,
    holdout: ValHoldout,
    where: str,
    groups: Sequence[Any] | None = None,
) -> tuple[dict[str, list[T]], dict[str, str]]:
    """``({train, val, test}, {split: source})``: test = fold ``fold`` of ``num_folds``, val held out of the
    other folds (stratified by ``groups`` like the folds), train = the rest. ``samples`` must be in a fixed
    order (sorted by name)."""
    if len(samples) < num_folds:
        raise DatasetError(
            f"only {len(samples)} labelled images were found under '{where}': a {num_folds}-fold split needs at least {num_folds}."
        )
    rest, test = kfold_indices(len(samples), num_folds, fold, split_seed, groups)
    tr, va = holdout_indices(rest, holdout, where, groups)
    how = "contiguous folds of the sorted names" if split_seed is None else f"split_seed {split_seed}"
    strat = ", stratified by class" if groups is not None else ""
    sources = {
        "train": f"folds other than {fold} of {num_folds} ({how}{strat}) minus the validation hold-out",
        "val": f"{holdout.describe()}{strat.rstrip(',')}, of the folds other than {fold}"
        if groups is not None
        else f"{holdout.describe()} of the folds other than {fold}",
        "test": f"fold {fold} of {num_folds} ({how}{strat})",
    }
    return {"train": _pick(samples, tr), "val": _pick(samples, va), "test": _pick(samples, test)}, sources
