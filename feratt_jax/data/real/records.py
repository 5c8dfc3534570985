"""On-disk layout of a prepared dataset: records, chunked writers that resume, loading.

A prepared folder holds:

* ``manifest.json``: written last, so its presence means "complete"
  (dataset, format, files, counts, class and method names, subject names);
* the records, in one of three formats:

  - ``npz``: one ``<dataset>.npz`` of stacked arrays (CK+, JAFFE, BU-3DFE, RAF-DB);
  - ``array_record``: ``<dataset>-KKKKK-of-NNNNN.array_record`` shards that
    ``grain.sources.ArrayRecordDataSource`` reads (AffectNet, FER2013, FER+);
  - ``npz_shards``: the same shards as ``.npz`` files, used when
    ``array_record`` cannot be imported;

* ``skipped.tsv``: every input that was skipped, with the file (and line) and why;
* while converting, ``.progress/``: the conversion's fingerprint, per-chunk
  statistics and skip lists, and (``npz`` format) the finished chunks.

Conversion runs chunk by chunk; each chunk's file is written to a temporary
name and renamed, so a chunk on disk is always complete. A rerun with the same
inputs skips finished chunks (resume); a rerun with other inputs refuses to
mix them unless told to overwrite.

Each record is one element of :data:`RECORD_DTYPE`, a fixed-size numpy
structured type, so an ArrayRecord entry is just its raw bytes and a shard
decodes with one ``np.frombuffer``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from feratt_jax.data.real import DATASETS
from feratt_jax.data.real.align import FACE_SIZE, METHOD_NAMES, NUM_LANDMARKS

# Bump when RECORD_DTYPE or the folder layout changes.
RECORD_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SKIPPED_NAME = "skipped.tsv"
PROGRESS_DIR = ".progress"
FORMATS = ("npz", "array_record", "npz_shards")

# Official partitions, per record (``data.split=official`` uses them).
PARTITION_TRAIN, PARTITION_VAL, PARTITION_TEST, PARTITION_NONE = 0, 1, 2, 255
PARTITION_NAMES = {PARTITION_TRAIN: "train", PARTITION_VAL: "val", PARTITION_TEST: "test", PARTITION_NONE: "none"}

# Longest stored source reference ("path/inside/raw/dir" or "file.csv:LINE").
SOURCE_CHARS = 160

RECORD_DTYPE = np.dtype(
    [
        ("image", np.uint8, (FACE_SIZE, FACE_SIZE)),  # dark face, as synthfaces
        ("mask", np.uint8, (FACE_SIZE, FACE_SIZE)),  # soft mask 0..255
        ("landmarks", np.float32, (NUM_LANDMARKS, 2)),  # output pixels; NaN without landmarks
        ("label", np.int32),  # unified order (feratt_jax.EXPRESSION_NAMES)
        ("subject", np.int32),  # dense subject id (names in the manifest)
        ("source_index", np.int64),  # position of the input in the dataset's listing
        ("method", np.uint8),  # align.Method
        ("partition", np.uint8),  # PARTITION_*
        ("source", f"U{SOURCE_CHARS}"),  # the input file (and line), relative to the raw dir
    ]
)

# Array keys of a prepared bank on disk (``npz``) and in memory (plus "index", "action_units").
RECORD_KEYS = tuple(RECORD_DTYPE.names)
NUM_ACTION_UNITS = 20  # len(synthfaces.AU_NAMES); real data has no AU annotation


def array_record_available() -> bool:
    """Whether the ``array_record`` writer can be imported (it comes with grain)."""
    try:
        from array_record.python import array_record_module  # noqa: F401
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` on success.

    Readers (and a resumed conversion) therefore never see a partial file: a
    crash leaves only a ``.tmp-*`` file, which the next run deletes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Writes JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def _save_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Saves arrays as an uncompressed ``.npz`` atomically (faces barely compress; loads stay fast)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def structured_to_arrays(records: np.ndarray) -> dict[str, np.ndarray]:
    """A :data:`RECORD_DTYPE` array -> dict of plain (contiguous) arrays."""
    return {k: np.ascontiguousarray(records[k]) for k in RECORD_KEYS}


def arrays_to_structured(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Dict of plain arrays -> a :data:`RECORD_DTYPE` array."""
    n = len(arrays["label"])
    out = np.zeros(n, RECORD_DTYPE)
    for k in RECORD_KEYS:
        out[k] = arrays[k]
    return out


# ---------------------------------------------------------------------------
# Chunk writers
# ---------------------------------------------------------------------------


