"""Real-dataset converters (`feratt data prepare`) on tiny fake trees in each native layout.

The trees are made at test time from the synthetic face generator: a face
pasted on a grey canvas, with its 68 landmarks moved along, so the native
files (PNG/TIFF/BMP/JPEG frames, label files, landmark files, CSV rows) are
real files in the real layouts, and no real data is needed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.io
from skimage.transform import resize

from feratt_jax.data import synthfaces
from feratt_jax.data.real import NUM_CLASSES, align, records
from feratt_jax.data.real import prepare as prep
from feratt_jax.data.real.fer2013 import majority_label

BG = 110  # grey canvas behind the pasted faces


def _face(subject: int, label: int, index: int = 0) -> dict:
    return synthfaces.generate_face(subject, label, index)


def _portrait(rec: dict, height: int, width: int, top: int, left: int, angle_deg: float = 0.0):
    """The dark face pasted on a grey canvas (optionally rotated about the face centre) and its landmarks."""
    canvas = np.full((height, width), float(BG))
    face = np.where(rec["mask"] > 127, rec["image"].astype(float), float(BG))
    lm = rec["landmarks"].astype(np.float64) + np.array([left, top])
    if angle_deg:
        from skimage.transform import rotate

        patch = rotate(face, angle_deg, order=1, mode="edge", preserve_range=True)
        t = math.radians(angle_deg)  # skimage turns counter-clockwise as displayed (y down)
        c = np.array([left + 63.5, top + 63.5])
        rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
        lm = (lm - c) @ rot.T + c
        face = patch
    canvas[top : top + 128, left : left + 128] = face
    return np.clip(canvas, 0, 255).astype(np.uint8), lm


def _write_landmarks(path, lm) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(f"   {x:.7e}   {y:.7e}" for x, y in lm) + "\n")


def _imsave(path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    skimage.io.imsave(str(path), image, check_contrast=False)


def _pixels(rec: dict) -> str:
    """A face as FER2013's 48x48 space-separated pixel string."""
    small = resize(rec["image"].astype(float), (48, 48), anti_aliasing=True, preserve_range=True)
    return " ".join(str(int(v)) for v in np.clip(small, 0, 255).round().ravel())


def _check_faces(bank: dict) -> None:
    """Schema and the dark-face invariants of every record."""
    n = len(bank["label"])
    assert bank["image"].shape == (n, 128, 128) and bank["image"].dtype == np.uint8
    assert bank["mask"].shape == (n, 128, 128) and bank["mask"].dtype == np.uint8
    assert bank["landmarks"].shape == (n, 68, 2) and bank["landmarks"].dtype == np.float32
    assert bank["label"].dtype == np.int32 and bank["subject"].dtype == np.int32
    for img, m in zip(bank["image"], bank["mask"]):
        assert img[m == 0].max(initial=0) == 0  # black outside the face
        assert img[m == 255].min() >= 51  # the +0.2 offset
        assert (m == 255).sum() > 1500  # a real face, not a sliver


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------


def test_clamp_box_uses_width_for_x_and_height_for_y():
    # The reference clamps x with the height (here 100) and y with the width (fer.py:81-82).
    assert align.clamp_box(150.0, -5.0, 195.0, 120.0, width=200, height=100) == (150.0, -0.5, 195.0, 99.5)
    assert align.clamp_box(-9.0, 10.0, 260.0, 40.0, width=200, height=100) == (-0.5, 10.0, 199.5, 40.0)


def test_align_with_landmarks_levels_eyes_and_keeps_a_face_near_the_edge():
    rec = _face(3, 1)
    # A wide, short image with the face against its right edge: the swapped
    # clamp would cut the crop at x = height.
    image, lm = _portrait(rec, 150, 300, 10, 168, angle_deg=12.0)
    out = align.align_with_landmarks(align.to_grey(image), lm)
    assert out.method == align.Method.LANDMARKS
    assert out.image.shape == out.mask.shape == (128, 128)
    left, right = align.INNER_EYE_CORNERS
    assert abs(out.landmarks[right, 1] - out.landmarks[left, 1]) < 1e-3  # eye line level
    assert out.landmarks[right, 0] > out.landmarks[left, 0]  # not turned upside down
    # The whole hull is inside the output: the mask matches the landmarks' hull area.
    from scipy.spatial import ConvexHull

    hull_area = ConvexHull(out.landmarks.astype(np.float64)).volume
    assert abs(out.mask.astype(np.float64).sum() / 255.0 - hull_area) < 0.03 * hull_area
    _check_faces({k: v[None] for k, v in {"image": out.image, "mask": out.mask, "landmarks": out.landmarks,
                                          "label": np.int32(0), "subject": np.int32(0)}.items()})


