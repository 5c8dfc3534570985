"""Throughput of the synthetic-data stack: generator, face bank, host batches, renderer.

Run on the machine you want figures for (CPU by default; on a GPU host JAX
uses the accelerator for the renderer):

    python benchmarks/data_throughput.py            # full run, ~1-2 min on 2 cores
    python benchmarks/data_throughput.py --quick    # smaller sizes, ~20 s

Prints one JSON object:

* ``face_generation_faces_per_s``: synthetic faces per second on one core
  (in process, identity sampling amortised over the subject's faces);
* ``bank_build_s`` / ``bank_load_s``: the one-off cost of the default quick
  bank (120 subjects x 8 classes x 3 intensities) with all cores, and of
  loading it back from the ``.npz`` cache;
* ``background_pool_build_s``;
* ``host_batches_per_s``: train-iterator host batches per second (numpy loader);
* ``render_images_per_s``: jitted ``render_batch`` at batch 32 and 256, with
  the compile time reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def _time(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--subjects", type=int, default=120, help="bank size for the build timing")
    p.add_argument("--intensities", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    a = p.parse_args()

    import jax

    from feratt_jax.data import facebank, synthfaces
    from feratt_jax.data.backgrounds import BackgroundPool
    from feratt_jax.data.device import keys_from_seeds
    from feratt_jax.data.sampling import TrainBatchMaker
    from feratt_jax.data.render import TRAIN_PRESET, render_batch

    res: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        }
    }

    # --- face generation (one core, in process)
    n_subj = 4 if a.quick else 10
    synthfaces.generate_subject_faces(0, 1)  # warm caches
    t0 = time.perf_counter()
    n = sum(len(synthfaces.generate_subject_faces(s, 3)["label"]) for s in range(n_subj))
    res["face_generation_faces_per_s"] = n / (time.perf_counter() - t0)

    # --- bank build (all cores) and cache load
    subjects = 24 if a.quick else a.subjects
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bank = facebank.load_or_build_bank(subjects, a.intensities, 0, cache_dir=tmp)
        res["bank_build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        facebank.load_or_build_bank(subjects, a.intensities, 0, cache_dir=tmp)
        res["bank_load_s"] = time.perf_counter() - t0
    res["bank_faces"] = int(len(bank["label"]))
    res["bank_workers"] = os.cpu_count()

    # --- backgrounds and host batches
    t0 = time.perf_counter()
    pool = BackgroundPool.build(TRAIN_PRESET.image_size, num_procedural=128)
    res["background_pool_build_s"] = time.perf_counter() - t0
    res["host_batches_per_s"] = {}
    res["render_images_per_s"] = {}
    res["render_compile_s"] = {}
    for b in a.batches:
        maker = TrainBatchMaker(bank, np.arange(len(bank["label"])), pool, seed=0, global_batch=b)
        maker(0)
        dt = _time(lambda: maker(1), 3 if a.quick else 10)
        res["host_batches_per_s"][b] = 1.0 / dt

        # --- renderer, jitted
        batch = maker(2)
        args = [jax.device_put(batch[k]) for k in ("faces", "masks", "backgrounds", "labels")]
        keys = keys_from_seeds(jax.device_put(batch["seeds"]))
        t0 = time.perf_counter()
        jax.block_until_ready(render_batch(*args, keys, TRAIN_PRESET))
        res["render_compile_s"][b] = time.perf_counter() - t0
        reps = max(3, (256 * (4 if a.quick else 20)) // b)
        t0 = time.perf_counter()
        for i in range(reps):
            out = render_batch(*args, keys, TRAIN_PRESET)
        jax.block_until_ready(out)
        res["render_images_per_s"][b] = b * reps / (time.perf_counter() - t0)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
