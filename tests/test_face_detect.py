"""The face detectors of ``feratt predict``: OpenCV's bundled Haar cascades (extra [detect]) and the LBP fallback."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from feratt_jax import face_detect, predict


def _astronaut() -> np.ndarray:
    return data.astronaut().astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def test_auto_falls_back_to_the_lbp_cascade_without_opencv(monkeypatch):
    grey = _astronaut()
    monkeypatch.setattr(face_detect, "opencv_available", lambda: False)
    assert predict.detect_faces(grey) == predict.detect_faces(grey, backend="lbp") != []
    with pytest.raises(ValueError, match="face detector must be one of"):
        predict.detect_faces(grey, backend="yunet")


def test_opencv_cascade_finds_the_astronaut_where_lbp_does_and_a_turned_face_lbp_misses():
    pytest.importorskip("cv2", reason="the [detect] extra (opencv-python-headless<5) is not installed")
    from skimage import transform

    grey = _astronaut()
    (r, c, h, w), = predict.detect_faces(grey, backend="lbp")[:1]
    found = predict.detect_faces(grey, backend="opencv")
    assert predict.detect_faces(grey) == found  # "auto" picks OpenCV when it is installed
    fr, fc, fh, fw = found[0]
    assert abs((fr + fh / 2) - (r + h / 2)) < h / 4 and abs((fc + fw / 2) - (c + w / 2)) < w / 4
    # Turned by 15 degrees, the Haar cascade still finds it (the LBP cascade does not: experiments/face_detectors.py).
    turned = transform.rotate(grey, 15, mode="edge")
    assert any(abs((br + bh / 2) - (r + h / 2)) < h and abs((bc + bw / 2) - (c + w / 2)) < w
               for br, bc, bh, bw in predict.detect_faces(turned, backend="opencv"))
