"""Input pipeline: ``DataConfig`` and ``make_datasets``, which assemble the data side of a run.

Division of labour (docs/reference.md 5.3, moved on device):

* :mod:`~feratt_jax.data.sampling` (**host**): the iterator yields small numpy
  batches of *ingredients*: dark faces, masks, background crops, labels and
  per-sample render seeds. Sampling is class-balanced as in the reference
  (each global batch holds the classes in equal shares, then a uniformly
  random face of each class), infinite, and a pure function of
  ``(seed, step)``, so the iterator state is just the step.
* :mod:`~feratt_jax.data.device` (**device**): renders them with the jitted
  :func:`render.render_batch` (:func:`render_train_batch` inside or beside
  the train step). Validation and test sets are rendered **once**,
  deterministically from ``eval_seed``, on held-out subjects (the reference
  re-randomises its validation set every epoch: docs/reference.md 7 item 15).
* :mod:`~feratt_jax.data.real.bank`: a prepared real dataset as the face
  bank, and its official partition.

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
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from feratt_jax.data import facebank, synthfaces
from feratt_jax.data.backgrounds import BackgroundPool, list_image_files
from feratt_jax.data.device import render_eval_set
from feratt_jax.data.real import DATASETS
from feratt_jax.data.real.bank import load_real_bank, official_split
from feratt_jax.data.render import RenderConfig
from feratt_jax.data.sampling import LOADERS, TrainBatchMaker, make_train_iterator
from feratt_jax.data.splits import SubjectSplit, kfold_subject_split, split_record_indices

log = logging.getLogger(__name__)

SOURCES = ("synthetic",)  # plus the real datasets' names (feratt_jax.data.real.DATASETS) or a folder path
MODES = ("synthetic", "real")
SPLITS = ("kfold", "official")
# Renderer settings forced in mode "real": no background, no illumination matching, no
# 48 px round trip (that chain belongs to the composites; docs/reference.md 5.4).
_REAL_MODE_RENDER = {"illumination": False, "normalize_background": False, "downsample_size": None}


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
      face_scene_prob: share of backgrounds cut from clutter with other faces
        pasted in (0 = none; :func:`scene_faces` says whose faces).
      max_background_images: cap on user photos loaded.
      render_preset: renderer preset for training ("train", "eval", "identity").
      eval_render_preset: renderer preset for val/test.
      curriculum_preset: renderer preset of the first ``curriculum_steps``
        training batches ("" = none): an easier stage before ``render_preset``
        (synthetic mode only; val/test always use ``eval_render_preset``).
      curriculum_steps: how many training steps use ``curriculum_preset``.
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
    face_scene_prob: float = 0.0
    max_background_images: int = 500
    render_preset: str = "train"
    eval_render_preset: str = "train"
    curriculum_preset: str = ""
    curriculum_steps: int = 0
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
        for name in ("val_size", "test_size", "prefetch", "num_procedural_backgrounds", "background_size", "curriculum_steps"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.photo_prob <= 1.0:
            fail(f"photo_prob must be a probability in [0, 1], got {self.photo_prob}")
        if not 0.0 <= self.face_scene_prob <= 1.0:
            fail(f"face_scene_prob must be a probability in [0, 1], got {self.face_scene_prob}")
        if self.num_procedural_backgrounds == 0 and self.photo_prob < 1.0:
            fail("num_procedural_backgrounds=0 needs photo_prob=1.0")
        if self.background_size and self.background_size < 8:
            fail(f"background_size must be 0 (= image_size) or >= 8, got {self.background_size}")
        if bool(self.curriculum_preset) != (self.curriculum_steps > 0):
            fail(
                f"curriculum_preset {self.curriculum_preset!r} and curriculum_steps {self.curriculum_steps} go together: "
                "set both (a preset and a step count > 0) or neither"
            )
        if self.curriculum_preset and self.mode == "real":
            fail("curriculum_preset needs mode='synthetic' (mode 'real' renders no composites)")
        # Fail early (with the renderer's clear messages) on bad render settings.
        self.render_config()
        self.eval_render_config()
        self.curriculum_render_config()
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
        forced = _REAL_MODE_RENDER if self.mode == "real" else {}
        return RenderConfig.from_dict(
            {**dict(self.render), **forced}, preset=preset or self.render_preset, image_size=self.image_size
        )

    def curriculum_render_config(self):
        """The :class:`RenderConfig` of the first ``curriculum_steps`` training batches, or None."""
        return self.render_config(self.curriculum_preset) if self.curriculum_preset else None

    def eval_render_config(self):
        """The val/test :class:`RenderConfig` (mode "real": the "identity" preset, the face as is)."""
        return self.render_config("identity" if self.mode == "real" else self.eval_render_preset)

    def generator_config(self) -> synthfaces.GeneratorConfig:
        """The face generator's config."""
        return synthfaces.GeneratorConfig.from_dict(dict(self.generator))

    def provenance(self) -> dict[str, Any]:
        """What the images are drawn by, every field resolved (JSON-ready).

        ``config.json`` holds only the overrides, so a change of a default
        (the generator's posing rule changed on 2026-12-03) would silently
        change the faces of a resumed run; the trainer stores this next to it
        and compares. Synthetic data: the generator's version and fields;
        every source: the train and eval renderer fields.
        """
        out: dict[str, Any] = {"source": self.source}
        if self.source == "synthetic":
            out["generator_version"] = synthfaces.GENERATOR_VERSION
            out["generator"] = dataclasses.asdict(self.generator_config())
        out["render"] = dataclasses.asdict(self.render_config())
        out["eval_render"] = dataclasses.asdict(self.eval_render_config())
        if self.curriculum_preset:  # absent when off, so records written before the option still match
            out["curriculum"] = {"steps": self.curriculum_steps, "render": dataclasses.asdict(self.curriculum_render_config())}
        return json.loads(json.dumps(out))  # tuples as lists, as read back from the file


