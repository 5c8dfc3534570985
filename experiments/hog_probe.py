"""Learnability probe for the synthetic data: HOG features + logistic regression.

The classes must be learnable by a CNN but not linearly trivial (docs/data.md 4.2:
the design prototype scored 44.7 % with this probe, chance 12.5 %). The probe
renders composites exactly as training does (subject-independent split,
``render_batch`` with the train preset), extracts HOG descriptors (8x8 cells,
9 orientations, 2x2 blocks) and fits a multinomial logistic regression.

Run (its cost grows with folds x presets; the ``identity`` preset alone is
about a third of the three; needs the ``dev`` extra for scikit-learn):

    python experiments/hog_probe.py --presets identity --folds 5 --half-resolution --out probe.json

``--folds 5`` (the default) holds out each block of 12 of the 60 subjects in
turn and reports the mean: one fold's figure moves by several points with
which AU combinations its 12 test subjects happen to pose.

For each renderer preset (default: ``train``, ``mild``, ``identity``) it prints
the test accuracy on the composites, the per-class accuracies, and the same
probe on the clean transformed faces (``x_org``, no background), which bounds
what clutter costs. HOG is not invariant to the reference's +-30 degree,
+-20 % geometric augmentation, so the ``train`` figure sits near chance; the
``identity`` (aligned faces on clutter) and ``mild`` figures measure how much
expression signal a linear model finds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np


def _render(bank, rows, pool, seed, config, chunk=250):
    import jax

    from feratt_jax.data.device import keys_from_seeds
    from feratt_jax.data.render import render_batch

    rng = np.random.default_rng(seed)
    bgs = pool.sample(rng, len(rows))
    seeds = rng.integers(0, 2**32, size=len(rows), dtype=np.uint64).astype(np.uint32)
    images, clean = [], []
    for i in range(0, len(rows), chunk):
        r = rows[i : i + chunk]
        out = render_batch(
            bank["image"][r], bank["mask"][r], bgs[i : i + chunk], bank["label"][r], keys_from_seeds(seeds[i : i + chunk]), config
        )
        out = jax.device_get(out)
        images.append(np.asarray(out["image"][..., 0]))
        clean.append(np.asarray(out["x_org"][..., 0]))
    return np.concatenate(images), np.concatenate(clean)


def _hog(images: np.ndarray, cell: int = 8) -> np.ndarray:
    from skimage.feature import hog

    return np.stack(
        [hog(im, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), feature_vector=True) for im in images]
    ).astype(np.float32)


def _halve(images: np.ndarray) -> np.ndarray:
    """64 -> 32 px with an anti-aliasing filter: what a 32x32-input model sees of the face."""
    from skimage.transform import resize

    return np.stack([resize(im, (im.shape[0] // 2, im.shape[1] // 2), anti_aliasing=True) for im in images])


def _balanced_rows(bank, record_idx, n, rng):
    labels = bank["label"][record_idx]
    classes = np.unique(labels)
    cls = rng.permutation(np.resize(classes, n))
    rows = np.empty(n, np.int64)
    for c in classes:
        pos = np.flatnonzero(cls == c)
        cand = record_idx[labels == c]
        rows[pos] = cand[rng.integers(0, len(cand), size=len(pos))]
    return rows


def summarize_folds(per_fold: list[dict]) -> dict:
    """Per-fold figures (same keys each) -> their mean, with ``*_folds`` lists and ``*_std`` added.

    Accuracies are averaged; per-class dicts are averaged class by class.
    """
    out: dict = {}
    for key, first in per_fold[0].items():
        values = [f[key] for f in per_fold]
        if isinstance(first, dict):
            out[key] = {c: round(float(np.mean([v[c] for v in values])), 3) for c in first}
        else:
            out[key] = round(float(np.mean(values)), 4)
            out[f"{key}_folds"] = [round(float(v), 4) for v in values]
            out[f"{key}_std"] = round(float(np.std(values)), 4)
    return out


def check_folds(folds: int, num_subjects: int, test_subjects: int) -> None:
    """Raise ``ValueError`` unless ``folds`` disjoint blocks of ``test_subjects`` fit in ``num_subjects``."""
    if not 1 <= folds <= num_subjects // test_subjects:
        raise ValueError(
            f"--folds {folds}: must be in [1, {num_subjects // test_subjects}] ({num_subjects} subjects, {test_subjects} per fold)"
        )


def run_probe(
    num_subjects: int = 60,
    intensities: int = 3,
    test_subjects: int = 12,
    n_train: int = 4000,
    n_test: int = 1000,
    seed: int = 0,
    presets: tuple[str, ...] = ("train", "mild", "identity"),
    cache_dir: str | None = None,
    generator: dict | None = None,
    half_resolution: bool = False,
    folds: int = 5,
) -> dict:
    """Runs the probe and returns its figures per preset (see module docstring).

    ``generator`` overrides :class:`GeneratorConfig` fields (calibration sweeps).
    ``half_resolution`` adds the clean-face probe at 32 px (4 px cells): how
    much of the expression a 32x32-input model could still see. ``folds``
    repeats the probe with each of the first ``folds`` blocks of
    ``test_subjects`` subjects held out and reports the mean (with the
    per-fold figures and their std): which AU combination each of 12 test
    subjects poses moves a single fold's figure by several points.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from feratt_jax.data import facebank, synthfaces
    from feratt_jax.data.backgrounds import BackgroundPool
    from feratt_jax.data.render import render_preset
    from feratt_jax.data.splits import kfold_subject_split, split_record_indices

    t0 = time.perf_counter()
    gen = synthfaces.GeneratorConfig.from_dict(generator)
    check_folds(folds, num_subjects, test_subjects)
    bank = facebank.load_or_build_bank(num_subjects, intensities, seed=seed, config=gen, cache_dir=cache_dir)
    pool = BackgroundPool.build(64, seed=seed)

    def fit_eval(x_tr, x_te, y_tr, y_te, cell=8):
        f_tr, f_te = _hog(x_tr, cell), _hog(x_te, cell)
        scaler = StandardScaler().fit(f_tr)
        clf = LogisticRegression(max_iter=300, C=0.05)
        clf.fit(scaler.transform(f_tr), y_tr)
        pred = clf.predict(scaler.transform(f_te))
        per_class = {
            synthfaces.CLASS_NAMES[c]: round(float(np.mean(pred[y_te == c] == c)), 3) for c in np.unique(y_te)
        }
        return float(np.mean(pred == y_te)), per_class

    per_fold: dict[str, list[dict]] = {preset: [] for preset in presets}
    for fold in range(folds):
        split = kfold_subject_split(bank["subject"], test_subjects, fold, val_subjects=0)
        idx = split_record_indices(bank["subject"], split)
        # Fold 0 draws exactly what the single-fold probe always drew.
        rng = np.random.default_rng(seed + 1 + 10 * fold)
        tr_rows = _balanced_rows(bank, idx["train"], n_train, rng)
        te_rows = _balanced_rows(bank, idx["test"], n_test, rng)
        y_tr, y_te = bank["label"][tr_rows], bank["label"][te_rows]
        for preset in presets:
            cfg = render_preset(preset)
            tr_img, tr_clean = _render(bank, tr_rows, pool, seed + 2 + 10 * fold, cfg)
            te_img, te_clean = _render(bank, te_rows, pool, seed + 3 + 10 * fold, cfg)
            acc, per_class = fit_eval(tr_img, te_img, y_tr, y_te)
            acc_clean, per_class_clean = fit_eval(tr_clean, te_clean, y_tr, y_te)
            r = {
                "composite_accuracy": acc,
                "composite_per_class": per_class,
                "clean_face_accuracy": acc_clean,
                "clean_face_per_class": per_class_clean,
            }
            if half_resolution:
                acc32, per_class32 = fit_eval(_halve(tr_clean), _halve(te_clean), y_tr, y_te, cell=4)
                r["clean_face_accuracy_32px"] = acc32
                r["clean_face_per_class_32px"] = per_class32
            per_fold[preset].append(r)
    return {
        "results": {preset: summarize_folds(rows) for preset, rows in per_fold.items()},
        "chance": 1.0 / synthfaces.NUM_CLASSES,
        "n_train": n_train,
        "n_test": n_test,
        "num_subjects": num_subjects,
        "test_subjects": test_subjects,
        "folds": folds,
        "generator": dict(generator or {}),
        # Every field, not only the overrides: a later change of the defaults
        # must not change what an old report says it measured.
        "generator_config": dataclasses.asdict(gen),
        "generator_version": synthfaces.GENERATOR_VERSION,
        "seconds_total": time.perf_counter() - t0,
    }


