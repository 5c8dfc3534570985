"""A class-per-folder image tree (Kaggle's FER2013 images, RAF-DB's folders, your own photos).

Two layouts under the raw folder::

    DIR/<class>/*.png                      (no official split)
    DIR/{train,val,test}/<class>/*.jpg     (the official split; ``validation``,
                                            ``valid``, ``PublicTest``, ``PrivateTest``
                                            are accepted spellings)

Class folders are matched to the unified order by name, case-insensitively,
with the usual synonyms (``happy``, ``angry``, ``sad``, ``surprised``,
``disgusted``, ``fearful``, ...). A name that matches nothing stops the
listing with an error listing every such name and the ``--class-map
name=label,...`` that maps them (``name=drop`` leaves a folder out).

Subjects come from an optional CSV ``path,subject`` (``path`` relative to the
raw folder); without it every image is its own subject, so k-fold splits are
then not subject-independent (the listing notes it).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from feratt_jax import EXPRESSION_NAMES
from feratt_jax.data.real.items import IMAGE_SUFFIXES, Listing, RawItem, image_files, read_csv_rows, relative, require_dir
from feratt_jax.data.real.records import PARTITION_NONE, PARTITION_TEST, PARTITION_TRAIN, PARTITION_VAL

DROP = "drop"  # --class-map value that leaves a folder out
CONTEMPT = EXPRESSION_NAMES.index("contempt")

# Folder-name spellings -> unified label (the unified names themselves are added below).
SYNONYMS = {
    "happy": 1,
    "joy": 1,
    "surprised": 2,
    "sad": 3,
    "angry": 4,
    "anger": 4,
    "disgusted": 5,
    "fearful": 6,
    "afraid": 6,
    "scared": 6,
    "contemptuous": 7,
    "neutrality": 0,
    "calm": 0,
}
NAME_TO_LABEL = {**{n: i for i, n in enumerate(EXPRESSION_NAMES)}, **SYNONYMS}

SPLIT_NAMES = {
    "train": PARTITION_TRAIN,
    "training": PARTITION_TRAIN,
    "val": PARTITION_VAL,
    "valid": PARTITION_VAL,
    "validation": PARTITION_VAL,
    "publictest": PARTITION_VAL,
    "test": PARTITION_TEST,
    "privatetest": PARTITION_TEST,
}


def label_of(name: str) -> int | None:
    """A class name or synonym (any case, ``_``/``-``/spaces ignored) -> unified label, else None."""
    key = name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")
    return NAME_TO_LABEL.get(key)


def parse_class_map(text: str | None) -> dict[str, int | None]:
    """``"glad=happy,3=sadness,misc=drop"`` -> ``{"glad": 1, "3": 3, "misc": None}``.

    Values are unified names, their synonyms, or indices 0-7; ``drop`` leaves
    the folder out.

    Raises:
      ValueError: a malformed entry or an unknown label (names the entry).
    """
    out: dict[str, int | None] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, sep, value = entry.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"--class-map entry {entry.strip()!r} is not NAME=LABEL")
        if value.lower() == DROP:
            out[name] = None
        elif value.isdigit() and int(value) < len(EXPRESSION_NAMES):
            out[name] = int(value)
        elif label_of(value) is not None:
            out[name] = label_of(value)
        else:
            raise ValueError(
                f"--class-map entry {entry.strip()!r}: unknown label {value!r}; use one of "
                f"{', '.join(EXPRESSION_NAMES)}, an index 0-{len(EXPRESSION_NAMES) - 1}, or {DROP}"
            )
    return out


def _subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_folders(raw_dir: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """``[(partition, folder holding class folders)]``: the split folders, or the raw folder itself.

    Raises:
      ValueError: split folders mixed with class folders at the top.
    """
    tops = _subdirs(raw_dir)
    splits = [(SPLIT_NAMES[p.name.lower()], p) for p in tops if p.name.lower() in SPLIT_NAMES]
    if not splits:
        return [(PARTITION_NONE, raw_dir)]
    others = [p.name for p in tops if p.name.lower() not in SPLIT_NAMES]
    if others:
        raise ValueError(
            f"{raw_dir} mixes split folders ({', '.join(p.name for _, p in splits)}) with other folders "
            f"({', '.join(others)}); use either DIR/<class>/ or DIR/{{train,val,test}}/<class>/"
        )
    return splits


def read_subjects_csv(path: pathlib.Path, skips: list[tuple[str, str]]) -> dict[str, str]:
    """CSV ``path,subject`` -> ``{path relative to the raw folder: subject name}``."""
    out: dict[str, str] = {}
    for line, row in read_csv_rows(path, ["path", "subject"], skips, path.name):
        subject = row["subject"].strip()
        if not subject:
            skips.append((f"{path.name}:{line}", "empty subject"))
            continue
        out[row["path"].strip().replace("\\", "/")] = subject
    return out


def list_items(
    raw_dir: pathlib.Path,
    *,
    class_map: Mapping[str, int | None] | None = None,
    subjects_csv: pathlib.Path | None = None,
) -> Listing:
    """Lists the images of a class-per-folder tree.

    Args:
      raw_dir: the tree (see the module docstring).
      class_map: folder name -> unified label, or None to drop the folder;
        consulted before the built-in names.
      subjects_csv: optional ``path,subject`` CSV.

    Returns:
      The :class:`Listing`; 8 classes when a folder maps to contempt, else 7.

    Raises:
      FileNotFoundError: ``raw_dir`` (or the CSV) is missing, or holds no images.
      ValueError: class folders whose names map to nothing (all listed), or a
        split layout mixed with class folders.
    """
    require_dir(raw_dir, "image tree (DIR/<class>/*.png or DIR/{train,val,test}/<class>/*.png)")
    class_map = dict(class_map or {})
    listing = Listing(items=[], num_classes=7)
    splits = _split_folders(raw_dir)
    classes: list[tuple[int, pathlib.Path, int | None]] = []
    unknown: set[str] = set()
    for partition, base in splits:
        for folder in _subdirs(base):
            label = class_map[folder.name] if folder.name in class_map else label_of(folder.name)
            if folder.name not in class_map and label is None:
                unknown.add(folder.name)
            classes.append((partition, folder, label))
    if unknown:
        names = sorted(unknown)
        raise ValueError(
            f"{raw_dir}: class folder(s) {', '.join(names)} match no expression "
            f"({', '.join(EXPRESSION_NAMES)}); map them with --class-map "
            + ",".join(f"{n}=LABEL" for n in names)
            + f" (LABEL a name, an index 0-7, or {DROP})"
        )
    if not classes:
        raise FileNotFoundError(f"no class folders under {raw_dir} (expected DIR/<class>/*.png)")

    for partition, folder, label in classes:
        files = image_files(folder)
        if label is None:
            listing.dropped[f"class folder {relative(folder, raw_dir)} (--class-map {DROP})"] += len(files)
            continue
        if not files:
            listing.notes.append(f"class folder {relative(folder, raw_dir)} holds no images")
            continue
        for path in files:
            listing.items.append(
                RawItem(source=relative(path, raw_dir), label=label, subject=None, partition=partition, image_path=str(path))
            )
    if not listing.items:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders under {raw_dir}")
    if any(it.label == CONTEMPT for it in listing.items):
        listing.num_classes = len(EXPRESSION_NAMES)

    if subjects_csv is not None:
        subjects = read_subjects_csv(subjects_csv, listing.skips)
        for it in listing.items:
            it.subject = subjects.get(it.source)
        missing = sum(it.subject is None for it in listing.items)
        listing.notes.append(
            f"subjects CSV: {len(listing.items) - missing} of {len(listing.items)} images have a subject"
            + (f"; the other {missing} count as one subject each" if missing else "")
        )
    else:
        listing.notes.append(
            "no --subjects-csv: every image is its own subject, so k-fold splits of this folder are "
            "not subject-independent"
        )
    return listing

