"""Real-data loading: a prepared dataset (or its TFDS build) as a face bank, and its official partition as a split."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from feratt_jax.data import synthfaces
from feratt_jax.data.real import NUM_CLASSES
from feratt_jax.data.real.records import (
    PARTITION_TEST,
    PARTITION_TRAIN,
    PARTITION_VAL,
    load_prepared_bank,
    read_manifest,
    resolve_prepared_dir,
)
from feratt_jax.data.splits import SubjectSplit
from feratt_jax.data.tfds_builders import load_tfds_bank

log = logging.getLogger(__name__)


def load_real_bank(source: str, num_classes: int) -> dict[str, np.ndarray]:
    """A prepared real dataset as a face bank, keeping labels < ``num_classes``.

    Args:
      source: a dataset name, a prepared folder or ``tfds:<dataset>`` (see ``DataConfig.source``).
      num_classes: the model's classes; e.g. CK+'s contempt (7) is left out at 7.

    Raises:
      FileNotFoundError: not prepared (the message gives the prepare command).
      ValueError: no record left.
    """
    if source.startswith("tfds:"):
        folder = source
        bank = load_tfds_bank(source.removeprefix("tfds:"))
        dataset_classes = NUM_CLASSES[source.removeprefix("tfds:")]
    else:
        folder = resolve_prepared_dir(source)
        bank = load_prepared_bank(folder)
        dataset_classes = int(read_manifest(folder).get("num_classes", synthfaces.NUM_CLASSES))
    keep = bank["label"] < num_classes
    if not keep.all():
        log.warning("%s: leaving out %d records with labels >= num_classes=%d", folder, int((~keep).sum()), num_classes)
        bank = {k: v[keep] for k, v in bank.items()}
    if dataset_classes < num_classes:
        log.warning(
            "%s has %d classes but model.num_classes=%d: the extra logits never see a sample",
            folder, dataset_classes, num_classes,
        )
    if len(bank["label"]) == 0:
        raise ValueError(f"{folder}: no record has a label below num_classes={num_classes}")
    log.info("loaded %d real faces from %s", len(bank["label"]), folder)
    return bank


def official_split(bank: Mapping[str, np.ndarray], val_subjects: int = -1) -> SubjectSplit:
    """The dataset's own train/val/test partition as a :class:`SubjectSplit`.

    Datasets with official partitions have no identities (every image is its
    own subject), so subject sets and record sets coincide. Without an
    official val partition, every 10th train subject (in id order) becomes
    validation, unless ``val_subjects == 0``.

    Raises:
      ValueError: the bank has no official partition.
    """
    part = bank.get("partition")
    if part is None or not np.isin(part, (PARTITION_TRAIN, PARTITION_VAL, PARTITION_TEST)).any():
        raise ValueError("this dataset has no official train/val/test partition; use data.split='kfold'")
    subjects = np.asarray(bank["subject"])
    train, val, test = (np.unique(subjects[part == p]) for p in (PARTITION_TRAIN, PARTITION_VAL, PARTITION_TEST))
    if len(val) == 0 and val_subjects != 0:
        val, train = train[::10], np.setdiff1d(train, train[::10])
    return SubjectSplit(train=train, val=val, test=test)
