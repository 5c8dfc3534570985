"""Subject-independent k-fold splits (docs/reference.md 4.3, fixed).

The reference selects, for fold k, the subjects at sorted-unique positions
``k * n .. k * n + n - 1`` (``n`` = actors per fold) and uses them for
validation; everything else trains. Here fold k holds out the same block of
subjects for **test**, and the next block (wrapping around) for **validation**,
so that model selection never touches test subjects. No subject is ever in two
splits.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SubjectSplit:
    """Sorted subject ids of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        """JSON-able form (for logging next to a run)."""
        return {k: [int(s) for s in getattr(self, k)] for k in ("train", "val", "test")}


def num_folds_for(num_subjects: int, subjects_per_fold: int) -> int:
    """Number of complete folds: ``num_subjects // subjects_per_fold``."""
    if subjects_per_fold < 1:
        raise ValueError(f"subjects_per_fold must be >= 1, got {subjects_per_fold}")
    return num_subjects // subjects_per_fold


def kfold_subject_split(
    subjects: np.ndarray,
    subjects_per_fold: int,
    fold: int,
    *,
    num_folds: int | None = None,
    val_subjects: int | None = None,
    shuffle_seed: int | None = None,
) -> SubjectSplit:
    """Splits subject ids into train / val / test for one fold.

    Args:
      subjects: subject ids (any order, duplicates allowed: e.g. one per record).
      subjects_per_fold: test subjects per fold.
      fold: fold index in ``[0, num_folds)``.
      num_folds: number of folds (default ``len(unique) // subjects_per_fold``).
      val_subjects: validation subjects (default ``subjects_per_fold``; 0 = no
        validation split). They are the block after the test block, wrapping.
      shuffle_seed: if given, the unique subjects are permuted with this seed
        before blocking (the reference uses sorted order: ``None``).

    Returns:
      The :class:`SubjectSplit`.

    Raises:
      ValueError: on an impossible configuration (bad fold, too few subjects).
    """
    uniq = np.unique(np.asarray(subjects))
    n = len(uniq)
    if subjects_per_fold < 1:
        raise ValueError(f"subjects_per_fold must be >= 1, got {subjects_per_fold}")
    max_folds = n // subjects_per_fold
    if num_folds is None or num_folds <= 0:
        num_folds = max_folds
    if num_folds < 1 or num_folds > max_folds:
        raise ValueError(
            f"num_folds={num_folds} impossible with {n} subjects and subjects_per_fold={subjects_per_fold} "
            f"(at most {max_folds})"
        )
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    if val_subjects is None or val_subjects < 0:
        val_subjects = subjects_per_fold
    if subjects_per_fold + val_subjects >= n:
        raise ValueError(
            f"{n} subjects leave none for training with subjects_per_fold={subjects_per_fold} and "
            f"val_subjects={val_subjects}"
        )
    order = uniq if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(uniq)
    start = fold * subjects_per_fold
    test_pos = np.arange(start, start + subjects_per_fold)
    val_pos = (start + subjects_per_fold + np.arange(val_subjects)) % n
    held = np.zeros(n, bool)
    held[test_pos] = True
    held[val_pos] = True
    return SubjectSplit(
        train=np.sort(order[~held]),
        val=np.sort(order[val_pos]),
        test=np.sort(order[test_pos]),
    )


def split_record_indices(record_subjects: np.ndarray, split: SubjectSplit) -> dict[str, np.ndarray]:
    """Record indices of each split, given each record's subject id.

    Args:
      record_subjects: (N,) subject id of every record.
      split: the subject split.

    Returns:
      ``{"train": idx, "val": idx, "test": idx}`` sorted int64 index arrays.
    """
    record_subjects = np.asarray(record_subjects)
    return {
        name: np.flatnonzero(np.isin(record_subjects, getattr(split, name)))
        for name in ("train", "val", "test")
    }