def test_align_fallbacks_record_their_method():
    rec = _face(2, 0)
    image, _ = _portrait(rec, 200, 200, 36, 36)
    grey = align.to_grey(image)
    assert align.align_face(grey).method == align.Method.LBP_CASCADE
    assert align.align_face(grey, pre_cropped=True).method == align.Method.FULL_FRAME
    boxed = align.align_face(grey, face_box=(36, 36, 128, 128))
    assert boxed.method == align.Method.FACE_BOX
    assert np.isnan(boxed.landmarks).all()
    # No face in a flat image: the frame itself, recorded as such.
    assert align.align_face(np.full((120, 120), 90.0)).method == align.Method.FULL_FRAME
    with pytest.raises(ValueError, match="68"):
        align.align_with_landmarks(grey, np.zeros((5, 2)))


# ---------------------------------------------------------------------------
# CK+
# ---------------------------------------------------------------------------

# (subject, sequence) -> CK+ emotion code (None: unlabelled sequence)
CK_SEQUENCES = {("S005", "001"): 5, ("S005", "002"): 7, ("S010", "001"): 2, ("S011", "003"): 6, ("S011", "004"): None}


@pytest.fixture(scope="module")
def ckplus_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("ckplus_raw")
    for s_i, ((subject, seq), code) in enumerate(CK_SEQUENCES.items()):
        for frame in range(1, 5):
            rec = _face(s_i, 0 if frame == 1 else 1, frame)
            image, lm = _portrait(rec, 150, 200, 10, 40 + 5 * frame, angle_deg=3.0 * frame)
            stem = f"{subject}_{seq}_{frame:08d}"
            _imsave(raw / "cohn-kanade-images" / subject / seq / f"{stem}.png", image)
            if not (subject == "S010" and frame == 4):  # one frame without landmarks -> LBP cascade
                _write_landmarks(raw / "Landmarks" / subject / seq / f"{stem}_landmarks.txt", lm)
        if code is not None:
            emo = raw / "Emotion" / subject / seq / f"{subject}_{seq}_{4:08d}_emotion.txt"
            emo.parent.mkdir(parents=True, exist_ok=True)
            emo.write_text(f"   {code:.7e}\n")
    (raw / "cohn-kanade-images" / "S005" / "001" / ".DS_Store").write_bytes(b"junk")
    return raw


