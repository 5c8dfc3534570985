"""Building (in parallel) and caching banks of synthetic faces.

A face bank is a dict of stacked numpy arrays in the shared record schema
(``image``, ``mask``, ``landmarks``, ``label``, ``subject``, ``action_units``,
plus ``index``, the sample index within (subject, label)). Banks are cached as
uncompressed ``.npz`` files keyed by every generator parameter and the
generator version, so repeated runs load in well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from feratt_jax.data import synthfaces

log = logging.getLogger(__name__)

BANK_KEYS = ("image", "mask", "landmarks", "label", "subject", "action_units", "index")


def default_cache_dir() -> pathlib.Path:
    """``$FERATT_CACHE_DIR`` or ``~/.cache/feratt_jax``."""
    env = os.environ.get("FERATT_CACHE_DIR")
    return pathlib.Path(env).expanduser() if env else pathlib.Path("~/.cache/feratt_jax").expanduser()


def bank_cache_key(
    num_subjects: int,
    intensities: int,
    seed: int,
    num_classes: int,
    config: synthfaces.GeneratorConfig,
) -> str:
    """Hex digest identifying a bank's content."""
    payload = json.dumps(
        {
            "version": synthfaces.GENERATOR_VERSION,
            "num_subjects": num_subjects,
            "intensities": intensities,
            "seed": seed,
            "num_classes": num_classes,
            "config": config.cache_token(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _generate_subjects(
    subjects: list[int], intensities: int, seed: int, config: synthfaces.GeneratorConfig, num_classes: int
) -> dict[str, np.ndarray]:
    """The faces of several subjects, concatenated."""
    parts = [synthfaces.generate_subject_faces(s, intensities, seed, config, num_classes) for s in subjects]
    return concat_banks(parts)


def _run_workers(
    chunks: list[list[int]], intensities: int, seed: int, config: synthfaces.GeneratorConfig, num_classes: int
) -> list[dict[str, np.ndarray]]:
    """Generates each chunk of subjects in its own ``python -m feratt_jax.data.facebank`` process.

    Plain subprocesses rather than ``multiprocessing``: spawn-based pools
    re-import the caller's ``__main__``, which crashes (or re-runs the
    script) when a user script calls the pipeline without an
    ``if __name__ == "__main__":`` guard, and fork is unsafe once JAX runs.
    """
    pkg_root = str(pathlib.Path(synthfaces.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [env.get("PYTHONPATH")])])
    cfg = dataclasses.asdict(config)
    with tempfile.TemporaryDirectory(prefix="feratt_bank_") as tmp:
        procs = []
        for k, chunk in enumerate(chunks):
            out = os.path.join(tmp, f"part{k}.npz")
            job = {"out": out, "first": chunk[0], "count": len(chunk), "intensities": intensities, "seed": seed}
            job.update(num_classes=num_classes, config=cfg)
            cmd = [sys.executable, "-m", "feratt_jax.data.facebank", json.dumps(job, default=int)]  # subject ids may be numpy ints
            procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
        parts = []
        for proc, out in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"face-bank worker failed (exit {proc.returncode}):\n{err.decode()[-3000:]}")
            with np.load(out) as z:
                parts.append({k: z[k] for k in BANK_KEYS})
    return parts


def concat_banks(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenates face banks along the record axis."""
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def generate_bank(
    num_subjects: int,
    intensities: int,
    seed: int = 0,
    config: synthfaces.GeneratorConfig = synthfaces.GeneratorConfig(),
    num_classes: int = synthfaces.NUM_CLASSES,
    num_workers: int | None = None,
    min_parallel_faces: int = 400,
) -> dict[str, np.ndarray]:
    """Generates a face bank (no cache).

    Records are ordered by subject, then label, then index, whatever the
    number of workers, so the bank is identical for any ``num_workers``.

    Args:
      num_subjects: subjects 0..num_subjects-1.
      intensities: samples per (subject, class).
      seed: dataset seed.
      config: generator parameters.
      num_classes: classes 0..num_classes-1 are drawn.
      num_workers: worker processes (``None``: one per CPU; <= 1: in process).
        Workers are separate interpreters (see :func:`_run_workers`), safe
        in a process that already runs JAX and in unguarded scripts.
      min_parallel_faces: smaller banks are generated in process, since the
        workers' start-up (~1 s) would cost more than it saves.

    Returns:
      The bank dict.
    """
    if num_subjects < 1 or intensities < 1:
        raise ValueError(f"num_subjects and intensities must be >= 1, got {num_subjects}, {intensities}")
    if not 1 <= num_classes <= synthfaces.NUM_CLASSES:
        raise ValueError(f"num_classes must be in [1, {synthfaces.NUM_CLASSES}], got {num_classes}")
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    subjects = list(range(num_subjects))
    n_faces = num_subjects * intensities * num_classes
    if num_workers <= 1 or n_faces < min_parallel_faces:
        return _generate_subjects(subjects, intensities, seed, config, num_classes)
    num_workers = min(num_workers, num_subjects)
    # Contiguous, equal chunks keep the record order independent of num_workers.
    chunks = [list(c) for c in np.array_split(np.arange(num_subjects), num_workers) if len(c)]
    return concat_banks(_run_workers(chunks, intensities, seed, config, num_classes))


def load_or_build_bank(
    num_subjects: int,
    intensities: int,
    seed: int = 0,
    config: synthfaces.GeneratorConfig = synthfaces.GeneratorConfig(),
    num_classes: int = synthfaces.NUM_CLASSES,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    num_workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Loads a cached face bank, or generates and caches it.

    Args:
      num_subjects: subjects 0..num_subjects-1.
      intensities: samples per (subject, class).
      seed: dataset seed.
      config: generator parameters.
      num_classes: classes drawn.
      cache_dir: cache folder (default :func:`default_cache_dir`).
      use_cache: read and write the cache.
      num_workers: see :func:`generate_bank`.

    Returns:
      The bank dict.
    """
    if not use_cache:
        return generate_bank(num_subjects, intensities, seed, config, num_classes, num_workers)
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = bank_cache_key(num_subjects, intensities, seed, num_classes, config)
    path = folder / f"synthfaces-v{synthfaces.GENERATOR_VERSION}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                bank = {k: z[k] for k in BANK_KEYS}
            log.info("loaded face bank %s (%d faces)", path, len(bank["label"]))
            return bank
        except Exception as err:  # a truncated or stale file: rebuild it
            log.warning("ignoring unreadable face-bank cache %s: %s", path, err)
    t0 = time.perf_counter()
    bank = generate_bank(num_subjects, intensities, seed, config, num_classes, num_workers)
    log.info("generated %d faces in %.1f s", len(bank["label"]), time.perf_counter() - t0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a concurrent reader never sees a partial file.
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **bank)
        os.replace(tmp, path)
    except OSError as err:  # caching is an optimisation; never fail the run for it
        log.warning("could not write face-bank cache %s: %s", path, err)
    return bank


def _worker(job_json: str) -> None:
    """A worker process of :func:`_run_workers`: ``python -m feratt_jax.data.facebank JOB``.

    ``JOB`` is one JSON object (``out``, ``first``, ``count``, ``intensities``,
    ``seed``, ``num_classes`` and the ``GeneratorConfig`` as ``config``): an
    internal protocol between two processes, not a command line.
    """
    job = json.loads(job_json)
    config = synthfaces.GeneratorConfig.from_dict(job["config"])
    first = int(job["first"])
    bank = _generate_subjects(list(range(first, first + int(job["count"]))), int(job["intensities"]), int(job["seed"]), config, int(job["num_classes"]))
    with open(job["out"], "wb") as f:
        np.savez(f, **bank)


if __name__ == "__main__":
    _worker(sys.argv[1])
