"""Input pipeline: face bank + backgrounds -> host batches; fixed, pre-rendered val/test sets.

Division of labour (reference.md 5.3, moved on device):

* The **host** iterator yields small numpy batches of *ingredients*: dark faces,
  masks, background crops, labels and per-sample render seeds. Sampling is
  class-balanced as in the reference (each global batch holds the classes in
  equal shares, then a uniformly random face of each class), infinite, and a
  pure function of ``(seed, step)``, so the iterator state is just the step.
* The **device** renders them with the jitted :func:`render.render_batch`
  (call :func:`render_train_batch` inside or beside the train step).
* Validation and test sets are rendered **once**, deterministically from
  ``eval_seed``, on held-out subjects (the reference re-randomises its
  validation set every epoch: reference.md 7 item 15).

The train iterator is a grain ``DatasetIterator`` when grain is installed
(``grain.MapDataset.range(...).map(...).to_iter_dataset(...)``, checkpointable
with ``grain.checkpoint.CheckpointSave``), or a plain numpy iterator with the
same ``__next__`` / ``get_state`` / ``set_state`` interface. Both yield
identical batches for the same state.

Multi-host: every process builds the same bank and splits; process ``p`` of
``P`` gets rows ``[p * B / P, (p + 1) * B / P)`` of each global batch, and the
global batch does not depend on ``P``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from feratt_jax.data import facebank, synthfaces
from feratt_jax.data.backgrounds import BackgroundPool, list_image_files
from feratt_jax.data.splits import SubjectSplit, kfold_subject_split, split_record_indices

log = logging.getLogger(__name__)

SOURCES = ("synthetic",)  # plus the real datasets' names (feratt_jax.data.real.DATASETS) or a folder path
MODES = ("synthetic", "real")
SPLITS = ("kfold", "official")
LOADERS = ("auto", "grain", "numpy")
# Renderer settings forced in mode "real": no background, no illumination matching, no
# 48 px round trip (that chain belongs to the composites; reference.md 5.4).
_REAL_MODE_RENDER = {"illumination": False, "normalize_background": False, "downsample_size": None}

# Stream tags for np.random.default_rng seed sequences.
_TRAIN_STREAM = 0x7EA1
# Batches for re-estimating BatchNorm statistics (precise BN): training
# subjects, but a stream of their own, so they never shift the training draw.
PRECISE_BN_STREAM = 0xB57A
_EVAL_STREAM = 0xE7A1


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything the data side needs; built from ``config.data`` with :meth:`from_dict`.

    Attributes:
      source: "synthetic" (the embedded generator), a real dataset's name
        (``ckplus``, ``bu3dfe``, ...: the folder of that name under
        ``$FERATT_DATA_DIR`` or ``~/.cache/feratt_jax/datasets``), or the path
        of a folder written by ``feratt data prepare``, or ``tfds:<dataset>``
        (the TFDS builder ``feratt_<dataset>`` built in ``$TFDS_DATA_DIR``,
        :mod:`feratt_jax.data.tfds_builders`). Its faces replace the
        synthetic face bank; records with a label >= num_classes are left out.
      mode: "synthetic" composites the faces onto clutter (the paper's
        "synthetic" rows); "real" uses the aligned face on black as is (the
        "real" rows): no background, no illumination matching, no 48 px round
        trip, and val/test hold every record of their subjects once, without
        geometric changes (``val_size`` / ``test_size`` are then ignored).
      split: "kfold" (subject-independent folds below) or "official" (the
        dataset's own train/val/test partition, e.g. FER2013's Usage; without
        an official val partition, every 10th train subject validates).
      num_subjects: synthetic identities (synthetic source only).
      intensities: faces per (subject, class), each with its own gain and nuisance (synthetic source only).
      num_classes: classes 0..num_classes-1 (8 = the unified FER+ order).
      face_seed: seed of the generated dataset itself (identities and faces).
      image_size: rendered side S.
      batch_size: global train batch size (split across processes).
      subjects_per_fold: test subjects per fold.
      num_folds: folds (0 = num_subjects // subjects_per_fold).
      fold: which fold is held out for test.
      val_subjects: validation subjects (-1 = subjects_per_fold; 0 = none).
      val_size: pre-rendered validation samples.
      test_size: pre-rendered test samples.
      eval_seed: seed of the val/test rendering (independent of the training seed).
      background_dir: folder of the user's own background photos ("" = built-in).
      background_size: side of the host background crops (0 = image_size).
      num_procedural_backgrounds: procedural clutter images in the pool.
      photo_prob: share of photo (vs procedural) backgrounds.
      max_background_images: cap on user photos loaded.
      render_preset: renderer preset for training ("train", "eval", "identity").
      eval_render_preset: renderer preset for val/test.
      render: overrides of RenderConfig fields applied to both presets.
      generator: overrides of GeneratorConfig fields.
      cache_dir: face-bank cache folder ("" = $FERATT_CACHE_DIR or ~/.cache/feratt_jax).
      use_cache: read/write the face-bank cache.
      bank_workers: processes for building the bank (-1 = one per CPU).
      loader: "auto" (grain if installed), "grain" or "numpy".
      prefetch: host batches prefetched by grain threads (0 = none).
    """

    source: str = "synthetic"
    mode: str = "synthetic"
    split: str = "kfold"
    num_subjects: int = 120
    intensities: int = 3
    num_classes: int = synthfaces.NUM_CLASSES
    face_seed: int = 0
    image_size: int = 64
    batch_size: int = 32
    subjects_per_fold: int = 12
    num_folds: int = 0
    fold: int = 0
    val_subjects: int = -1
    val_size: int = 256
    test_size: int = 512
    eval_seed: int = 1234
    background_dir: str = ""
    background_size: int = 0
    num_procedural_backgrounds: int = 128
    photo_prob: float = 0.5
    max_background_images: int = 500
    render_preset: str = "train"
    eval_render_preset: str = "train"
    render: tuple[tuple[str, Any], ...] = ()
    generator: tuple[tuple[str, Any], ...] = ()
    cache_dir: str = ""
    use_cache: bool = True
    bank_workers: int = -1
    loader: str = "auto"
    prefetch: int = 2

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"DataConfig: {msg}")

        from feratt_jax.data.real import DATASETS

        tfds_name = self.source.removeprefix("tfds:") if self.source.startswith("tfds:") else None
        if tfds_name is not None and tfds_name not in DATASETS:
            fail(f"source {self.source!r}: tfds:<dataset> needs one of {DATASETS}")
        if tfds_name is None and self.source not in SOURCES + DATASETS and not _looks_like_path(self.source):
            fail(f"source {self.source!r} is not supported; use one of {SOURCES + DATASETS}, tfds:<dataset> or a prepared folder")
        if self.mode not in MODES:
            fail(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.split not in SPLITS:
            fail(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.split == "official" and self.source == "synthetic":
            fail("split='official' needs a real dataset with official partitions (source='synthetic' has none)")
        if self.loader not in LOADERS:
            fail(f"loader must be one of {LOADERS}, got {self.loader!r}")
        for name in ("num_subjects", "intensities", "batch_size", "subjects_per_fold"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.num_classes <= synthfaces.NUM_CLASSES:
            fail(f"num_classes must be in [1, {synthfaces.NUM_CLASSES}], got {self.num_classes}")
        for name in ("val_size", "test_size", "prefetch", "num_procedural_backgrounds", "background_size"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.photo_prob <= 1.0:
            fail(f"photo_prob must be a probability in [0, 1], got {self.photo_prob}")
        if self.num_procedural_backgrounds == 0 and self.photo_prob < 1.0:
            fail("num_procedural_backgrounds=0 needs photo_prob=1.0")
        if self.background_size and self.background_size < 8:
            fail(f"background_size must be 0 (= image_size) or >= 8, got {self.background_size}")
        # Fail early (with the renderer's clear messages) on bad render settings.
        self.render_config()
        self.eval_render_config()
        synthfaces.GeneratorConfig.from_dict(dict(self.generator))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None, **overrides: Any) -> "DataConfig":
        """Builds a config from a mapping (``ConfigDict.to_dict()`` works) plus overrides.

        ``render`` and ``generator`` may be nested mappings. ``None`` values
        for string fields (e.g. ``background_dir``) mean "default".

        Raises:
          ValueError: on unknown keys or invalid values.
        """
        merged = dict(d or {})
        merged.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"Unknown DataConfig keys {unknown}; valid keys: {sorted(names)}")
        for key in ("render", "generator"):
            if key in merged:
                v = merged[key] or {}
                v = dict(v.items()) if isinstance(v, Mapping) else dict(v)
                merged[key] = tuple(sorted((k, tuple(x) if isinstance(x, list) else x) for k, x in v.items()))
        for key in ("background_dir", "cache_dir"):
            if key in merged and merged[key] is None:
                merged[key] = ""
        return cls(**merged)

    def render_config(self, preset: str | None = None):
        """The training :class:`RenderConfig` (or ``preset``), with ``render`` overrides and image_size."""
        from feratt_jax.data.render import RenderConfig  # deferred: keeps JAX out of workers

        forced = _REAL_MODE_RENDER if self.mode == "real" else {}
        return RenderConfig.from_dict(
            {**dict(self.render), **forced}, preset=preset or self.render_preset, image_size=self.image_size
        )

    def eval_render_config(self):
        """The val/test :class:`RenderConfig` (mode "real": the "identity" preset, the face as is)."""
        return self.render_config("identity" if self.mode == "real" else self.eval_render_preset)

    def generator_config(self) -> synthfaces.GeneratorConfig:
        """The face generator's config."""
        return synthfaces.GeneratorConfig.from_dict(dict(self.generator))


def _looks_like_path(source: str) -> bool:
    """Whether ``data.source`` names a folder rather than a dataset."""
    return "/" in source or "\\" in source or source.startswith((".", "~"))


# ---------------------------------------------------------------------------
# Host batches
# ---------------------------------------------------------------------------


class TrainBatchMaker:
    """Builds the host batch of a training step; a pure function of ``step``.

    Picklable (grain may run it in worker processes) and thread-safe (every
    call draws from its own ``default_rng((seed, step))``).
    """

    def __init__(
        self,
        bank: Mapping[str, np.ndarray],
        record_idx: np.ndarray,
        pool: BackgroundPool,
        *,
        seed: int,
        global_batch: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"bad process_index={process_index} / process_count={process_count}")
        if global_batch % process_count:
            raise ValueError(f"batch_size {global_batch} is not divisible by process_count {process_count}")
        record_idx = np.asarray(record_idx)
        if len(record_idx) == 0:
            raise ValueError("the training split has no faces")
        self.faces = bank["image"][record_idx]
        self.masks = bank["mask"][record_idx]
        self.labels = bank["label"][record_idx].astype(np.int32)
        self.subjects = bank["subject"][record_idx].astype(np.int32)
        self.records = record_idx.astype(np.int32)
        # Classes present in the split; the balanced draw cycles through them.
        self.classes = np.unique(self.labels)
        self.by_class = [np.flatnonzero(self.labels == c) for c in self.classes]
        self.counts = np.array([len(ix) for ix in self.by_class])
        self.pool = pool
        self.seed = int(seed)
        self.global_batch = int(global_batch)
        local = global_batch // process_count
        self.lo, self.hi = process_index * local, (process_index + 1) * local

    def __call__(self, step: int, stream: int = _TRAIN_STREAM) -> dict[str, np.ndarray]:
        """The host batch of global step ``step`` (this process's rows).

        ``stream`` selects an independent sequence of batches over the same
        training records (e.g. :data:`PRECISE_BN_STREAM`); the default is
        the training stream.

        Returns:
          ``faces`` (b, 128, 128) uint8, ``masks`` (b, 128, 128) uint8,
          ``backgrounds`` (b, Hb, Wb) uint8, ``labels`` (b,) int32,
          ``subjects`` (b,) int32, ``records`` (b,) int32 bank row,
          ``seeds`` (b,) uint32 per-sample render seeds. Every leaf has the
          batch as its leading axis, so the dict can be sharded as is.
        """
        g = self.global_batch
        rng = np.random.default_rng([self.seed, int(stream), int(step)])
        # Draw everything for the whole global batch (cheap), then keep our rows.
        cls_pos = rng.permutation(np.resize(np.arange(len(self.classes)), g))
        pick = rng.random(g)
        bg_u = rng.random((g, BackgroundPool.DRAWS_PER_CROP))
        seeds = rng.integers(0, 2**32, size=g, dtype=np.uint64).astype(np.uint32)
        sl = slice(self.lo, self.hi)
        cls_pos, pick, bg_u, seeds = cls_pos[sl], pick[sl], bg_u[sl], seeds[sl]
        within = np.minimum((pick * self.counts[cls_pos]).astype(np.int64), self.counts[cls_pos] - 1)
        rows = np.array([self.by_class[c][w] for c, w in zip(cls_pos, within)], np.int64)
        return {
            "faces": self.faces[rows],
            "masks": self.masks[rows],
            "backgrounds": self.pool.crops(bg_u),
            "labels": self.labels[rows],
            "subjects": self.subjects[rows],
            "records": self.records[rows],
            "seeds": seeds,
        }


class NumpyTrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite iterator over :class:`TrainBatchMaker` steps, grain-compatible state.

    ``get_state()`` / ``set_state()`` use grain's ``{"next_index": n}`` form, so a
    state saved by one loader restores the other.
    """

    def __init__(self, maker: TrainBatchMaker, start: int = 0):
        self._maker = maker
        self._next = int(start)

    def __iter__(self) -> "NumpyTrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._maker(self._next)
        self._next += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """JSON-able iterator state."""
        return {"next_index": self._next}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from :meth:`get_state` (or a grain iterator's)."""
        self._next = int(state["next_index"])


def _grain_available() -> bool:
    try:
        import grain  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def make_train_iterator(maker: TrainBatchMaker, loader: str = "auto", prefetch: int = 2):
    """Wraps a batch maker in a grain iterator (if available/asked) or the numpy one.

    Args:
      maker: the batch maker.
      loader: "auto", "grain" or "numpy".
      prefetch: batches prefetched by grain threads (0: grain reads inline).

    Returns:
      An iterator with ``__next__``, ``get_state`` and ``set_state``.
    """
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    use_grain = loader == "grain" or (loader == "auto" and _grain_available())
    if not use_grain:
        return NumpyTrainIterator(maker)
    import sys

    import grain

    # An unbounded range: training length is the trainer's business.
    ds = grain.MapDataset.range(0, sys.maxsize).map(maker)
    opts = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


# ---------------------------------------------------------------------------
# Fixed evaluation sets
# ---------------------------------------------------------------------------


def render_eval_set(
    bank: Mapping[str, np.ndarray],
    record_idx: np.ndarray,
    pool: BackgroundPool,
    size: int,
    *,
    seed: int,
    tag: int,
    config,
    chunk: int = 256,
    every_record: bool = False,
) -> dict[str, np.ndarray]:
    """Renders a class-balanced evaluation set once (deterministic from ``seed`` and ``tag``).

    Args:
      bank: face bank.
      record_idx: bank rows of the split.
      pool: background pool.
      size: number of samples (ignored with ``every_record``).
      seed: evaluation seed.
      tag: distinguishes val from test.
      config: RenderConfig.
      chunk: render batch size.
      every_record: render each record of the split once, in order, instead
        of a class-balanced draw (the "real" rows: the test images as they are).

    Returns:
      ``image``, ``x_org`` (N, S, S, 1) float32, ``mask`` (N, S, S, 1) float32,
      ``label`` (N,) int32, ``theta`` (N, 2, 3) float32, ``subject`` (N,)
      int32, ``record`` (N,) int64. Grey images are stored with one channel;
      :func:`eval_batches` expands them to the renderer's 3.
    """
    import jax

    from feratt_jax.data.render import render_batch

    s = config.image_size
    empty = {
        "image": np.zeros((0, s, s, 1), np.float32),
        "x_org": np.zeros((0, s, s, 1), np.float32),
        "mask": np.zeros((0, s, s, 1), np.float32),
        "label": np.zeros((0,), np.int32),
        "theta": np.zeros((0, 2, 3), np.float32),
        "subject": np.zeros((0,), np.int32),
        "record": np.zeros((0,), np.int64),
    }
    record_idx = np.asarray(record_idx)
    if every_record:
        size = len(record_idx)
    if size == 0 or len(record_idx) == 0:
        return empty
    rng = np.random.default_rng([seed, _EVAL_STREAM, tag])
    if every_record:
        rows = np.sort(record_idx).astype(np.int64)
    else:
        labels = bank["label"][record_idx]
        classes = np.unique(labels)
        cls = np.resize(classes, size)
        rows = np.empty(size, np.int64)
        for c in classes:
            pos = np.flatnonzero(cls == c)
            cand = record_idx[labels == c]
            rows[pos] = cand[rng.integers(0, len(cand), size=len(pos))]
    bgs = pool.crops(rng.random((size, BackgroundPool.DRAWS_PER_CROP)))
    seeds = rng.integers(0, 2**32, size=size, dtype=np.uint64).astype(np.uint32)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "x_org", "mask", "theta")}
    chunk = min(chunk, size)
    for i in range(0, size, chunk):
        j = min(i + chunk, size)
        # Pad the last chunk to a full one so only one shape is ever compiled.
        take = np.resize(np.arange(i, j), chunk)
        keys = jax.vmap(jax.random.key)(seeds[take])
        out = render_batch(
            bank["image"][rows[take]], bank["mask"][rows[take]], bgs[take], bank["label"][rows[take]], keys, config
        )
        out = jax.device_get(out)
        n = j - i
        parts["image"].append(np.asarray(out["image"][:n, ..., :1]))
        parts["x_org"].append(np.asarray(out["x_org"][:n, ..., :1]))
        parts["mask"].append(np.asarray(out["mask"][:n]))
        parts["theta"].append(np.asarray(out["theta"][:n]))
    res = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    res["label"] = bank["label"][rows].astype(np.int32)
    res["subject"] = bank["subject"][rows].astype(np.int32)
    res["record"] = rows
    return res


