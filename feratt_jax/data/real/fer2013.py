"""FER2013 and FER+: native layout and labels (docs/data.md 6.4-6.5, docs/reference.md 5.1).

FER2013 is one CSV, ``fer2013.csv``, with columns ``emotion,pixels,Usage``:
48x48 grey faces as 2,304 space-separated values, labels 0 angry,
1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral (7 classes), and
Usage Training / PublicTest / PrivateTest (train / val / test).

FER+ relabels the same images: ``fer2013new.csv`` has, row for row, the
Usage, an image name and 10 vote columns (neutral, happiness, surprise,
sadness, anger, disgust, fear, contempt, unknown, NF). The label is the
reference's "majority" rule: votes of 1 are zeroed as outliers, the top
class needs more than half of the remaining votes, and faces whose winner
is unknown / not-a-face (or that have no majority) are dropped. The first
eight vote columns are the unified order itself.

The faces are pre-cropped, so no detection runs: an ellipse inscribed in
the frame masks them.
"""

from __future__ import annotations

import pathlib

import numpy as np

from feratt_jax.data.real.items import Listing, RawItem, first_existing, map_code, parse_int, read_csv_rows, relative
from feratt_jax.data.real.records import PARTITION_TEST, PARTITION_TRAIN, PARTITION_VAL

# FER2013 code -> unified label.
FER2013_TO_UNIFIED = {0: 4, 1: 5, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}
USAGE_TO_PARTITION = {"Training": PARTITION_TRAIN, "PublicTest": PARTITION_VAL, "PrivateTest": PARTITION_TEST}
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FERPLUS_VOTE_COLUMNS = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF",
)
FERPLUS_COLUMNS = ("Usage", *FERPLUS_VOTE_COLUMNS)
_FER2013_PLACES = ("fer2013.csv", "fer2013/fer2013.csv")
_FERPLUS_PLACES = ("fer2013new.csv", "FERPlus/fer2013new.csv", "FERPlus-master/fer2013new.csv")


def _fer2013_rows(raw_dir: pathlib.Path, listing: Listing) -> tuple[pathlib.Path, list[tuple[int, dict]]]:
    csv_path = first_existing(raw_dir, _FER2013_PLACES, "FER2013 CSV (fer2013.csv)", is_dir=False)
    rows = list(read_csv_rows(csv_path, FER2013_COLUMNS, listing.skips, relative(csv_path, raw_dir)))
    return csv_path, rows


def list_items(raw_dir: pathlib.Path) -> Listing:
    """Lists FER2013 with its own 7 labels.

    Raises:
      FileNotFoundError: no ``fer2013.csv``.
      ValueError: the CSV lacks a column (names the file and line 1).
    """
    listing = Listing(items=[], num_classes=7)
    csv_path, rows = _fer2013_rows(raw_dir, listing)
    where = relative(csv_path, raw_dir)
    for line, row in rows:
        source = f"{where}:{line}"
        try:
            label = map_code(parse_int(row["emotion"]), FER2013_TO_UNIFIED)
            partition = map_code(row["Usage"].strip(), USAGE_TO_PARTITION)
        except ValueError as err:
            listing.skips.append((source, str(err)))
            continue
        listing.items.append(
            RawItem(
                source=source, label=label, subject=None, partition=partition, pixels=row["pixels"], pre_cropped=True
            )
        )
    return listing


def majority_label(votes: np.ndarray) -> int | None:
    """FER+ "majority" label from the 10 vote counts, or ``None`` (no majority / unknown / not a face)."""
    v = np.asarray(votes, np.int64).copy()
    v[v == 1] = 0  # single votes are outliers
    total = int(v.sum())
    if total == 0:
        return None
    top = int(np.argmax(v))
    if v[top] * 2 <= total or top >= 8:  # needs > half; 8 unknown and 9 NF are dropped
        return None
    return top


def list_items_ferplus(raw_dir: pathlib.Path) -> Listing:
    """Lists FER+ (FER2013 pixels, FER+ majority labels, 8 classes).

    Raises:
      FileNotFoundError: ``fer2013.csv`` or ``fer2013new.csv`` is missing.
      ValueError: a CSV lacks a column, or the two CSVs differ in length.
    """
    listing = Listing(items=[], num_classes=8)
    csv_path, pixel_rows = _fer2013_rows(raw_dir, listing)
    where = relative(csv_path, raw_dir)
    votes_path = first_existing(raw_dir, _FERPLUS_PLACES, "FER+ labels (fer2013new.csv)", is_dir=False)
    votes_where = relative(votes_path, raw_dir)
    vote_rows = list(read_csv_rows(votes_path, FERPLUS_COLUMNS, listing.skips, votes_where))
    if listing.skips:
        # A malformed row shifts the row-for-row pairing of the two files: refuse to guess.
        raise ValueError(
            f"cannot pair {csv_path} with {votes_path} row for row: malformed rows at "
            + ", ".join(w for w, _ in listing.skips[:5])
        )
    if len(vote_rows) != len(pixel_rows):
        raise ValueError(
            f"{votes_path} has {len(vote_rows)} rows but {csv_path} has {len(pixel_rows)}; they must match"
        )
    for (line, row), (vline, vrow) in zip(pixel_rows, vote_rows):
        source = f"{where}:{line}"
        try:
            votes = np.array([parse_int(vrow[c]) for c in FERPLUS_VOTE_COLUMNS])
            if votes.min() < 0:
                raise ValueError("negative vote count")
            partition = map_code(vrow["Usage"].strip(), USAGE_TO_PARTITION)
        except ValueError as err:
            listing.skips.append((f"{votes_where}:{vline}", str(err)))
            continue
        label = majority_label(votes)
        if label is None:
            listing.dropped["no majority, unknown or not a face"] += 1
            continue
        listing.items.append(
            RawItem(
                source=source, label=label, subject=None, partition=partition, pixels=row["pixels"], pre_cropped=True
            )
        )
    return listing
