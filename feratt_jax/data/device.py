"""Device rendering: host batches of ingredients to composites, with the jitted renderer.

:func:`render_train_batch` runs inside (or beside) the train step, keyed by
each sample's own seed from the host batch; :func:`render_eval_set` renders
a validation or test set once, deterministically. Both call
:func:`feratt_jax.data.render.render_batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from feratt_jax.data.backgrounds import BackgroundPool
from feratt_jax.data.render import render_batch
from feratt_jax.data.sampling import EVAL_STREAM


def keys_from_seeds(seeds_B):
    """One PRNG key per uint32 seed (jit-friendly)."""
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
    return render_batch(
        batch["faces"], batch["masks"], batch["backgrounds"], batch["labels"], keys_from_seeds(batch["seeds"]), config
    )


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
    rng = np.random.default_rng([seed, EVAL_STREAM, tag])
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
        keys = keys_from_seeds(seeds[take])
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