def eval_batches(
    split: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Per-process batches of a pre-rendered evaluation set, padded to full batches.

    Every global batch has ``batch_size`` rows (the last one is padded with
    ``weight = 0`` rows), and process ``p`` gets rows ``[p*b, (p+1)*b)`` with
    ``b = batch_size // process_count``, so all processes run the same number
    of equally shaped steps.

    Args:
      split: output of :func:`render_eval_set`.
      batch_size: global batch size.
      process_index: this process.
      process_count: number of processes.

    Yields:
      Dicts like the renderer's output (``image`` and ``x_org`` with 3
      channels) plus ``weight`` (b,) float32.
    """
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    n = len(split["label"])
    local = batch_size // process_count
    for start in range(0, n, batch_size):
        glob = np.arange(start, start + batch_size)
        mine = glob[process_index * local : (process_index + 1) * local]
        weight = (mine < n).astype(np.float32)
        rows = np.where(mine < n, mine, 0)
        yield {
            "image": np.repeat(split["image"][rows], 3, axis=-1),
            "x_org": np.repeat(split["x_org"][rows], 3, axis=-1),
            "mask": split["mask"][rows],
            "label": split["label"][rows],
            "theta": split["theta"][rows],
            "weight": weight,
        }


# ---------------------------------------------------------------------------
# Entry point for the trainer
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Datasets:
    """What :func:`make_datasets` returns.

    Attributes:
      train: infinite host-batch iterator (grain or numpy), checkpointable.
      val: pre-rendered validation set (see :func:`render_eval_set`).
      test: pre-rendered test set.
      split: subject ids per split.
      bank: the face bank (all subjects).
      render_config: RenderConfig for training batches.
      eval_render_config: RenderConfig the val/test sets were rendered with.
      config: the DataConfig.
      info: small JSON-able summary (sizes, timings, fold).
      train_batches: the :class:`TrainBatchMaker` behind ``train`` (any
        step's batch, or another stream's, on demand).
    """

    train: Any
    val: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    split: SubjectSplit
    bank: dict[str, np.ndarray]
    render_config: Any
    eval_render_config: Any
    config: DataConfig
    info: dict[str, Any]
    train_batches: Any = None


class BlackBackgrounds:
    """Stands in for the background pool in mode "real": all-black crops, so nothing is composited.

    Picklable, with :class:`BackgroundPool`'s ``crops`` interface.
    """

    crop_size = 8  # any size works: the renderer resamples a window of it

    def crops(self, u: np.ndarray) -> np.ndarray:
        """(n, 8, 8) zeros for (n, DRAWS_PER_CROP) uniforms."""
        return np.zeros((np.asarray(u).shape[0], self.crop_size, self.crop_size), np.uint8)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` black crops."""
        return self.crops(np.zeros((n, BackgroundPool.DRAWS_PER_CROP)))


