"""``feratt data prepare``: convert a real dataset's native layout into a prepared folder.

Steps (docs/data.md 0.2): list the native layout and map the labels (one module
per dataset), assign dense subject ids, then read + align every face
(:mod:`.align`) chunk by chunk and write the records (:mod:`.records`).
Finished chunks survive an interruption and are skipped on the rerun; the
manifest is written last.

Usage::

    feratt data prepare --dataset ckplus --raw-dir ~/data/CK+ --out ~/data/prepared/ckplus
    python -m feratt_jax data prepare --dataset jaffe --raw-dir ~/data/jaffe
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from feratt_jax import EXPRESSION_NAMES
from feratt_jax.data.real import (
    FOLDER,
    FORMAT_CHOICES,
    PREPARE_DATASETS,
    affectnet,
    align,
    bu3dfe,
    ckplus,
    fer2013,
    folder,
    jaffe,
    rafdb,
    records,
)
from feratt_jax.data.real.items import Listing, RawItem, read_csv_rows

log = logging.getLogger(__name__)

# Datasets written as shards (ArrayRecord, or sharded .npz without array_record).
LARGE_DATASETS = frozenset({"fer2013", "ferplus", "affectnet"})
DEFAULT_CHUNK_SIZE = {"npz": 512, "array_record": 4096, "npz_shards": 4096}


@dataclasses.dataclass
class PrepareReport:
    """What a conversion produced.

    Attributes:
      out_dir: the prepared folder.
      dataset: dataset name.
      format: records format (``records.FORMATS``).
      num_records: faces written.
      num_classes: the dataset's classes (7 or 8).
      skipped: ``(where, why)`` per skipped input (file, and line for text files).
      dropped: inputs left out by the dataset's protocol, by reason.
      methods: records per alignment method.
      resumed_chunks: chunks found finished from an earlier run.
      files: record files, relative to ``out_dir``.
      notes: remarks (e.g. a fallback that was taken).
      already_done: the folder already held this exact conversion.
    """

    out_dir: pathlib.Path
    dataset: str
    format: str
    num_records: int
    num_classes: int
    skipped: list[tuple[str, str]]
    dropped: dict[str, int]
    methods: dict[str, int]
    resumed_chunks: int
    files: list[str]
    notes: list[str]
    already_done: bool = False

    def summary(self) -> str:
        """A few human-readable lines."""
        head = "already prepared" if self.already_done else "wrote"
        lines = [f"{head} {self.num_records} {self.dataset} faces ({self.format}) in {self.out_dir}"]
        if self.resumed_chunks:
            lines.append(f"resumed: {self.resumed_chunks} chunk(s) were already converted")
        if self.methods:
            lines.append("alignment: " + ", ".join(f"{k} {v}" for k, v in sorted(self.methods.items())))
        if self.dropped:
            lines.append("dropped by protocol: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())))
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} input(s), listed in {self.out_dir / records.SKIPPED_NAME}:")
            lines += [f"  {where}: {why}" for where, why in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"  ... and {len(self.skipped) - 10} more")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------


def list_dataset(
    dataset: str,
    raw_dir: pathlib.Path,
    *,
    frames_per_sequence: int = 3,
    min_intensity: int = 1,
    class_map: str | None = None,
    subjects_csv: str | os.PathLike | None = None,
) -> Listing:
    """Dispatches to the dataset's module (``class_map`` and ``subjects_csv``: ``folder`` only).

    Raises:
      ValueError: unknown dataset.
      FileNotFoundError: the raw folder (or a folder the layout needs) is missing.
    """
    if dataset not in PREPARE_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {PREPARE_DATASETS}")
    if dataset != FOLDER and (class_map or subjects_csv):
        raise ValueError(f"--class-map and --subjects-csv are for --dataset {FOLDER}, not {dataset}")
    # Parsed before the folder is read, so a bad map or a missing CSV stops before any work.
    mapping = folder.parse_class_map(class_map)
    csv_path = pathlib.Path(subjects_csv).expanduser() if subjects_csv else None
    if csv_path is not None and not csv_path.is_file():
        raise FileNotFoundError(f"subjects CSV {csv_path} does not exist")
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw folder {raw_dir} does not exist")
    listers: dict[str, Callable[[], Listing]] = {
        "ckplus": lambda: ckplus.list_items(raw_dir, frames_per_sequence=frames_per_sequence),
        "jaffe": lambda: jaffe.list_items(raw_dir),
        "bu3dfe": lambda: bu3dfe.list_items(raw_dir, min_intensity=min_intensity),
        "fer2013": lambda: fer2013.list_items(raw_dir),
        "ferplus": lambda: fer2013.list_items_ferplus(raw_dir),
        "affectnet": lambda: affectnet.list_items(raw_dir),
        "rafdb": lambda: rafdb.list_items(raw_dir),
        FOLDER: lambda: folder.list_items(raw_dir, class_map=mapping, subjects_csv=csv_path),
    }
    return listers[dataset]()


def read_landmarks_csv(path: pathlib.Path, skips: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """A user's 68-point landmarks: CSV ``path,x0,y0,...,x67,y67`` -> ``{path: (68, 2)}``.

    ``path`` is the image's path relative to the raw folder (as in
    ``skipped.tsv`` and the records' ``source``). Malformed rows are appended
    to ``skips`` as ``(file:line, why)``.

    Raises:
      ValueError: the header lacks columns (names the file, line 1).
    """
    columns = ["path"] + [f"{a}{i}" for i in range(align.NUM_LANDMARKS) for a in ("x", "y")]
    out: dict[str, np.ndarray] = {}
    for line, row in read_csv_rows(path, columns, skips, path.name):
        try:
            values = np.array([float(row[c]) for c in columns[1:]])
            out[row["path"].strip()] = align.check_landmarks(values.reshape(align.NUM_LANDMARKS, 2))
        except ValueError as err:
            skips.append((f"{path.name}:{line}", f"bad landmarks: {err}"))
    return out


def assign_ids(items: Sequence[RawItem]) -> list[str]:
    """Sets each item's ``source_index`` and dense ``subject_id``; returns the subject names.

    Named subjects get ids 0..n-1 in sorted name order; items without an
    identity (FER2013, AffectNet, RAF-DB) each get their own id after those,
    so subject-independent splits treat every such image as one subject.
    """
    names = sorted({it.subject for it in items if it.subject is not None})
    ids = {n: i for i, n in enumerate(names)}
    next_id = len(names)
    for pos, it in enumerate(items):
        it.source_index = pos
        if it.subject is None:
            it.subject_id = next_id
            next_id += 1
        else:
            it.subject_id = ids[it.subject]
    return names


def _fingerprint(dataset: str, fmt: str, chunk_size: int, options: dict[str, Any], items: Sequence[RawItem]) -> str:
    """Identifies a conversion's inputs, so a resume never mixes two different ones."""
    h = hashlib.sha256()
    h.update(json.dumps([records.RECORD_FORMAT_VERSION, dataset, fmt, chunk_size, options], sort_keys=True).encode())
    for it in items:
        h.update(repr(it.fingerprint_key()).encode())
        if it.landmarks is not None:
            h.update(np.asarray(it.landmarks, np.float64).tobytes())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------


