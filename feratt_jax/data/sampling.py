"""Host sampling: the ingredients of each training batch, and evaluation sets cut into batches.

Everything here is numpy on the host and a pure function of its seeds:
:class:`TrainBatchMaker` draws the batch of any step (class-balanced, as the
reference), :func:`make_train_iterator` wraps it in a checkpointable grain or
numpy iterator, and :func:`eval_batches` cuts a pre-rendered evaluation set
into equally shaped per-process batches. The device side is
:mod:`feratt_jax.data.device`; :mod:`feratt_jax.data.pipeline` assembles both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from feratt_jax.data.backgrounds import BackgroundPool

LOADERS = ("auto", "grain", "numpy")

# Stream tags for np.random.default_rng seed sequences.
TRAIN_STREAM = 0x7EA1
# Batches for re-estimating BatchNorm statistics (precise BN): training
# subjects, but a stream of their own, so they never shift the training draw.
PRECISE_BN_STREAM = 0xB57A
EVAL_STREAM = 0xE7A1


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

    def __call__(self, step: int, stream: int = TRAIN_STREAM) -> dict[str, np.ndarray]:
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


def grain_available() -> bool:
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
    use_grain = loader == "grain" or (loader == "auto" and grain_available())
    if not use_grain:
        return NumpyTrainIterator(maker)
    import sys

    import grain

    # An unbounded range: training length is the trainer's business.
    ds = grain.MapDataset.range(0, sys.maxsize).map(maker)
    opts = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


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