def parse_generator_overrides(items: list[str]) -> dict:
    """``["posing_variation=0.25", ...]`` -> a validated GeneratorConfig override dict."""
    from feratt_jax.data import synthfaces

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--generator {item!r}: expected FIELD=VALUE")
        value = json.loads(f"[{raw}]") if "," in raw else json.loads(raw)
        out[key] = value
    synthfaces.GeneratorConfig.from_dict(out)  # unknown fields and bad values fail here, before any work
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=60)
    p.add_argument("--intensities", type=int, default=3)
    p.add_argument("--test-subjects", type=int, default=12)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--presets", default="train,mild,identity", help="comma-separated renderer presets")
    p.add_argument("--cache-dir", default=None)
    p.add_argument(
        "--folds", type=int, default=5, help="subject-independent folds to average (1 = the single held-out block of the first versions)"
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--half-resolution", action="store_true", help="also probe the clean faces at 32 px (4 px cells)")
    p.add_argument(
        "--generator",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a GeneratorConfig field (repeatable), e.g. posing_variation=0.25",
    )
    a = p.parse_args()
    try:
        generator = parse_generator_overrides(a.generator)
    except ValueError as e:
        p.error(str(e))
    try:
        check_folds(a.folds, a.subjects, a.test_subjects)
    except ValueError as e:
        p.error(str(e))
    out = pathlib.Path(a.out) if a.out else None
    if out is not None and not out.parent.is_dir():
        p.error(f"--out {out}: folder {out.parent} does not exist")
    res = run_probe(
        a.subjects,
        a.intensities,
        a.test_subjects,
        a.train,
        a.test,
        a.seed,
        tuple(a.presets.split(",")),
        a.cache_dir,
        generator,
        a.half_resolution,
        a.folds,
    )
    text = json.dumps(res, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