def build_background_pool(config: DataConfig, seed: int = 0) -> BackgroundPool | BlackBackgrounds:
    """The background pool of a data config (black crops in mode "real")."""
    if config.mode == "real":
        return BlackBackgrounds()
    return BackgroundPool.build(
        config.background_size or config.image_size,
        background_dir=config.background_dir or None,
        num_procedural=config.num_procedural_backgrounds,
        photo_prob=config.photo_prob,
        max_images=config.max_background_images,
        seed=seed,
    )


def make_datasets(
    data_config: DataConfig | Mapping[str, Any],
    *,
    seed: int,
    fold: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Datasets:
    """Builds the face bank, splits, background pool, train iterator and fixed val/test sets.

    Args:
      data_config: a :class:`DataConfig` or a mapping for :meth:`DataConfig.from_dict`.
      seed: training seed (sampling order and render seeds of train batches).
      fold: overrides ``data_config.fold``.
      process_index: this process (``jax.process_index()``).
      process_count: number of processes (``jax.process_count()``).

    Returns:
      :class:`Datasets`.
    """
    cfg = data_config if isinstance(data_config, DataConfig) else DataConfig.from_dict(data_config)
    if fold is not None:
        cfg = dataclasses.replace(cfg, fold=fold)
    if cfg.batch_size % process_count:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by process_count {process_count}")
    if cfg.background_dir and cfg.mode != "real":
        list_image_files(cfg.background_dir)  # fail before the slow steps on a bad folder
    t0 = time.perf_counter()
    if cfg.source == "synthetic":
        bank = facebank.load_or_build_bank(
            cfg.num_subjects,
            cfg.intensities,
            cfg.face_seed,
            cfg.generator_config(),
            cfg.num_classes,
            cache_dir=cfg.cache_dir or None,
            use_cache=cfg.use_cache,
            num_workers=None if cfg.bank_workers < 0 else cfg.bank_workers,
        )
    else:
        bank = load_real_bank(cfg.source, cfg.num_classes)
    t_bank = time.perf_counter() - t0
    if cfg.split == "official":
        split = official_split(bank, cfg.val_subjects)
    else:
        split = kfold_subject_split(
            bank["subject"],
            cfg.subjects_per_fold,
            cfg.fold,
            num_folds=cfg.num_folds or None,
            val_subjects=cfg.val_subjects,
        )
    idx = split_record_indices(bank["subject"], split)
    t1 = time.perf_counter()
    pool = build_background_pool(cfg, seed=cfg.face_seed)
    t_pool = time.perf_counter() - t1
    maker = TrainBatchMaker(
        bank,
        idx["train"],
        pool,
        seed=seed,
        global_batch=cfg.batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    train = make_train_iterator(maker, cfg.loader, cfg.prefetch)
    t2 = time.perf_counter()
    eval_cfg = cfg.eval_render_config()
    every = cfg.mode == "real"
    eval_options = dict(seed=cfg.eval_seed, config=eval_cfg, every_record=every)
    val = render_eval_set(bank, idx["val"], pool, cfg.val_size, tag=1, **eval_options)
    test = render_eval_set(bank, idx["test"], pool, cfg.test_size, tag=2, **eval_options)
    t_eval = time.perf_counter() - t2
    info = {
        "source": cfg.source,
        "mode": cfg.mode,
        "split": cfg.split,
        "num_faces": int(len(bank["label"])),
        "train_faces": int(len(idx["train"])),
        "val_faces": int(len(idx["val"])),
        "test_faces": int(len(idx["test"])),
        "fold": cfg.fold,
        "subjects": split.as_dict(),
        "seconds": {"bank": t_bank, "backgrounds": t_pool, "eval_render": t_eval},
        "loader": type(train).__name__,
    }
    log.info("data ready: %s", {k: v for k, v in info.items() if k != "subjects"})
    return Datasets(
        train=train,
        val=val,
        test=test,
        split=split,
        bank=bank,
        render_config=cfg.render_config(),
        eval_render_config=eval_cfg,
        config=cfg,
        info=info,
        train_batches=maker,
    )


def load_real_bank(source: str, num_classes: int) -> dict[str, np.ndarray]:
    """A prepared real dataset as a face bank, keeping labels < ``num_classes``.

    Args:
      source: a dataset name or a prepared folder (see ``DataConfig.source``).
      num_classes: the model's classes; e.g. CK+'s contempt (7) is left out at 7.

    Raises:
      FileNotFoundError: not prepared (the message gives the prepare command).
      ValueError: no record left.
    """
    from feratt_jax.data.real import NUM_CLASSES
    from feratt_jax.data.real.records import load_prepared_bank, read_manifest, resolve_prepared_dir

    if source.startswith("tfds:"):
        from feratt_jax.data.tfds_builders import load_tfds_bank

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
    from feratt_jax.data.real.records import PARTITION_TEST, PARTITION_TRAIN, PARTITION_VAL

    part = bank.get("partition")
    if part is None or not np.isin(part, (PARTITION_TRAIN, PARTITION_VAL, PARTITION_TEST)).any():
        raise ValueError("this dataset has no official train/val/test partition; use data.split='kfold'")
    subjects = np.asarray(bank["subject"])
    train, val, test = (np.unique(subjects[part == p]) for p in (PARTITION_TRAIN, PARTITION_VAL, PARTITION_TEST))
    if len(val) == 0 and val_subjects != 0:
        val, train = train[::10], np.setdiff1d(train, train[::10])
    return SubjectSplit(train=train, val=val, test=test)


def keys_from_seeds(seeds_B):
    """One PRNG key per uint32 seed (jit-friendly)."""
    import jax

    return jax.vmap(jax.random.key)(seeds_B)


def render_train_batch(batch: Mapping[str, Any], config) -> dict[str, Any]:
    """Renders a host (or device-put) train batch with its own per-sample seeds.

    Call it inside the jitted train step (``config`` must then be static, e.g.
    closed over) or on its own: ``render_batch`` is jitted.

    Args:
      batch: a train batch from :attr:`Datasets.train` (numpy or jax arrays).
      config: RenderConfig (normally ``Datasets.render_config``).

    Returns:
      The renderer's dict (``x_org``, ``image``, ``mask``, ``label``, ``theta``).
    """
    from feratt_jax.data.render import render_batch

    return render_batch(
        batch["faces"], batch["masks"], batch["backgrounds"], batch["labels"], keys_from_seeds(batch["seeds"]), config
    )
