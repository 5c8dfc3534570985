"""OpenCV's bundled Haar cascades as the face detector of ``feratt predict`` (extra ``[detect]``).

``opencv-python-headless`` 4.x ships its trained cascades inside the wheel
(``cv2.data.haarcascades``), so detection works offline; OpenCV 5 wheels no
longer carry them, hence the ``<5`` bound of the extra. The frontal cascade
runs first; when it finds nothing, the profile cascade runs on the image and
on its mirror (it only knows one side). Without OpenCV, ``feratt predict``
keeps scikit-image's LBP cascade. experiments/face_detectors/ measures both.
"""

from __future__ import annotations

import functools

import numpy as np

FRONTAL = "haarcascade_frontalface_default.xml"
PROFILE = "haarcascade_profileface.xml"
BACKENDS = ("auto", "opencv", "lbp")
NEEDS_OPENCV = "the opencv face detector needs opencv-python-headless<5: pip install 'feratt-jax[detect]'"


def opencv_available() -> bool:
    """Whether OpenCV with its bundled cascades can be imported."""
    try:
        _cascades()
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _cascades():
    try:
        import cv2
    except ImportError:
        raise ImportError(NEEDS_OPENCV) from None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:
        raise ImportError(NEEDS_OPENCV + f" (OpenCV {cv2.__version__} has no bundled cascades)")
    frontal, profile = cv2.CascadeClassifier(folder + FRONTAL), cv2.CascadeClassifier(folder + PROFILE)
    if frontal.empty() or profile.empty():
        raise ImportError(NEEDS_OPENCV + f" (OpenCV {cv2.__version__} has no bundled cascades)")
    return frontal, profile


def detect_faces_opencv(grey: np.ndarray, min_fraction: float = 1 / 16) -> list[tuple[int, int, int, int]]:
    """Faces as (row, col, height, width) boxes, largest first.

    Args:
      grey: (H, W) grey image in [0, 1].
      min_fraction: smallest face side, as a share of the image's short side
        (at least 24 pixels, the cascades' window).
    """
    frontal, profile = _cascades()
    image = np.ascontiguousarray(np.clip(grey * 255.0, 0, 255).astype(np.uint8))
    side = max(24, int(min(image.shape) * min_fraction))
    options = dict(scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    found = [tuple(int(v) for v in b) for b in frontal.detectMultiScale(image, **options)]
    if not found:
        found = [tuple(int(v) for v in b) for b in profile.detectMultiScale(image, **options)]
        mirrored = [tuple(int(v) for v in b) for b in profile.detectMultiScale(image[:, ::-1].copy(), **options)]
        found += [(image.shape[1] - x - bw, y, bw, bh) for x, y, bw, bh in mirrored]
    boxes = [(y, x, bh, bw) for x, y, bw, bh in found]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)
