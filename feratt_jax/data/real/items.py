"""What the dataset modules hand to the converter: raw items, listings, CSV and label helpers.

Each dataset module has ``list_items(raw_dir, options) -> Listing``. Listing
only parses the native layout (names, label files, CSV rows); the images are
read and aligned later, chunk by chunk, by :mod:`.prepare`. Problems found
while listing (unknown label codes, malformed rows, missing images) become
``(where, why)`` skip entries naming the file and, for text files, the line;
a missing folder or a CSV without its columns is an error instead, since
nothing could be converted.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from feratt_jax.data.real.align import to_grey
from feratt_jax.data.real.records import PARTITION_NONE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


@dataclasses.dataclass
class RawItem:
    """One face to convert.

    Attributes:
      source: where it comes from, relative to the raw folder: a file, or
        ``file.csv:LINE`` for CSV rows. Stored per record and used in reports.
      label: label in the unified order.
      subject: identity name; ``None`` when the dataset has none (each image
        then counts as its own subject).
      partition: official partition (``records.PARTITION_*``).
      image_path: the image file, if the pixels are in a file.
      pixels: space-separated grey values (FER2013's ``pixels`` column).
      pixels_shape: (H, W) of ``pixels``.
      landmarks: (68, 2) landmarks in source pixels, if known.
      face_box: ``(x, y, width, height)`` from the dataset, if known.
      pre_cropped: the image is already a face crop (no detection).
      source_index: position in the listing (set by the converter).
      subject_id: dense subject id (set by the converter).
    """

    source: str
    label: int
    subject: str | None
    partition: int = PARTITION_NONE
    image_path: str | None = None
    pixels: str | None = None
    pixels_shape: tuple[int, int] = (48, 48)
    landmarks: np.ndarray | None = None
    face_box: tuple[float, float, float, float] | None = None
    pre_cropped: bool = False
    source_index: int = -1
    subject_id: int = -1

    def load_grey(self) -> np.ndarray:
        """The item's (H, W) grey image in [0, 255].

        Raises:
          ValueError: unreadable or corrupt image, or malformed pixel values.
        """
        if self.pixels is not None:
            h, w = self.pixels_shape
            try:
                values = np.array(self.pixels.split(), dtype=np.float64)
            except ValueError:
                raise ValueError("pixels are not all numbers") from None
            if values.size != h * w:
                raise ValueError(f"pixels has {values.size} values, expected {h}x{w}={h * w}")
            if values.min(initial=0) < 0 or values.max(initial=0) > 255:
                raise ValueError("pixel values outside 0..255")
            return values.reshape(h, w)
        if self.image_path is None:
            raise ValueError("item has neither an image file nor pixels")
        return to_grey(read_image(self.image_path))

    def fingerprint_key(self) -> tuple[Any, ...]:
        """What identifies the item for resume checks (not its pixels)."""
        return (self.source, self.label, self.subject, self.partition)


@dataclasses.dataclass
class Listing:
    """A dataset's items plus what was left out while listing them.

    Attributes:
      items: the faces to convert, in a deterministic order.
      num_classes: the dataset's class count (7 without contempt, else 8).
      skips: ``(where, why)`` for inputs that could not be used (errors).
      dropped: counts of inputs left out by the dataset's protocol (e.g.
        AffectNet codes 8-10, FER+ faces without a majority), by reason.
      notes: remarks for the report (e.g. "no Landmarks/ folder").
    """

    items: list[RawItem]
    num_classes: int
    skips: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file; any decoder failure becomes a ValueError (for the skip report)."""
    import warnings

    import skimage.io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. tifffile's notes about odd TIFF tags
            image = skimage.io.imread(str(path))
    except FileNotFoundError:
        raise ValueError("image file not found") from None
    except Exception as err:  # PIL, imageio and tifffile raise many types on corrupt files
        raise ValueError(f"cannot read image ({type(err).__name__}: {err})") from None
    if image is None or np.asarray(image).size == 0:
        raise ValueError("cannot read image (empty)")
    return np.asarray(image)


def require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
    """``path`` if it is a folder, else a FileNotFoundError naming it and what it should hold."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist")
    return path


def first_existing(base: pathlib.Path, candidates: Sequence[str], what: str, *, is_dir: bool) -> pathlib.Path:
    """The first of ``base / c`` that exists (as a folder or a file).

    Raises:
      FileNotFoundError: none exists; the message lists the places tried.
    """
    for c in candidates:
        p = base / c
        if (p.is_dir() if is_dir else p.is_file()):
            return p
    tried = ", ".join(str(base / c) for c in candidates)
    raise FileNotFoundError(f"{what} not found; looked for {tried}")


def relative(path: pathlib.Path, base: pathlib.Path) -> str:
    """``path`` relative to ``base`` with forward slashes (for reports and records)."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Image files under ``folder`` (recursive, sorted), hidden files excluded."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_csv_rows(
    path: pathlib.Path,
    required: Sequence[str],
    skips: list[tuple[str, str]],
    where: str,
) -> Iterator[tuple[int, Mapping[str, str]]]:
    """Rows of a CSV with a header, as ``(line number, {column: value})``.

    Args:
      path: the CSV file.
      required: columns that must be in the header.
      skips: rows with the wrong number of fields are appended here as
        ``("<where>:LINE", why)`` and not yielded.
      where: the file's name in reports (relative to the raw folder).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the header lacks required columns (names the file, line 1).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}:1: empty file, expected a header with columns {list(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}:1: missing columns {missing} (header has {header})")
        for row in reader:
            line = reader.line_num
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                skips.append((f"{where}:{line}", f"expected {len(header)} fields, got {len(row)}"))
                continue
            yield line, dict(zip(header, row))


def parse_int(text: str) -> int:
    """An integer label code written as ``3``, ``3.0`` or ``3.0000000e+00``; ValueError otherwise."""
    value = float(text.strip())
    if not np.isfinite(value) or value != int(value):
        raise ValueError(f"not an integer: {text.strip()!r}")
    return int(value)


def map_code(code: Any, table: Mapping[Any, int]) -> int:
    """Maps a native label code to the unified order; ValueError naming the unknown code."""
    if code not in table:
        raise ValueError(f"unknown label code {code!r} (known: {sorted(table)})")
    return table[code]


def parse_landmark_text(text: str) -> np.ndarray:
    """68 ``x y`` lines (CK+ ``*_landmarks.txt`` style) -> (68, 2); ValueError if malformed."""
    values = np.array(text.split(), dtype=np.float64)
    if values.size != 136:
        raise ValueError(f"expected 68 x 2 = 136 numbers, got {values.size}")
    return values.reshape(68, 2)