def _short_source(source: str) -> str:
    """Keeps the end of an over-long source reference (the file name matters most)."""
    n = records.SOURCE_CHARS
    return source if len(source) <= n else "..." + source[-(n - 3) :]


def convert_item(item: RawItem) -> np.ndarray:
    """Reads and aligns one item into a 0-d :data:`records.RECORD_DTYPE` array.

    Landmarks that fail (e.g. they leave the frame) fall back to the face
    box or the detector; the record's ``method`` says which was used.

    Raises:
      ValueError: unreadable image, bad pixels, or no usable face.
    """
    grey = item.load_grey()
    kwargs = dict(face_box=item.face_box, pre_cropped=item.pre_cropped)
    try:
        face = align.align_face(grey, landmarks=item.landmarks, **kwargs)
    except ValueError:
        if item.landmarks is None:
            raise
        face = align.align_face(grey, landmarks=None, **kwargs)
    rec = np.zeros((), records.RECORD_DTYPE)
    rec["image"] = face.image
    rec["mask"] = face.mask
    rec["landmarks"] = face.landmarks
    rec["label"] = item.label
    rec["subject"] = item.subject_id
    rec["source_index"] = item.source_index
    rec["method"] = int(face.method)
    rec["partition"] = item.partition
    rec["source"] = _short_source(item.source)
    return rec