@pytest.fixture(scope="module")
def ckplus_prepared(ckplus_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckplus_out")
    report = prep.prepare_dataset("ckplus", ckplus_raw, out, progress=False)
    return out, report


def test_ckplus_counts_labels_subjects_and_methods(ckplus_prepared):
    out, report = ckplus_prepared
    labelled = [k for k, v in CK_SEQUENCES.items() if v is not None]
    assert report.num_records == 4 * len(labelled)  # first frame neutral + the last 3 frames
    assert report.dropped == {"sequence without an emotion label": 1}
    assert report.skipped == []
    bank = records.load_prepared_bank(out)
    _check_faces(bank)
    manifest = records.read_manifest(out)
    assert manifest["subject_names"] == ["S005", "S010", "S011"]
    assert manifest["num_classes"] == 8 and manifest["format"] == "npz"
    ck_to_unified = [0, 4, 7, 5, 6, 1, 3, 2]
    for src, lab, subj in zip(bank["source"], bank["label"], bank["subject"]):
        subject, seq, frame = src.split("/")[1], src.split("/")[2], int(src[-12:-4])
        assert manifest["subject_names"][subj] == subject
        expected = 0 if frame == 1 else ck_to_unified[CK_SEQUENCES[(subject, seq)]]
        assert lab == expected, src
    # The frame without a landmark file was found by the cascade; the rest from landmarks.
    methods = bank["method"]
    assert (methods == align.Method.LBP_CASCADE).sum() == 1
    assert (methods == align.Method.LANDMARKS).sum() == report.num_records - 1
    lm = bank["landmarks"][methods == align.Method.LANDMARKS]
    np.testing.assert_allclose(lm[:, 42, 1], lm[:, 39, 1], atol=1e-3)
    assert np.isnan(bank["landmarks"][methods == align.Method.LBP_CASCADE]).all()
    # Same keys as the synthetic bank, so the pipeline consumes either.
    from feratt_jax.data.facebank import BANK_KEYS

    assert set(BANK_KEYS) <= set(bank)
    # The in-progress state is gone once the manifest is written.
    assert not (out / records.PROGRESS_DIR).exists()


def test_ckplus_rerun_is_a_no_op_and_other_inputs_are_refused(ckplus_raw, ckplus_prepared, tmp_path):
    out, _ = ckplus_prepared
    again = prep.prepare_dataset("ckplus", ckplus_raw, out, progress=False)
    assert again.already_done and again.num_records == 16
    with pytest.raises(ValueError, match="--overwrite"):
        prep.prepare_dataset("ckplus", ckplus_raw, out, frames_per_sequence=2, progress=False)
    assert records.load_prepared_bank(out)["label"].shape == (16,)  # nothing lost


def test_ckplus_bad_inputs_are_named(ckplus_raw, tmp_path):
    with pytest.raises(FileNotFoundError, match="raw folder .*missing_raw does not exist"):
        prep.prepare_dataset("ckplus", tmp_path / "missing_raw", tmp_path / "o1", progress=False)
    no_emotion = tmp_path / "ck_no_emotion"
    (no_emotion / "cohn-kanade-images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="Emotion"):
        prep.prepare_dataset("ckplus", no_emotion, tmp_path / "o2", progress=False)
    # An unknown emotion code and a corrupt frame: skipped, each named.
    import shutil

    raw = tmp_path / "ck_bad"
    shutil.copytree(ckplus_raw, raw)
    (raw / "Emotion/S005/002/S005_002_00000004_emotion.txt").write_text("   9.0000000e+00\n")
    (raw / "cohn-kanade-images/S010/001/S010_001_00000003.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    report = prep.prepare_dataset("ckplus", raw, tmp_path / "o3", progress=False)
    reasons = dict(report.skipped)
    assert "unknown label code 9" in reasons["Emotion/S005/002/S005_002_00000004_emotion.txt:1"]
    assert "cannot read image" in reasons["cohn-kanade-images/S010/001/S010_001_00000003.png"]
    assert report.num_records == 16 - 4 - 1
    tsv = (tmp_path / "o3" / records.SKIPPED_NAME).read_text()
    assert "S010_001_00000003.png\tcannot read image" in tsv


# ---------------------------------------------------------------------------
# JAFFE and BU-3DFE (no landmarks: LBP cascade; optional user landmarks)
# ---------------------------------------------------------------------------


def test_jaffe_layout_labels_and_user_landmarks(tmp_path):
    raw = tmp_path / "jaffe"
    names = {"KA.AN1.39.tiff": 4, "KA.HA2.30.tiff": 1, "YM.NE1.49.tiff": 0, "YM.SU3.60.tiff": 2}
    landmarks_rows = []
    for i, name in enumerate(names):
        image, lm = _portrait(_face(i, names[name]), 160, 160, 16, 16)
        _imsave(raw / name, image)
        if name == "YM.NE1.49.tiff":
            landmarks_rows.append(name + "," + ",".join(f"{v:.3f}" for v in lm.ravel()))
    _imsave(raw / "KA.XX1.40.tiff", np.full((160, 160), 90, np.uint8))  # unknown expression code
    (raw / "KA.SA1.41.tiff").write_bytes(b"II*\x00 definitely not a tiff")  # corrupt
    (raw / "README.txt").write_text("not an image")
    header = "path," + ",".join(f"x{i},y{i}" for i in range(68))
    lm_csv = tmp_path / "jaffe_landmarks.csv"
    lm_csv.write_text(header + "\n" + "\n".join(landmarks_rows) + "\nKA.HA2.30.tiff,1,2\n")

    report = prep.prepare_dataset("jaffe", raw, tmp_path / "out", landmarks_csv=lm_csv, progress=False)
    reasons = dict(report.skipped)
    assert "unknown label code 'XX'" in reasons["KA.XX1.40.tiff"]
    assert "cannot read image" in reasons["KA.SA1.41.tiff"]
    assert "jaffe_landmarks.csv:3" in reasons  # the short row, by line
    assert report.num_records == 4 and report.num_classes == NUM_CLASSES["jaffe"] == 7
    bank = records.load_prepared_bank(tmp_path / "out")
    _check_faces(bank)
    by_source = dict(zip(bank["source"], zip(bank["label"], bank["subject"], bank["method"])))
    for name, label in names.items():
        assert by_source[name][0] == label
    assert by_source["KA.AN1.39.tiff"][1] == 0 and by_source["YM.SU3.60.tiff"][1] == 1  # KA, YM
    assert by_source["YM.NE1.49.tiff"][2] == align.Method.LANDMARKS
    assert by_source["KA.AN1.39.tiff"][2] == align.Method.LBP_CASCADE


def test_bu3dfe_layout_intensity_and_subjects(tmp_path):
    raw = tmp_path / "BU3DFE"
    files = {
        "F0001/F0001_NE00WH_F2D.bmp": 0,
        "F0001/F0001_HA04WH_F2D.bmp": 1,
        "F0001/F0001_SU01WH_F2D.bmp": 2,  # intensity 1: dropped with min_intensity=2
        "M0002/M0002_AN03BL_F2D.bmp": 4,
        "M0002/M0002_QQ03BL_F2D.bmp": None,  # unknown code
    }
    for i, (rel, label) in enumerate(files.items()):
        image, _ = _portrait(_face(i, label or 0), 160, 160, 16, 16)
        _imsave(raw / rel, image)
    _imsave(raw / "F0001" / "F0001_HA04WH_F3D.bmp", np.zeros((32, 32), np.uint8))  # a texture: ignored
    report = prep.prepare_dataset("bu3dfe", raw, tmp_path / "out", min_intensity=2, progress=False)
    assert report.num_records == 3 and report.num_classes == 7
    assert report.dropped == {"intensity below 2": 1}
    assert "unknown label code 'QQ'" in dict(report.skipped)["M0002/M0002_QQ03BL_F2D.bmp"]
    bank = records.load_prepared_bank(tmp_path / "out")
    _check_faces(bank)
    assert records.read_manifest(tmp_path / "out")["subject_names"] == ["F0001", "M0002"]
    got = {s: (int(lab), int(subj)) for s, lab, subj in zip(bank["source"], bank["label"], bank["subject"])}
    assert got == {
        "F0001/F0001_NE00WH_F2D.bmp": (0, 0),
        "F0001/F0001_HA04WH_F2D.bmp": (1, 0),
        "M0002/M0002_AN03BL_F2D.bmp": (4, 1),
    }


# ---------------------------------------------------------------------------
# FER2013 / FER+ (CSV, shards, resume)
# ---------------------------------------------------------------------------


def _fer2013_csv(path, rows) -> None:
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))


@pytest.fixture(scope="module")
def fer_rows():
    px = [_pixels(_face(i, i % 8)) for i in range(6)]
    return [
        (3, px[0], "Training"),  # happy -> 1
        (0, px[1], "Training"),  # angry -> 4
        (9, px[2], "Training"),  # unknown code: skipped, line 4
        (6, px[3], "PublicTest"),  # neutral -> 0
        (5, " ".join(px[4].split()[:-1]), "PrivateTest"),  # a pixel short: skipped at conversion, line 6
        (2, px[5], "PrivateTest"),  # fear -> 6
    ]


def test_fer2013_shards_labels_partitions_and_skips(tmp_path, fer_rows):
    raw = tmp_path / "fer"
    raw.mkdir()
    _fer2013_csv(raw / "fer2013.csv", fer_rows)
    report = prep.prepare_dataset("fer2013", raw, tmp_path / "out", chunk_size=2, progress=False)
    assert report.format == ("array_record" if records.array_record_available() else "npz_shards")
    assert len(report.files) == 3  # 5 listed rows in chunks of 2
    reasons = dict(report.skipped)
    assert "unknown label code 9" in reasons["fer2013.csv:4"]
    assert "2303 values" in reasons["fer2013.csv:6"]
    bank = records.load_prepared_bank(tmp_path / "out")
    _check_faces(bank)
    assert bank["label"].tolist() == [1, 4, 0, 6]
    assert bank["partition"].tolist() == [0, 0, 1, 2]
    assert (bank["method"] == align.Method.FULL_FRAME).all()
    assert len(np.unique(bank["subject"])) == 4  # no identities: one subject per image
    assert records.read_manifest(tmp_path / "out")["one_subject_per_image"]
    # grain-style random access over the shards.
    source = records.PreparedRecords(tmp_path / "out")
    assert len(source) == 4 and int(source[3]["label"]) == 6 and source[3]["image"].shape == (128, 128)
    # The official split of the pipeline.
    from feratt_jax.data.real.bank import official_split

    split = official_split(bank)
    assert len(split.train) == 2 and len(split.val) == 1 and len(split.test) == 1


def test_fer2013_interrupted_conversion_resumes(tmp_path, fer_rows, monkeypatch):
    raw = tmp_path / "fer"
    raw.mkdir()
    _fer2013_csv(raw / "fer2013.csv", fer_rows)
    out = tmp_path / "out"
    real_convert = prep.convert_item
    calls = {"n": 0}

    def dies_on_third(item):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in chunk 1
        return real_convert(item)

    monkeypatch.setattr(prep, "convert_item", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_dataset("fer2013", raw, out, chunk_size=2, progress=False)
    assert not (out / records.MANIFEST_NAME).exists()
    with pytest.raises(FileNotFoundError, match="finish the interrupted one"):
        records.resolve_prepared_dir(str(out))
    monkeypatch.setattr(prep, "convert_item", real_convert)
    report = prep.prepare_dataset("fer2013", raw, out, chunk_size=2, progress=False)
    assert report.resumed_chunks == 1 and report.num_records == 4
    assert not list(out.glob(".tmp-*"))
    assert records.load_prepared_bank(out)["label"].tolist() == [1, 4, 0, 6]


def test_sharded_npz_fallback_without_array_record(tmp_path, fer_rows, monkeypatch):
    raw = tmp_path / "fer"
    raw.mkdir()
    _fer2013_csv(raw / "fer2013.csv", fer_rows)
    monkeypatch.setattr(records, "array_record_available", lambda: False)
    report = prep.prepare_dataset("fer2013", raw, tmp_path / "out", chunk_size=3, progress=False)
    assert report.format == "npz_shards" and any("array_record is not importable" in n for n in report.notes)
    assert report.files == ["fer2013-00000-of-00002.npz", "fer2013-00001-of-00002.npz"]
    assert records.load_prepared_bank(tmp_path / "out")["label"].tolist() == [1, 4, 0, 6]
    assert len(records.PreparedRecords(tmp_path / "out")) == 4


def test_csv_with_missing_columns_names_file_and_line(tmp_path):
    raw = tmp_path / "fer"
    raw.mkdir()
    (raw / "fer2013.csv").write_text("emotion,Usage\n3,Training\n")
    with pytest.raises(ValueError, match=r"fer2013\.csv:1: missing columns \['pixels'\]"):
        prep.prepare_dataset("fer2013", raw, tmp_path / "out", progress=False)


def test_ferplus_majority_vote(tmp_path, fer_rows):
    assert majority_label([0, 8, 1, 0, 0, 0, 0, 0, 1, 0]) == 1  # the 1s are outliers
    assert majority_label([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) is None  # a tie is no majority
    assert majority_label([0, 0, 0, 0, 0, 0, 0, 0, 2, 8]) is None  # not a face
    assert majority_label([0, 0, 0, 0, 0, 0, 0, 7, 0, 3]) == 7  # contempt
    raw = tmp_path / "ferplus"
    raw.mkdir()
    _fer2013_csv(raw / "fer2013.csv", [(r[0] if r[0] != 9 else 0, r[1], r[2]) for r in fer_rows])
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    votes = [
        "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0",
        "Training,fer0000001.png,4,4,0,0,0,0,0,0,2,0",  # no majority: dropped
        "Training,,0,0,0,0,0,0,0,0,0,10",  # not a face: dropped
        "PublicTest,fer0000003.png,0,0,0,0,0,0,0,9,1,0",  # contempt
        "PrivateTest,fer0000004.png,0,0,0,0,0,0,0,0,0,0",  # no votes: dropped
        "PrivateTest,fer0000005.png,0,0,8,0,0,0,0,0,0,2",  # surprise
    ]
    (raw / "fer2013new.csv").write_text(header + "\n".join(votes) + "\n")
    report = prep.prepare_dataset("ferplus", raw, tmp_path / "out", progress=False)
    assert report.num_records == 3 and report.num_classes == 8
    assert report.dropped == {"no majority, unknown or not a face": 3}
    bank = records.load_prepared_bank(tmp_path / "out")
    assert bank["label"].tolist() == [1, 7, 2]
    assert [s.split(":")[-1] for s in bank["source"]] == ["2", "5", "7"]  # fer2013.csv lines


# ---------------------------------------------------------------------------
# AffectNet and RAF-DB
# ---------------------------------------------------------------------------


def test_affectnet_csv_landmarks_boxes_and_bad_rows(tmp_path):
    raw = tmp_path / "AffectNet"
    lists = raw / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"

    def row(rel, subject, code, with_landmarks=True):
        image, lm = _portrait(_face(subject, 0), 180, 200, 20, 30)
        _imsave(raw / "Manually_Annotated_Images" / rel, np.stack([image] * 3, -1))  # colour JPEG
        marks = ";".join(f"{v:.2f}" for v in lm.ravel()) if with_landmarks else ""
        return f"{rel},30,20,128,128,{marks},{code},0.1,0.2"

    train = [
        row("1/a.jpg", 0, 1),  # happy -> 1
        row("1/b.jpg", 1, 3, with_landmarks=False),  # surprise -> 2, face box
        row("2/c.jpg", 2, 8),  # "none": dropped
        "2/missing.jpg,30,20,128,128,,6,0,0",  # anger -> 4, but no image: skipped at conversion
        row("2/d.jpg", 3, 12),  # unknown code: skipped, line 6
        "2/e.jpg,30,20",  # too few fields: skipped, line 7
    ]
    (lists / "training.csv").write_text(header + "\n" + "\n".join(train) + "\n")
    (lists / "validation.csv").write_text(header + "\n" + row("3/f.jpg", 4, 7) + "\n")  # contempt -> 7
    report = prep.prepare_dataset("affectnet", raw, tmp_path / "out", progress=False)
    reasons = dict(report.skipped)
    where = "Manually_Annotated_file_lists/training.csv"
    assert "unknown label code 12" in reasons[f"{where}:6"]
    assert "expected 9 fields, got 3" in reasons[f"{where}:7"]
    assert "image file not found" in reasons[f"{where}:5 (2/missing.jpg)"]
    assert report.dropped == {"expression 8 (none)": 1}
    bank = records.load_prepared_bank(tmp_path / "out")
    _check_faces(bank)
    assert bank["label"].tolist() == [1, 2, 7]
    assert bank["method"].tolist() == [align.Method.LANDMARKS, align.Method.FACE_BOX, align.Method.LANDMARKS]
    assert bank["partition"].tolist() == [records.PARTITION_TRAIN, records.PARTITION_TRAIN, records.PARTITION_TEST]


def _rafdb_tree(raw, n: int = 4) -> dict[str, int]:
    """RAF-DB basic layout; returns {image name: unified label}."""
    raf_to_unified = {1: 2, 2: 6, 3: 5, 4: 1, 5: 3, 6: 4, 7: 0}
    lines, expected = [], {}
    for i in range(n):
        name = f"{'train' if i < n - 1 else 'test'}_{i + 1:05d}.jpg"
        code = i % 7 + 1
        face = resize(_face(i, raf_to_unified[code])["image"].astype(float), (100, 100), preserve_range=True)
        _imsave(raw / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), face.astype(np.uint8))
        lines.append(f"{name} {code}")
        expected[name] = raf_to_unified[code]
    lines += ["train_09999.jpg 3", "train_00002.jpg 9", "broken line with words"]
    (raw / "EmoLabel").mkdir(parents=True)
    (raw / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return expected


def test_rafdb_layout_partitions_and_bad_lines(tmp_path):
    raw = tmp_path / "RAF"
    expected = _rafdb_tree(raw)
    report = prep.prepare_dataset("rafdb", raw, tmp_path / "out", progress=False)
    reasons = dict(report.skipped)
    assert "image not found" in reasons["EmoLabel/list_patition_label.txt:5"]
    assert "unknown label code 9" in reasons["EmoLabel/list_patition_label.txt:6"]
    assert "expected 'NAME LABEL'" in reasons["EmoLabel/list_patition_label.txt:7"]
    bank = records.load_prepared_bank(tmp_path / "out")
    _check_faces(bank)
    assert report.num_classes == 7
    assert bank["label"].tolist() == list(expected.values())
    assert bank["partition"].tolist() == [0, 0, 0, 2]
    # Other options over a finished conversion: refused, then replaced on request.
    with pytest.raises(ValueError, match="--overwrite"):
        prep.prepare_dataset("rafdb", raw, tmp_path / "out", chunk_size=2, progress=False)
    redone = prep.prepare_dataset("rafdb", raw, tmp_path / "out", chunk_size=2, overwrite=True, progress=False)
    assert redone.num_records == 4 and not redone.already_done and redone.resumed_chunks == 0


def test_cli_prepare_and_workers(tmp_path, capsys):
    from feratt_jax.cli import main as cli_main

    def main(argv):
        return cli_main(["data", *argv])

    raw = tmp_path / "RAF"
    _rafdb_tree(raw, n=5)
    out = tmp_path / "out"
    rc = main(["prepare", "--dataset", "rafdb", "--raw-dir", str(raw), "--out", str(out),
               "--chunk-size", "2", "--workers", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "wrote 5 rafdb faces" in printed and "list_patition_label.txt:7" in printed
    assert json.loads((out / records.MANIFEST_NAME).read_text())["num_records"] == 5
    rc = main(["prepare", "--dataset", "rafdb", "--raw-dir", str(tmp_path / "nowhere"), "--no-progress"])
    assert rc == 2 and "nowhere does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Training input: the prepared bank in the pipeline
# ---------------------------------------------------------------------------


def test_pipeline_reads_prepared_ckplus_in_real_mode(ckplus_prepared):
    from feratt_jax.data.pipeline import DataConfig, make_datasets

    out, _ = ckplus_prepared
    cfg = DataConfig(
        source=str(out), mode="real", num_classes=7, image_size=32, batch_size=4,
        subjects_per_fold=1, val_subjects=1, loader="numpy",
    )
    assert cfg.render_config().illumination is False and cfg.eval_render_config().angle == 0.0
    data = make_datasets(cfg, seed=0)
    bank = data.bank
    assert (bank["label"] < 7).all() and len(bank["label"]) == 16 - 3  # contempt (3 frames) left out
    # Test = every record of the held-out subject, once, as is: no background composited.
    test_rows = np.flatnonzero(np.isin(bank["subject"], data.split.test))
    assert data.test["image"].shape == (len(test_rows), 32, 32, 1)
    np.testing.assert_array_equal(np.sort(data.test["record"]), test_rows)
    np.testing.assert_allclose(data.test["image"], data.test["x_org"], atol=1e-6)
    batch = next(data.train)
    assert batch["faces"].shape == (4, 128, 128) and not batch["backgrounds"].any()
    assert set(batch["subjects"]).isdisjoint(set(data.split.test) | set(data.split.val))


def test_prepared_source_errors(tmp_path, monkeypatch):
    from feratt_jax.data.pipeline import DataConfig
    from feratt_jax.data.real.bank import official_split

    with pytest.raises(ValueError, match="mode must be one of"):
        DataConfig(mode="photographic")
    with pytest.raises(ValueError, match="official"):
        DataConfig(split="official")
    monkeypatch.setenv("FERATT_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="feratt data prepare --dataset ckplus --raw-dir RAW --out .*ckplus"):
        records.resolve_prepared_dir("ckplus")
    with pytest.raises(ValueError, match="no official"):
        official_split({"subject": np.arange(3), "partition": np.full(3, records.PARTITION_NONE, np.uint8)})


def test_tfds_builders_name_the_extra_when_tfds_is_missing(monkeypatch):
    import sys

    from feratt_jax.data import tfds_builders

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
    tfds_builders.builder_class.cache_clear()
    with pytest.raises(ImportError, match=r"feratt-jax\[tfds\]"):
        tfds_builders.builder_class("ckplus")
    with pytest.raises(ValueError, match="unknown dataset"):
        tfds_builders.builder_class("mnist")
    assert "manual_dir" in tfds_builders.MANUAL_DOWNLOAD_INSTRUCTIONS["affectnet"]


def test_tfds_ckplus_builds_without_tensorflow_and_feeds_the_pipeline(ckplus_raw, ckplus_prepared, tmp_path, monkeypatch):
    """CI installs tfds (dev extra): the CK+ builder writes array_record files and reads back the prepared bank."""
    import sys

    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is in the dev extra")
    from feratt_jax.data import tfds_builders
    from feratt_jax.data.pipeline import DataConfig, make_datasets

    tfds_builders.build("ckplus", ckplus_raw, tmp_path / "tfds")
    assert "tensorflow" not in sys.modules, "building the TFDS dataset imported TensorFlow"
    assert list((tmp_path / "tfds" / "feratt_ckplus").glob("*/*.array_record-*")), "no array_record files written"
    expected = records.load_prepared_bank(ckplus_prepared[0])
    bank = tfds_builders.load_tfds_bank("ckplus", tmp_path / "tfds")
    assert sorted(bank) == sorted(expected)
    for key, want in expected.items():
        np.testing.assert_array_equal(bank[key], want, err_msg=f"field {key} differs between TFDS and feratt data prepare")
    # Into the trainer's pipeline as data.source="tfds:ckplus" ($TFDS_DATA_DIR read at call time).
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    cfg = DataConfig(source="tfds:ckplus", mode="real", num_classes=7, image_size=32, batch_size=4, subjects_per_fold=1, val_subjects=1, loader="numpy")
    data = make_datasets(cfg, seed=0)
    assert len(data.bank["label"]) == len(expected["label"]) - int((expected["label"] >= 7).sum())
    assert next(data.train)["faces"].shape == (4, 128, 128)
    with pytest.raises(FileNotFoundError, match="feratt_ckplus is not built"):
        tfds_builders.load_tfds_bank("ckplus", tmp_path / "empty")


# ---------------------------------------------------------------------------
# Class-per-folder trees (--dataset folder)
# ---------------------------------------------------------------------------


def _folder_tree(raw, classes: dict[str, list[int]]) -> dict[str, int]:
    """``{folder: [unified labels of its faces]}`` -> PNG faces on a grey canvas; returns ``{source: label}``."""
    expected = {}
    for folder, labels in classes.items():
        (raw / folder).mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(labels):
            image, _ = _portrait(_face(i, label), 160, 160, 16, 16)
            _imsave(raw / folder / f"img{i}.png", image)
            expected[f"{folder}/img{i}.png"] = label
    return expected


def test_folder_tree_synonyms_corrupt_file_empty_class_and_subjects(tmp_path):
    raw = tmp_path / "photos"
    expected = _folder_tree(raw, {"Happy": [1, 1], "angry": [4], "sadness": [3]})
    (raw / "sadness" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (raw / "fearful").mkdir()  # an empty class folder: a note, no error
    csv = tmp_path / "subjects.csv"
    csv.write_text("path,subject\nHappy/img0.png,ann\nHappy/img1.png,bob\nangry/img0.png,ann\n")
    report = prep.prepare_dataset("folder", raw, tmp_path / "out", subjects_csv=csv, progress=False)
    assert report.num_records == 4 and report.num_classes == 7
    assert list(dict(report.skipped)) == ["sadness/broken.png"]
    assert "cannot read image" in dict(report.skipped)["sadness/broken.png"]
    skipped_tsv = (tmp_path / "out" / records.SKIPPED_NAME).read_text().splitlines()
    assert skipped_tsv[0] == "where\twhy" and skipped_tsv[1].startswith("sadness/broken.png\t")
    assert any("fearful holds no images" in n for n in report.notes)
    assert any("3 of 5 images have a subject; the other 2" in n for n in report.notes)
    bank = records.load_prepared_bank(tmp_path / "out")
    _check_faces(bank)
    by_source = dict(zip(bank["source"].tolist(), bank["label"].tolist()))
    assert by_source == expected
    subject = dict(zip(bank["source"].tolist(), bank["subject"].tolist()))
    # Named subjects sorted (ann 0, bob 1); images without a row are their own subjects after them
    # (sadness/broken.png, listed before img0.png, took 2).
    assert subject == {"Happy/img0.png": 0, "Happy/img1.png": 1, "angry/img0.png": 0, "sadness/img0.png": 3}
    assert (bank["partition"] == records.PARTITION_NONE).all()


def test_folder_unknown_class_names_stop_and_class_map_maps_them(tmp_path, capsys):
    from feratt_jax.cli import main as cli_main

    def main(argv):
        return cli_main(["data", *argv])

    raw = tmp_path / "mine"
    _folder_tree(raw, {"glad": [1], "neutral": [0], "misc": [2], "contempt": [7]})
    with pytest.raises(ValueError, match=r"class folder\(s\) glad, misc match no expression.*--class-map glad=LABEL,misc=LABEL"):
        prep.prepare_dataset("folder", raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # stopped before any work
    rc = main(["prepare", "--dataset", "folder", "--raw-dir", str(raw), "--out", str(tmp_path / "out"),
               "--class-map", "glad=happiness,misc=drop", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "wrote 3 folder faces" in printed and "not subject-independent" in printed
    assert "dropped by protocol: class folder misc (--class-map drop): 1" in printed
    manifest = records.read_manifest(tmp_path / "out")
    assert manifest["num_classes"] == 8  # a contempt folder makes it the 8-class order
    assert manifest["label_counts"] == {"neutral": 1, "happiness": 1, "contempt": 1}
    rc = main(["prepare", "--dataset", "folder", "--raw-dir", str(raw), "--class-map", "glad=joyful", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "'glad=joyful': unknown label 'joyful'" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    (empty / "happy").mkdir(parents=True)
    rc = main(["prepare", "--dataset", "folder", "--raw-dir", str(empty), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no images" in err and str(empty) in err and len(err.strip().splitlines()) == 1


def test_folder_official_split_layout(tmp_path):
    raw = tmp_path / "fer_images"
    _folder_tree(raw, {"train/happy": [1, 1], "validation/sad": [3], "test/surprise": [2]})
    report = prep.prepare_dataset("folder", raw, tmp_path / "out", progress=False)
    bank = records.load_prepared_bank(tmp_path / "out")
    assert report.num_records == 4
    partition = dict(zip(bank["source"].tolist(), bank["partition"].tolist()))
    assert partition == {
        "train/happy/img0.png": records.PARTITION_TRAIN,
        "train/happy/img1.png": records.PARTITION_TRAIN,
        "validation/sad/img0.png": records.PARTITION_VAL,
        "test/surprise/img0.png": records.PARTITION_TEST,
    }
    (raw / "happy").mkdir()
    with pytest.raises(ValueError, match="mixes split folders"):
        prep.prepare_dataset("folder", raw, tmp_path / "out2", progress=False)