def _looks_like_path(source: str) -> bool:
    """Whether ``data.source`` names a folder rather than a dataset."""
    return "/" in source or "\\" in source or source.startswith((".", "~"))


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
      curriculum_render_config: RenderConfig of the first
        ``config.curriculum_steps`` training batches (None: no curriculum).
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
    curriculum_render_config: Any = None


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


# Faces drawn for the background scenes (face_scene_prob > 0).
NUM_SCENE_FACES = 48


def scene_faces(config: DataConfig, n: int = NUM_SCENE_FACES) -> tuple[np.ndarray, np.ndarray]:
    """The faces pasted into background scenes: ``n`` generator subjects that are in no split.

    They are subjects ``num_subjects .. num_subjects + n - 1`` of the
    dataset's own generator and seed (each subject's identity has its own
    random stream), so no face of a train, validation or test subject ever
    appears in a background; each with a random class and intensity.

    Returns:
      (faces, masks), each (n, 128, 128) uint8.
    """
    gen = config.generator_config()
    rng = np.random.default_rng([config.face_seed, 0x5CE7E])
    labels = rng.integers(0, synthfaces.NUM_CLASSES, n)
    index = rng.integers(0, max(config.intensities, 1), n)
    faces = synthfaces.stack_records(
        [synthfaces.generate_face(config.num_subjects + i, int(labels[i]), int(index[i]), config.face_seed, gen) for i in range(n)]
    )
    return faces["image"], faces["mask"]


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
        scene_faces=scene_faces(config) if config.face_scene_prob > 0 else None,
        face_scene_prob=config.face_scene_prob,
    )


def load_bank(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The face bank of a data config: the synthetic bank (cached) or a converted real dataset.

    Called once before several trainers start on one machine, it leaves the
    synthetic bank in the cache, so they do not all build it at once.
    """
    if cfg.source == "synthetic":
        return facebank.load_or_build_bank(
            cfg.num_subjects,
            cfg.intensities,
            cfg.face_seed,
            cfg.generator_config(),
            cfg.num_classes,
            cache_dir=cfg.cache_dir or None,
            use_cache=cfg.use_cache,
            num_workers=None if cfg.bank_workers < 0 else cfg.bank_workers,
        )
    return load_real_bank(cfg.source, cfg.num_classes)


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
    bank = load_bank(cfg)
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
        curriculum_render_config=cfg.curriculum_render_config(),
    )