def convert_chunk(
    store: records.ChunkStore,
    k: int,
    items: Sequence[RawItem],
    on_item: Callable[[], None] | None = None,
) -> int:
    """Converts and writes chunk ``k``; inputs that fail are recorded as skips. Returns the chunk size."""
    out = np.zeros(len(items), records.RECORD_DTYPE)
    n = 0
    skips: list[tuple[str, str]] = []
    for item in items:
        try:
            out[n] = convert_item(item)
            n += 1
        except ValueError as err:
            skips.append((item.source, str(err)))
        except Exception as err:  # e.g. a decoder bug on one odd file: report it, keep converting
            skips.append((item.source, f"unexpected {type(err).__name__}: {err}"))
        if on_item is not None:
            on_item()
    store.write(k, out[:n], skips)
    return len(items)


def _resolve_format(fmt: str, dataset: str, notes: list[str]) -> str:
    if fmt not in FORMAT_CHOICES:
        raise ValueError(f"format must be one of {FORMAT_CHOICES}, got {fmt!r}")
    if fmt == "auto":
        fmt = "shards" if dataset in LARGE_DATASETS else "npz"
    if fmt in ("shards", "array_record"):
        if records.array_record_available():
            return "array_record"
        msg = "array_record is not importable: writing sharded .npz files instead of ArrayRecord shards"
        if fmt == "array_record":
            raise ImportError(msg.split(":")[0] + " (pip install array-record, or use --format npz_shards)")
        log.warning(msg)
        notes.append(msg)
        return "npz_shards"
    return fmt