class ChunkStore:
    """Where the chunks of one conversion go, and whether each is finished.

    Picklable (worker processes write their own chunks).

    Attributes:
      out_dir: the prepared folder.
      dataset: dataset name (file prefix).
      format: one of :data:`FORMATS`.
      num_chunks: number of chunks of the conversion.
    """

    def __init__(self, out_dir: str | os.PathLike, dataset: str, format: str, num_chunks: int):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.out_dir = pathlib.Path(out_dir)
        self.dataset = dataset
        self.format = format
        self.num_chunks = int(num_chunks)

    @property
    def progress_dir(self) -> pathlib.Path:
        return self.out_dir / PROGRESS_DIR

    def data_path(self, k: int) -> pathlib.Path:
        """Path of chunk ``k``'s records."""
        name = f"{self.dataset}-{k:05d}-of-{self.num_chunks:05d}"
        if self.format == "array_record":
            return self.out_dir / f"{name}.array_record"
        if self.format == "npz_shards":
            return self.out_dir / f"{name}.npz"
        return self.progress_dir / f"chunk-{name}.npz"  # merged into <dataset>.npz at the end

    def stats_path(self, k: int) -> pathlib.Path:
        """Path of chunk ``k``'s statistics and skip list (JSON)."""
        return self.progress_dir / f"stats-{k:05d}.json"

    def is_done(self, k: int) -> bool:
        """A chunk is finished when its data file exists (its stats are written first)."""
        return self.data_path(k).is_file() and self.stats_path(k).is_file()

    def write(self, k: int, records: np.ndarray, skips: Sequence[tuple[str, str]]) -> None:
        """Writes chunk ``k``: its stats and skip list, then its records (both atomically)."""
        write_json(self.stats_path(k), {"skips": [list(s) for s in skips], **record_stats(records)})
        path = self.data_path(k)
        if self.format == "array_record":
            from array_record.python.array_record_module import ArrayRecordWriter

            with atomic_path(path) as tmp:
                # group_size:1 keeps random access cheap (one record per chunk of the file).
                writer = ArrayRecordWriter(str(tmp), "group_size:1")
                try:
                    for rec in records:
                        writer.write(rec.tobytes())
                finally:
                    writer.close()
        else:
            _save_npz(path, structured_to_arrays(records))

    def read_stats(self, k: int) -> dict[str, Any]:
        """Chunk ``k``'s stats: ``skips`` [(where, why)], ``count``, ``labels``, ``methods``, ``partitions``."""
        stats = json.loads(self.stats_path(k).read_text())
        stats["skips"] = [tuple(s) for s in stats["skips"]]
        return stats

    def read_chunk(self, k: int) -> np.ndarray:
        """Chunk ``k``'s records as a :data:`RECORD_DTYPE` array."""
        return read_records_file(self.data_path(k))

    def final_files(self) -> list[str]:
        """File names (relative to ``out_dir``) the manifest lists."""
        if self.format == "npz":
            return [f"{self.dataset}.npz"]
        return [self.data_path(k).name for k in range(self.num_chunks)]


def read_records_file(path: pathlib.Path) -> np.ndarray:
    """Reads one ``.npz`` or ``.array_record`` file of records.

    Raises:
      ValueError: the file does not hold records of this format version.
    """
    path = pathlib.Path(path)
    if path.suffix == ".array_record":
        from array_record.python.array_record_module import ArrayRecordReader

        reader = ArrayRecordReader(str(path))
        try:
            blobs = reader.read_all()
        finally:
            reader.close()
        if any(len(b) != RECORD_DTYPE.itemsize for b in blobs):
            raise ValueError(f"{path}: records are not {RECORD_DTYPE.itemsize} bytes (another format version?)")
        return np.frombuffer(b"".join(blobs), RECORD_DTYPE).copy()
    with np.load(path) as z:
        missing = [k for k in RECORD_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}")
        return arrays_to_structured({k: z[k] for k in RECORD_KEYS})


def clean_temporaries(out_dir: pathlib.Path) -> None:
    """Deletes ``.tmp-*`` files left by an interrupted run."""
    for folder in (out_dir, out_dir / PROGRESS_DIR):
        if folder.is_dir():
            for p in folder.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    p.unlink()


def remove_conversion(out_dir: pathlib.Path, dataset: str) -> None:
    """Deletes a previous conversion's files (``--overwrite``); other files are left alone."""
    shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)
    names = [MANIFEST_NAME, SKIPPED_NAME, f"{dataset}.npz"]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    for pattern in (f"{dataset}-*-of-*.array_record", f"{dataset}-*-of-*.npz"):
        for p in out_dir.glob(pattern):
            p.unlink()
    clean_temporaries(out_dir)


def merge_npz_chunks(store: ChunkStore) -> None:
    """Concatenates the finished chunks into ``<dataset>.npz`` (``npz`` format)."""
    parts = [store.read_chunk(k) for k in range(store.num_chunks)]
    records = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
    _save_npz(store.out_dir / f"{store.dataset}.npz", structured_to_arrays(records))


# ---------------------------------------------------------------------------
# Reading a prepared folder
# ---------------------------------------------------------------------------


