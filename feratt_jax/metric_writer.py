"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow) and JSONL.

Only process 0 writes. Scalars go to both sinks; images only to TensorBoard
(and to PNGs where the caller asks).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = workdir / "metrics.jsonl"
        self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, Any], *, prefix: str = "") -> None:
        if not self.enabled:
            return
        clean = {f"{prefix}{k}": float(v) for k, v in values.items()}
        for key, value in clean.items():
            self._tb.add_scalar(key, value, step)
        record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as err:  # name the file: a full disk's OSError carries no path
            raise OSError(err.errno, f"{err.strerror} writing {self._jsonl_path}", str(self._jsonl_path)) from err

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``images``: name -> (N, H, W, C) float in [0, 1] (or (N, H, W))."""
        if not self.enabled:
            return
        for name, batch in images.items():
            batch = np.asarray(batch, np.float32)
            if batch.ndim == 3:
                batch = batch[..., None]
            self._tb.add_images(name, np.clip(batch, 0.0, 1.0), step, dataformats="NHWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False