def prepare_dataset(
    dataset: str,
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    format: str = "auto",
    chunk_size: int = 0,
    workers: int = 1,
    landmarks_csv: str | os.PathLike | None = None,
    frames_per_sequence: int = 3,
    min_intensity: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    class_map: str | None = None,
    subjects_csv: str | os.PathLike | None = None,
) -> PrepareReport:
    """Converts a raw dataset into a prepared folder (resuming an interrupted run).

    Args:
      dataset: one of :data:`feratt_jax.data.real.PREPARE_DATASETS`.
      raw_dir: the dataset as distributed (see each dataset module).
      out_dir: the prepared folder (default ``records.default_data_dir() / dataset``,
        where ``data.source=<dataset>`` looks; for ``folder``, ``.../folder-<raw folder name>``).
      format: "auto" (one ``.npz`` for small datasets, shards for FER2013,
        FER+ and AffectNet), "npz", "shards", "array_record" or "npz_shards".
      chunk_size: faces per chunk / shard (0: 512 for npz, 4096 for shards).
      workers: processes converting chunks in parallel (1 = in process).
      landmarks_csv: optional CSV of 68-point landmarks per image (see
        :func:`read_landmarks_csv`), e.g. from dlib, for JAFFE / BU-3DFE.
      frames_per_sequence: CK+ peak frames per sequence.
      min_intensity: BU-3DFE lowest expression intensity kept (1-4).
      overwrite: replace an existing or different conversion in ``out_dir``.
      progress: show a progress bar.
      class_map: ``folder`` only: ``name=label,...`` for class folders with other names.
      subjects_csv: ``folder`` only: CSV ``path,subject``.

    Returns:
      The :class:`PrepareReport`.

    Raises:
      FileNotFoundError: a missing raw folder or file (named in the message).
      ValueError: a CSV without its columns (file and line named), a folder
        holding a different conversion, or nothing convertible at all.
    """
    from tqdm.auto import tqdm

    raw = pathlib.Path(raw_dir).expanduser()
    out = pathlib.Path(out_dir).expanduser() if out_dir else _default_out(dataset, raw)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    notes: list[str] = []
    fmt = _resolve_format(format, dataset, notes)
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE[fmt]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    listing = list_dataset(
        dataset,
        raw,
        frames_per_sequence=frames_per_sequence,
        min_intensity=min_intensity,
        class_map=class_map,
        subjects_csv=subjects_csv,
    )
    notes += listing.notes
    skips = list(listing.skips)
    options: dict[str, Any] = {"frames_per_sequence": frames_per_sequence, "min_intensity": min_intensity}
    if dataset == FOLDER:
        options["class_map"] = class_map or ""
        options["subjects_csv"] = bool(subjects_csv)
        notes.append(f"train on it with --config.data.source={out}")
    if landmarks_csv:
        user_landmarks = read_landmarks_csv(pathlib.Path(landmarks_csv).expanduser(), skips)
        matched = 0
        for it in listing.items:
            if it.source in user_landmarks:
                it.landmarks = user_landmarks[it.source]
                matched += 1
        notes.append(f"landmarks CSV: {matched} of {len(listing.items)} images have user landmarks")
        options["landmarks_csv"] = True
    items = listing.items
    subject_names = assign_ids(items)
    fingerprint = _fingerprint(dataset, fmt, chunk_size, options, items)

    finished = _claim_out_dir(out, dataset, fingerprint, overwrite)
    if finished is not None:
        return PrepareReport(
            out_dir=out,
            dataset=dataset,
            format=finished["format"],
            num_records=finished["num_records"],
            num_classes=finished["num_classes"],
            skipped=_read_skipped(out),
            dropped=finished["dropped"],
            methods=finished["method_counts"],
            resumed_chunks=0,
            files=finished["files"],
            notes=finished["notes"],
            already_done=True,
        )
    progress_file = out / records.PROGRESS_DIR / "progress.json"
    records.write_json(progress_file, {"fingerprint": fingerprint, "dataset": dataset, "format": fmt})

    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    store = records.ChunkStore(out, dataset, fmt, len(chunks))
    todo = [k for k in range(len(chunks)) if not store.is_done(k)]
    resumed = len(chunks) - len(todo)
    done_items = len(items) - sum(len(chunks[k]) for k in todo)
    bar_options = dict(disable=not progress, unit="face", desc=f"prepare {dataset}")
    with tqdm(total=len(items), initial=done_items, **bar_options) as bar:
        if workers == 1 or len(todo) <= 1:
            for k in todo:
                convert_chunk(store, k, chunks[k], on_item=lambda: bar.update(1))
        else:
            _convert_in_workers(store, chunks, todo, workers, bar)

    counts: collections.Counter = collections.Counter()
    labels: collections.Counter = collections.Counter()
    methods: collections.Counter = collections.Counter()
    partitions: collections.Counter = collections.Counter()
    for k in range(len(chunks)):
        stats = store.read_stats(k)
        skips += stats["skips"]
        counts["records"] += stats["count"]
        labels.update({int(lab): c for lab, c in stats["labels"].items()})
        methods.update(stats["methods"])
        partitions.update(stats["partitions"])
    _write_skipped(out, skips)
    num_records = counts["records"]
    if num_records == 0:
        where = "; ".join(f"{w}: {why}" for w, why in skips[:5]) or "the listing is empty"
        raise ValueError(f"no {dataset} face could be converted from {raw} ({len(skips)} skipped: {where})")
    if fmt == "npz":
        records.merge_npz_chunks(store)
    manifest = {
        "record_format_version": records.RECORD_FORMAT_VERSION,
        "dataset": dataset,
        "format": fmt,
        "files": store.final_files(),
        "num_records": num_records,
        "num_classes": listing.num_classes,
        "class_names": list(EXPRESSION_NAMES[: listing.num_classes]),
        "label_counts": {EXPRESSION_NAMES[k]: labels[k] for k in sorted(labels)},
        "method_names": list(align.METHOD_NAMES),
        "method_counts": dict(methods),
        "partition_counts": dict(partitions),
        "subject_names": subject_names,
        "one_subject_per_image": not subject_names,
        "num_skipped": len(skips),
        "dropped": dict(listing.dropped),
        "notes": notes,
        "options": options,
        "fingerprint": fingerprint,
        "face_size": align.FACE_SIZE,
    }
    records.write_json(out / records.MANIFEST_NAME, manifest)
    # The conversion is complete: the per-chunk state is no longer needed.
    shutil.rmtree(out / records.PROGRESS_DIR, ignore_errors=True)
    return PrepareReport(
        out_dir=out,
        dataset=dataset,
        format=fmt,
        num_records=num_records,
        num_classes=listing.num_classes,
        skipped=skips,
        dropped=dict(listing.dropped),
        methods=dict(methods),
        resumed_chunks=resumed,
        files=manifest["files"],
        notes=notes,
    )


