"""Tests of splits, backgrounds, the host input pipeline, fixed eval sets and the preview.

Batch 16 and the train preset are used throughout so the renderer compiles
once for the whole test session (see test_render.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from feratt_jax.data import pipeline
from feratt_jax.data.backgrounds import BackgroundPool, list_image_files
from feratt_jax.data.device import render_train_batch
from feratt_jax.data.pipeline import DataConfig, make_datasets
from feratt_jax.data.sampling import NumpyTrainIterator, TrainBatchMaker, eval_batches, make_train_iterator
from feratt_jax.data.splits import kfold_subject_split, split_record_indices

B = 16


def _cfg(tmp_path, **kw) -> DataConfig:
    base = dict(
        num_subjects=12,
        intensities=1,
        subjects_per_fold=3,
        val_size=16,
        test_size=16,
        batch_size=B,
        cache_dir=str(tmp_path),
        num_procedural_backgrounds=8,
        bank_workers=0,
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return make_datasets(_cfg(tmp_path_factory.mktemp("cache")), seed=3)


# --- splits ----------------------------------------------------------------


def test_kfold_subject_disjointness():
    subjects = np.repeat(np.arange(20), 5)  # one id per record
    tests = []
    for fold in range(5):
        sp = kfold_subject_split(subjects, 4, fold)
        tr, va, te = set(sp.train), set(sp.val), set(sp.test)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == set(range(20))
        assert len(te) == 4 and len(va) == 4
        tests.append(te)
        idx = split_record_indices(subjects, sp)
        for name in ("train", "val", "test"):
            assert set(subjects[idx[name]]) == set(getattr(sp, name))
        assert sum(len(v) for v in idx.values()) == len(subjects)
    # The test blocks of the folds partition the subjects (every subject tested once).
    assert set().union(*tests) == set(range(20))
    assert sum(len(t) for t in tests) == 20
    # Fold 0 holds out the reference's first block (sorted positions 0..n-1).
    np.testing.assert_array_equal(kfold_subject_split(subjects, 4, 0).test, [0, 1, 2, 3])


def test_kfold_errors():
    subjects = np.arange(10)
    with pytest.raises(ValueError, match="fold must be in"):
        kfold_subject_split(subjects, 3, 3)
    with pytest.raises(ValueError, match="none for training"):
        kfold_subject_split(subjects, 5, 0)
    with pytest.raises(ValueError, match="subjects_per_fold"):
        kfold_subject_split(subjects, 0, 0)
    sp = kfold_subject_split(subjects, 3, 2, val_subjects=0)
    assert len(sp.val) == 0 and len(sp.train) == 7


# --- train iterator ---------------------------------------------------------


def test_train_batches_are_class_balanced_and_subject_disjoint(datasets):
    batch = next(datasets.train)
    assert batch["faces"].shape == (B, 128, 128) and batch["faces"].dtype == np.uint8
    assert batch["masks"].shape == (B, 128, 128) and batch["masks"].dtype == np.uint8
    assert batch["backgrounds"].shape == (B, 64, 64) and batch["backgrounds"].dtype == np.uint8
    assert batch["labels"].dtype == np.int32 and batch["seeds"].dtype == np.uint32
    np.testing.assert_array_equal(np.bincount(batch["labels"], minlength=8), np.full(8, B // 8))
    held = set(datasets.split.val) | set(datasets.split.test)
    for _ in range(5):
        batch = next(datasets.train)
        assert not set(batch["subjects"]) & held
        np.testing.assert_array_equal(datasets.bank["label"][batch["records"]], batch["labels"])
        np.testing.assert_array_equal(datasets.bank["image"][batch["records"]], batch["faces"])


def test_iterator_state_restore_gives_identical_next_batch(datasets):
    it = datasets.train
    next(it)
    state = it.get_state()
    expected = next(it)
    # A fresh iterator of each kind, restored from the saved state.
    maker = TrainBatchMaker(
        datasets.bank,
        split_record_indices(datasets.bank["subject"], datasets.split)["train"],
        _pool(datasets),
        seed=3,
        global_batch=B,
    )
    for loader in ("grain", "numpy"):
        fresh = make_train_iterator(maker, loader, prefetch=2)
        fresh.set_state(state)
        got = next(fresh)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{loader}:{k}")
        assert fresh.get_state() == {"next_index": state["next_index"] + 1}
    assert isinstance(make_train_iterator(maker, "numpy"), NumpyTrainIterator)


def _pool(datasets):
    return pipeline.build_background_pool(datasets.config, seed=datasets.config.face_seed)


def test_process_shards_form_the_global_batch(datasets):
    idx = split_record_indices(datasets.bank["subject"], datasets.split)["train"]
    pool = _pool(datasets)
    whole = TrainBatchMaker(datasets.bank, idx, pool, seed=9, global_batch=B)(5)
    parts = [
        TrainBatchMaker(datasets.bank, idx, pool, seed=9, global_batch=B, process_index=p, process_count=2)(5)
        for p in range(2)
    ]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k], err_msg=k)
    other_seed = TrainBatchMaker(datasets.bank, idx, pool, seed=10, global_batch=B)(5)
    assert not np.array_equal(other_seed["seeds"], whole["seeds"])
    with pytest.raises(ValueError, match="not divisible"):
        TrainBatchMaker(datasets.bank, idx, pool, seed=9, global_batch=B, process_index=0, process_count=3)


def test_render_train_batch(datasets):
    batch = next(datasets.train)
    out = render_train_batch(batch, datasets.render_config)
    assert out["image"].shape == (B, 64, 64, 3) and out["theta"].shape == (B, 2, 3)
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["labels"])
    again = render_train_batch(batch, datasets.render_config)
    np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(again["image"]))


# --- fixed evaluation sets --------------------------------------------------


def test_eval_sets_are_fixed_and_held_out(datasets, tmp_path):
    for name, subjects in (("val", datasets.split.val), ("test", datasets.split.test)):
        split = getattr(datasets, name)
        assert split["image"].shape == (16, 64, 64, 1) and split["image"].dtype == np.float32
        assert set(split["subject"]) <= set(subjects)
        np.testing.assert_array_equal(np.bincount(split["label"], minlength=8), np.full(8, 2))
    assert not np.array_equal(datasets.val["image"], datasets.test["image"])
    # Another training seed (and a second build) gives the very same val/test sets.
    again = make_datasets(datasets.config, seed=99)
    for name in ("val", "test"):
        for k in ("image", "x_org", "mask", "theta", "label", "record"):
            np.testing.assert_array_equal(getattr(again, name)[k], getattr(datasets, name)[k], err_msg=f"{name}:{k}")
    # The test subjects of fold 0 are not those of fold 1.
    other = kfold_subject_split(datasets.bank["subject"], 3, 1)
    assert not set(other.test) & set(datasets.split.test)


def test_eval_batches_pad_and_shard(datasets):
    batches = list(eval_batches(datasets.val, 12))
    assert len(batches) == 2
    assert batches[0]["image"].shape == (12, 64, 64, 3)
    assert batches[1]["weight"].sum() == 4 and batches[0]["weight"].sum() == 12
    per_proc = [list(eval_batches(datasets.val, 12, process_index=p, process_count=2)) for p in range(2)]
    assert all(len(b) == 2 for b in per_proc)
    merged = np.concatenate([per_proc[0][0]["label"], per_proc[1][0]["label"]])
    np.testing.assert_array_equal(merged, batches[0]["label"])
    assert sum(b["weight"].sum() for p in per_proc for b in p) == 16


# --- configuration and backgrounds -----------------------------------------


def test_data_config_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown DataConfig keys"):
        DataConfig.from_dict({"num_subject": 3})
    with pytest.raises(ValueError, match="photo_prob must be a probability"):
        DataConfig(photo_prob=1.2)
    with pytest.raises(ValueError, match="face_scene_prob must be a probability in \\[0, 1\\], got 1.5"):
        DataConfig(face_scene_prob=1.5)
    with pytest.raises(ValueError, match="flip_prob must be a probability"):
        DataConfig.from_dict({"render": {"flip_prob": 2.0}})
    with pytest.raises(ValueError, match="image_size 50 is not supported"):
        DataConfig(image_size=50)
    with pytest.raises(ValueError, match="source"):
        DataConfig(source="nosuchdataset")
    with pytest.raises(ValueError, match="unknown render preset"):
        DataConfig(eval_render_preset="harsh")
    with pytest.raises(ValueError, match="unknown render preset"):
        DataConfig(curriculum_preset="harsh", curriculum_steps=10)
    with pytest.raises(ValueError, match="curriculum_preset 'identity' and curriculum_steps 0 go together"):
        DataConfig(curriculum_preset="identity")
    with pytest.raises(ValueError, match="curriculum_preset '' and curriculum_steps 5 go together"):
        DataConfig(curriculum_steps=5)
    with pytest.raises(ValueError, match="curriculum_steps must be >= 0"):
        DataConfig(curriculum_steps=-1)
    with pytest.raises(ValueError, match="curriculum_preset needs mode='synthetic'"):
        DataConfig(source="ckplus", mode="real", curriculum_preset="identity", curriculum_steps=5)
    empty = tmp_path / "empty_backgrounds"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_backgrounds.*contains no images"):
        make_datasets(_cfg(tmp_path, background_dir=str(empty)), seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="not divisible"):
        make_datasets(_cfg(tmp_path, batch_size=10), seed=0, process_count=4)


def test_from_dict_accepts_the_experiment_config():
    from feratt_jax import configs

    c = configs.tiny(configs.base_config("ferattention"))
    cfg = DataConfig.from_dict(c.data.to_dict(), batch_size=c.train.batch_size)
    assert cfg.num_subjects == c.data.num_subjects and cfg.batch_size == c.train.batch_size
    assert cfg.render_config().image_size == c.data.image_size


def test_curriculum_render_config_and_provenance():
    off = DataConfig(render_preset="train")
    on = DataConfig(render_preset="train", curriculum_preset="identity", curriculum_steps=7)
    assert off.curriculum_render_config() is None
    assert on.curriculum_render_config() == on.render_config("identity") != on.render_config()
    # A run without a curriculum records what runs recorded before the option existed.
    assert "curriculum" not in off.provenance()
    assert on.provenance()["curriculum"]["steps"] == 7
    assert on.provenance()["curriculum"]["render"]["angle"] == on.render_config("identity").angle != on.render_config().angle


def test_user_background_folder(tmp_path):
    from skimage import io

    folder = tmp_path / "bg"
    folder.mkdir()
    rng = np.random.default_rng(0)
    io.imsave(folder / "a.png", rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8), check_contrast=False)
    io.imsave(folder / "b.JPG", rng.integers(0, 256, size=(200, 70), dtype=np.uint8), check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in list_image_files(folder)] == ["a.png", "b.JPG"]
    pool = BackgroundPool.build(64, background_dir=str(folder), num_procedural=0, photo_prob=1.0)
    assert len(pool.photo_levels) == 2
    crops = pool.sample(np.random.default_rng(1), 5)
    assert crops.shape == (5, 64, 64) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, pool.sample(np.random.default_rng(1), 5))


def test_builtin_backgrounds_mix_photos_and_clutter():
    pool = BackgroundPool.build(64, num_procedural=4, seed=0)
    assert len(pool.photo_levels) == 14 and len(pool.procedural) == 4
    crops = pool.sample(np.random.default_rng(0), 64)
    assert crops.shape == (64, 64, 64)
    assert crops.std(axis=(1, 2)).mean() > 10  # clutter, not flat fields


# --- preview ----------------------------------------------------------------


def test_write_preview_png(tmp_path):
    from feratt_jax.data.preview import write_preview

    cfg = dataclasses.replace(_cfg(tmp_path), num_procedural_backgrounds=4)
    path = write_preview(tmp_path / "sub" / "preview.png", cfg, num_subjects=2, dpi=40)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cli_preview(tmp_path):
    from feratt_jax.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["data", "preview", "--out", str(tmp_path / "p.png"), "--subjects", "2"])
    assert args.func is not None and args.out.endswith("p.png")
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "preview"])  # --out is required


# --- scenes with faces in the backgrounds --------------------------------------


def test_paste_face_composites_through_the_mask_and_cuts_at_the_edge():
    from feratt_jax.data.backgrounds import paste_face

    scene = np.full((20, 20), 10, np.uint8)
    face = np.full((8, 8), 100, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255  # only the left half is face
    out = paste_face(scene, face, mask, top=6, left=6, side=8, gain=1.5)
    # Inside the masked half, away from the softened edge: the face at gain 1.5; the other half
    # and everything outside the box: the scene, untouched.
    assert out[8:12, 6:8].tolist() == [[150, 150]] * 4
    assert (out[:, 12:] == 10).all() and (out[:5] == 10).all() and (out[15:] == 10).all()
    assert scene[8, 6] == 10  # a copy: the caller's scene is not modified
    # Mirrored, the face half is on the right.
    flipped = paste_face(scene, face, mask, top=6, left=6, side=8, gain=1.5, flip=True)
    assert flipped[8:12, 12:14].tolist() == [[150, 150]] * 4 and flipped[10, 6] == 10
    # Half off the scene: only the part inside is pasted; entirely off: the scene as it was.
    edge = paste_face(scene, face, np.full((8, 8), 255, np.uint8), top=-4, left=0, side=8, gain=1.0)
    assert edge[0:2, 0:2].tolist() == [[100, 100], [100, 100]] and (edge[5:] == 10).all()
    assert np.array_equal(paste_face(scene, face, mask, top=30, left=0, side=8, gain=1.0), scene)


def test_face_scenes_take_their_share_of_crops_and_leave_the_other_crops_unchanged(tmp_path):
    cfg = _cfg(tmp_path, face_scene_prob=0.25)
    faces, masks = pipeline.scene_faces(cfg, n=4)
    assert faces.shape == masks.shape == (4, 128, 128) and faces.dtype == np.uint8 and masks.any(axis=(1, 2)).all()
    pool = BackgroundPool.build(32, num_procedural=4, seed=0, scene_faces=(faces, masks), face_scene_prob=0.25, num_face_scenes=3)
    plain = BackgroundPool.build(32, num_procedural=4, seed=0)
    assert len(pool.face_scenes) == 3 and len(pool) == len(plain) + 3
    # The scenes are clutter with faces pasted in: each differs from every plain clutter image.
    assert all(not any(np.array_equal(s, q) for q in plain.procedural) for s in pool.face_scenes)
    u = np.random.default_rng(0).random((400, BackgroundPool.DRAWS_PER_CROP))
    u[:, 5] = 0.0  # no flips / turns, so each crop can be found in its source as is
    a, b = pool.crops(u), plain.crops(u)
    scene_rows = u[:, 0] >= 0.75
    # The rest is split photo / clutter at photo_prob 0.5 of the remaining 0.75: u0 < 0.375 photos,
    # as in the plain pool (u0 < 0.5); u0 in [0.5, 0.75) clutter in both; [0.375, 0.5) photos
    # there, clutter here.
    same = (u[:, 0] < 0.375) | ((u[:, 0] >= 0.5) & (u[:, 0] < 0.75))
    assert np.array_equal(a[same], b[same])
    moved = (u[:, 0] >= 0.375) & (u[:, 0] < 0.5)
    assert moved.any() and all(not np.array_equal(a[i], b[i]) for i in np.flatnonzero(moved))
    # Every crop drawn from a scene is the window of the scene u1 picks, through the crop's gamma.
    for i in np.flatnonzero(scene_rows)[:5]:
        src = pool.face_scenes[int(u[i, 1] * 3)]
        y = int(u[i, 3] * (src.shape[0] - 32 + 1))
        x = int(u[i, 4] * (src.shape[1] - 32 + 1))
        lut = np.round(255.0 * (np.arange(256, dtype=np.float32) / 255.0) ** np.exp(u[i, 6] - 0.5)).astype(np.uint8)
        assert np.array_equal(a[i], lut[src[y : y + 32, x : x + 32]])
    # Off by default: the same draws give the same crops as a pool without scenes.
    off = BackgroundPool.build(32, num_procedural=4, seed=0, scene_faces=(faces, masks), face_scene_prob=0.0)
    assert off.face_scenes == [] and np.array_equal(off.crops(u), b)
    with pytest.raises(ValueError, match="face_scene_prob > 0 needs scene_faces"):
        BackgroundPool.build(32, num_procedural=4, face_scene_prob=0.5)