def default_data_dir() -> pathlib.Path:
    """Where ``data.source=<name>`` looks: ``$FERATT_DATA_DIR`` or ``~/.cache/feratt_jax/datasets``."""
    env = os.environ.get("FERATT_DATA_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path("~/.cache/feratt_jax/datasets").expanduser()


def resolve_prepared_dir(source: str) -> pathlib.Path:
    """A dataset name (under :func:`default_data_dir`) or a path -> the prepared folder.

    Raises:
      FileNotFoundError: no complete conversion there (with the command that makes one).
    """
    path = default_data_dir() / source if source in DATASETS else pathlib.Path(source).expanduser()
    if not (path / MANIFEST_NAME).is_file():
        name = source if source in DATASETS else "NAME"
        hint = "" if (path.is_dir() and not (path / PROGRESS_DIR).is_dir()) else " (or finish the interrupted one)"
        raise FileNotFoundError(
            f"no prepared dataset at {path} ({MANIFEST_NAME} missing). Convert the raw data first{hint}: "
            f"feratt data prepare --dataset {name} --raw-dir RAW --out {path}"
        )
    return path


def read_manifest(prepared_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared folder."""
    path = pathlib.Path(prepared_dir) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    if manifest.get("record_format_version") != RECORD_FORMAT_VERSION:
        raise ValueError(
            f"{path}: record format version {manifest.get('record_format_version')}, this code reads "
            f"{RECORD_FORMAT_VERSION}; rerun feratt data prepare with --overwrite"
        )
    return manifest


def load_prepared_bank(prepared_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a prepared folder as a face bank (the synthetic generator's keys, plus extras).

    Returns:
      Dict of arrays with a leading record axis: ``image`` (N, 128, 128)
      uint8, ``mask`` (N, 128, 128) uint8, ``landmarks`` (N, 68, 2) float32
      (NaN where not aligned from landmarks), ``label`` (N,) int32,
      ``subject`` (N,) int32, ``action_units`` (N, 20) float32 (NaN: not
      annotated), ``index`` (N,) int32 (sample index within (subject,
      label)), and ``source_index``, ``method``, ``partition``, ``source``.
      Everything is held in memory (about 33 KB per record).
    """
    folder = pathlib.Path(prepared_dir)
    manifest = read_manifest(folder)
    parts = [read_records_file(folder / name) for name in manifest["files"]]
    return bank_from_records(np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE))


def bank_from_records(records: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`RECORD_DTYPE` records -> the face bank of :func:`load_prepared_bank`."""
    bank = structured_to_arrays(records)
    n = len(records)
    bank["action_units"] = np.full((n, NUM_ACTION_UNITS), np.nan, np.float32)
    bank["index"] = occurrence_index(bank["subject"], bank["label"])
    return bank


def occurrence_index(subjects: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each record, how many earlier records share its (subject, label): the bank's ``index``."""
    keys = np.stack([np.asarray(subjects, np.int64), np.asarray(labels, np.int64)], axis=1)
    out = np.zeros(len(keys), np.int32)
    seen: dict[tuple[int, int], int] = {}
    for i, (s, lab) in enumerate(map(tuple, keys)):
        out[i] = seen.get((s, lab), 0)
        seen[(s, lab)] = out[i] + 1
    return out


class PreparedRecords:
    """Random-access view of a prepared folder for grain (``len`` / ``__getitem__`` -> record dict).

    ArrayRecord shards are read lazily through ``grain.sources.ArrayRecordDataSource``;
    the ``npz`` formats are loaded into memory.
    """

    def __init__(self, prepared_dir: str | os.PathLike):
        folder = pathlib.Path(prepared_dir)
        self.manifest = read_manifest(folder)
        paths = [str(folder / name) for name in self.manifest["files"]]
        if self.manifest["format"] == "array_record":
            import grain

            self._source = grain.sources.ArrayRecordDataSource(paths)
            self._records = None
        else:
            self._source = None
            parts = [read_records_file(pathlib.Path(p)) for p in paths]
            self._records = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)

    def __len__(self) -> int:
        return len(self._source) if self._source is not None else len(self._records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._source is not None:
            rec = np.frombuffer(self._source[i], RECORD_DTYPE)[0]
        else:
            rec = self._records[i]
        return {k: rec[k] for k in RECORD_KEYS}


def _counts(values: np.ndarray) -> dict[str, int]:
    uniq, counts = np.unique(np.asarray(values, np.int64), return_counts=True)
    return {str(int(u)): int(c) for u, c in zip(uniq, counts)}


def record_stats(records: np.ndarray) -> dict[str, Any]:
    """Counts of a record array: total, per label, per method name, per partition name (JSON-able)."""
    return {
        "count": int(len(records)),
        "labels": _counts(records["label"]),
        "methods": {METHOD_NAMES[int(k)]: c for k, c in _counts(records["method"]).items()},
        "partitions": {PARTITION_NAMES[int(k)]: c for k, c in _counts(records["partition"]).items()},
    }