def _default_out(dataset: str, raw: pathlib.Path) -> pathlib.Path:
    """Where a conversion goes without ``--out`` (a folder tree is named after its raw folder)."""
    name = f"{FOLDER}-{raw.resolve().name}" if dataset == FOLDER else dataset
    return records.default_data_dir() / name


def _claim_out_dir(out: pathlib.Path, dataset: str, fingerprint: str, overwrite: bool) -> dict[str, Any] | None:
    """Decides what happens to what ``out`` already holds; returns its manifest if it is this exact conversion.

    * nothing, or an interrupted run of the same inputs: go on (resume);
    * a finished run of the same inputs: return its manifest (nothing to do);
    * a finished or interrupted run of other inputs: refuse, unless ``overwrite``
      (which deletes that conversion's files, and only those).
    """
    out.mkdir(parents=True, exist_ok=True)
    records.clean_temporaries(out)
    manifest_path = out / records.MANIFEST_NAME
    progress_file = out / records.PROGRESS_DIR / "progress.json"
    previous = None
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text()).get("fingerprint")
    elif progress_file.is_file():
        previous = json.loads(progress_file.read_text()).get("fingerprint")
    if previous is None:
        return None
    if overwrite:
        records.remove_conversion(out, dataset)
        return None
    if previous != fingerprint:
        raise ValueError(
            f"{out} holds a conversion of other inputs or options; pass --overwrite to replace it, "
            "or choose another --out"
        )
    return records.read_manifest(out) if manifest_path.is_file() else None


def _convert_in_workers(store: records.ChunkStore, chunks: list, todo: list[int], workers: int, bar) -> None:
    """Converts chunks in spawned processes (fork is unsafe once JAX or threads run)."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(convert_chunk, store, k, chunks[k]): k for k in todo}
        for fut in concurrent.futures.as_completed(futures):
            bar.update(fut.result())


def _write_skipped(out: pathlib.Path, skips: Sequence[tuple[str, str]]) -> None:
    """``skipped.tsv``: one ``where<TAB>why`` line per skipped input."""
    lines = ["where\twhy"] + [f"{w}\t{why}".replace("\n", " ") for w, why in skips]
    path = out / records.SKIPPED_NAME
    with records.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _read_skipped(out: pathlib.Path) -> list[tuple[str, str]]:
    path = out / records.SKIPPED_NAME
    if not path.is_file():
        return []
    rows = [line.split("\t", 1) for line in path.read_text().splitlines()[1:] if line]
    return [(r[0], r[1] if len(r) > 1 else "") for r in rows]

