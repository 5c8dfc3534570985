"""Face alignment into the 128x128 grey "dark" face (docs/reference.md 5.2, fixed).

With 68 iBUG landmarks (:func:`align_with_landmarks`), as the reference does:

1. rotate about the image centre so that the line through the inner eye
   corners (points 39 and 42) is level;
2. crop to the rotated landmarks' bounding box, enlarged on every side by
   ``margin`` x the inner-eye-corner distance, and clamped to the image (the
   reference clamps x with the height and y with the width: docs/reference.md 7
   item 14; here x is clamped to the width and y to the height);
3. pad the crop to a square (centred) and resize it to 128x128;
4. mask = the filled convex hull of the landmarks, soft at its edge (the
   reference resizes a binary hull bilinearly; we rasterise it with exact
   area coverage at the output size);
5. output ``uint8(clip((grey / 255 + 0.2) * mask, 0, 1) * 255)``: every face
   pixel is >= 51, so the face stands out from the black background.

Steps 1-3 are composed into one affine map and the image is resampled once
(bicubic, after a Gaussian pre-filter when shrinking), instead of rotating,
cropping and resizing with three interpolations.

Without landmarks (:func:`align_with_ellipse`) the face is an ellipse
inside a face box: the dataset's own box (AffectNet), scikit-image's LBP
frontal-face cascade, or, for datasets that ship pre-cropped faces (FER2013,
RAF-DB aligned), the whole frame. Each record stores which :class:`Method`
made it.

Coordinates: (x, y) = (column, row) with pixel centres at integers (the
iBUG / dlib convention of the landmark files and of ``synthfaces``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math

import numpy as np

from feratt_jax.data._raster import ellipse_poly, polygon_coverage

FACE_SIZE = 128
NUM_LANDMARKS = 68
# The reference's brightness offset: face pixels become >= 0.2 * 255 = 51.
DARK_OFFSET = 0.2
# iBUG indices of the inner eye corners (image-left eye's inner corner, image-right eye's).
INNER_EYE_CORNERS = (39, 42)
# The reference's crop margin, as a multiple of the inner-eye-corner distance.
LANDMARK_MARGIN = 0.2
# Margin around the ellipse of box-based faces, as a fraction of the ellipse's larger diameter.
ELLIPSE_MARGIN = 0.1


class Method(enum.IntEnum):
    """How a record's face was located; stored per record as uint8."""

    LANDMARKS = 0  # 68 landmarks (dataset's own or user-supplied): rotation, hull mask
    FACE_BOX = 1  # the dataset's face box: ellipse mask
    LBP_CASCADE = 2  # scikit-image's LBP frontal-face cascade: ellipse mask
    FULL_FRAME = 3  # a pre-cropped face (or no detection): ellipse inscribed in the frame


METHOD_NAMES = tuple(m.name.lower() for m in Method)


@dataclasses.dataclass
class AlignedFace:
    """One aligned face in the shared record schema.

    Attributes:
      image: (128, 128) uint8 dark face (face pixels >= 51 where the mask is full).
      mask: (128, 128) uint8 soft face mask, 0..255.
      landmarks: (68, 2) float32 landmarks in output pixels; NaN when the face
        was not aligned from landmarks.
      method: the :class:`Method` used.
    """

    image: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    method: Method


def to_grey(image: np.ndarray) -> np.ndarray:
    """Any decoded image -> (H, W) float64 grey in [0, 255].

    Colour uses the 0.299 R + 0.587 G + 0.114 B weights of OpenCV's RGB->GRAY,
    which the reference applied; alpha is dropped; 16-bit and float images are
    rescaled.

    Raises:
      ValueError: on an array that is not an image.
    """
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        x = x[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        src_dtype = np.asarray(image).dtype
    elif x.ndim == 3 and x.shape[-1] in (1, 2):  # grey (+ alpha)
        src_dtype = x.dtype
        x = x[..., 0].astype(np.float64)
    elif x.ndim == 2:
        src_dtype = x.dtype
        x = x.astype(np.float64)
    else:
        raise ValueError(f"not an image: array of shape {x.shape}")
    if x.shape[0] < 8 or x.shape[1] < 8:
        raise ValueError(f"image too small ({x.shape[0]}x{x.shape[1]})")
    if src_dtype == np.uint16:
        x = x / 257.0
    elif np.issubdtype(src_dtype, np.floating) and x.max(initial=0.0) <= 1.0:
        x = x * 255.0
    elif src_dtype == np.bool_:
        x = x * 255.0
    return np.clip(x, 0.0, 255.0)


def _rotation_about(center_xy: np.ndarray, angle: float) -> np.ndarray:
    """3x3 map rotating points by ``angle`` radians about ``center_xy`` (x right, y down)."""
    c, s = math.cos(angle), math.sin(angle)
    cx, cy = float(center_xy[0]), float(center_xy[1])
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    return back @ rot @ to_origin


def _apply(m_33: np.ndarray, pts_N2: np.ndarray) -> np.ndarray:
    """Applies a 3x3 affine map to (N, 2) points."""
    return pts_N2 @ m_33[:2, :2].T + m_33[:2, 2]


def clamp_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Clamps a box to the image: x to the width, y to the height.

    This is the fix of docs/reference.md 7 item 14: the reference clamped x with
    the image height and y with its width, which cuts faces in non-square
    images (CK+ is 640x490) or lets the crop leave the frame. Bounds are the
    outer pixel edges, ``[-0.5, width - 0.5]`` and ``[-0.5, height - 0.5]``.
    """
    return (
        min(max(x0, -0.5), width - 0.5),
        min(max(y0, -0.5), height - 0.5),
        min(max(x1, -0.5), width - 0.5),
        min(max(y1, -0.5), height - 0.5),
    )


def _crop_to_output_map(box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """3x3 map from output pixels to the (rotated) frame: the box padded to a centred square."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    if side <= 1.0:
        raise ValueError(f"face crop is degenerate ({x1 - x0:.1f} x {y1 - y0:.1f} px)")
    scale = side / size
    sx0 = 0.5 * (x0 + x1) - 0.5 * side
    sy0 = 0.5 * (y0 + y1) - 0.5 * side
    # Output pixel centre u maps to the square's edge-based position (u + 0.5) * scale.
    return np.array([[scale, 0.0, sx0 + 0.5 * scale - 0.5], [0.0, scale, sy0 + 0.5 * scale - 0.5], [0.0, 0.0, 1.0]])


def _resample(grey_HW: np.ndarray, src_from_out_33: np.ndarray, size: int) -> np.ndarray:
    """Samples ``grey`` at ``src_from_out(u)`` for every output pixel; 0 outside the image.

    Only the source window that the output covers is filtered, so large
    photos (AffectNet) cost no more than small ones.
    """
    from scipy import ndimage  # deferred: keeps `feratt --help` fast

    h, w = grey_HW.shape
    scale = math.sqrt(abs(np.linalg.det(src_from_out_33[:2, :2])))
    edge = size - 0.5
    corners = _apply(src_from_out_33, np.array([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]]))
    pad = 4 + int(math.ceil(2.0 * scale))
    c0 = max(int(math.floor(corners[:, 0].min())) - pad, 0)
    c1 = min(int(math.ceil(corners[:, 0].max())) + pad + 1, w)
    r0 = max(int(math.floor(corners[:, 1].min())) - pad, 0)
    r1 = min(int(math.ceil(corners[:, 1].max())) + pad + 1, h)
    if c1 <= c0 or r1 <= r0:
        return np.zeros((size, size), np.float64)
    window = grey_HW[r0:r1, c0:c1]
    if scale > 1.0:
        # Anti-aliasing before shrinking (the sigma skimage.transform.resize uses).
        window = ndimage.gaussian_filter(window, sigma=(scale - 1.0) / 2.0, mode="nearest")
    vv, uu = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = src_from_out_33[0, 0] * uu + src_from_out_33[0, 1] * vv + src_from_out_33[0, 2] - c0
    sy = src_from_out_33[1, 0] * uu + src_from_out_33[1, 1] * vv + src_from_out_33[1, 2] - r0
    out = ndimage.map_coordinates(window, [sy, sx], order=3, mode="constant", cval=0.0, prefilter=True)
    # Pixels whose centre maps outside the source image are padding, as in the reference.
    gx, gy = sx + c0, sy + r0
    inside = (gx >= -0.5) & (gx <= w - 0.5) & (gy >= -0.5) & (gy <= h - 0.5)
    return np.where(inside, np.clip(out, 0.0, 255.0), 0.0)


def _inside_box_mask(src_from_out_33: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """1 where an output pixel's centre falls inside the crop box (in the rotated frame)."""
    x0, y0, x1, y1 = box
    u = np.arange(size, dtype=np.float64)
    fx = src_from_out_33[0, 0] * u + src_from_out_33[0, 2]
    fy = src_from_out_33[1, 1] * u + src_from_out_33[1, 2]
    return (((fy >= y0) & (fy <= y1))[:, None] & ((fx >= x0) & (fx <= x1))[None, :]).astype(np.float64)


def polygon_mask(poly_out_V2: np.ndarray, size: int) -> np.ndarray:
    """Soft (area-coverage) mask of a polygon given in output pixel-centre coordinates."""
    mask = np.zeros((size, size), np.float64)
    # _raster works with pixel edges at integers: shift by half a pixel.
    cov = polygon_coverage(poly_out_V2[:, 0] + 0.5, poly_out_V2[:, 1] + 0.5, size, size, sub=4)
    if cov is not None:
        cov_hw, r0, c0 = cov
        mask[r0 : r0 + cov_hw.shape[0], c0 : c0 + cov_hw.shape[1]] = cov_hw
    return np.clip(mask, 0.0, 1.0)


def _dark_face(grey_out: np.ndarray, mask_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's dark face ``clip((v / 255 + 0.2) * mask)`` and the uint8 mask."""
    dark = np.clip((grey_out / 255.0 + DARK_OFFSET) * mask_out, 0.0, 1.0)
    return np.round(dark * 255.0).astype(np.uint8), np.round(mask_out * 255.0).astype(np.uint8)


def _check_face(mask_u8: np.ndarray, min_area: int = 64) -> None:
    """Rejects faces whose mask is (nearly) empty, e.g. landmarks outside the frame.

    The reference's offline converter drops masks of area < 10 px; 64 px at
    128x128 (an 8x8 patch) is still far below any usable face.
    """
    area = int(np.count_nonzero(mask_u8 >= 128))
    if area < min_area:
        raise ValueError(f"face mask covers only {area} px of {FACE_SIZE}x{FACE_SIZE}")


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(68, 2) finite float landmarks, or a ValueError saying what is wrong."""
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"expected {NUM_LANDMARKS} (x, y) landmarks, got shape {lm.shape}")
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks contain NaN or inf")
    a, b = INNER_EYE_CORNERS
    if np.hypot(*(lm[b] - lm[a])) < 1.0:
        raise ValueError("degenerate landmarks: the inner eye corners coincide")
    return lm


def align_with_landmarks(
    grey_HW: np.ndarray,
    landmarks_68: np.ndarray,
    *,
    margin: float = LANDMARK_MARGIN,
    size: int = FACE_SIZE,
) -> AlignedFace:
    """Aligns a face from its 68 landmarks (module docstring, steps 1-5).

    Args:
      grey_HW: (H, W) grey image in [0, 255] (see :func:`to_grey`).
      landmarks_68: (68, 2) (x, y) landmarks in source pixels.
      margin: crop margin as a multiple of the inner-eye-corner distance.
      size: output side.

    Returns:
      The :class:`AlignedFace` (method ``LANDMARKS``).

    Raises:
      ValueError: on bad landmarks or a face that leaves no mask in the frame.
    """
    from scipy.spatial import ConvexHull, QhullError

    lm = check_landmarks(landmarks_68)
    h, w = grey_HW.shape
    a, b = INNER_EYE_CORNERS
    eye_vec = lm[b] - lm[a]
    # Rotate by minus the eye line's angle, so the line becomes level.
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    rot_33 = _rotation_about(centre, -math.atan2(eye_vec[1], eye_vec[0]))
    lm_rot = _apply(rot_33, lm)
    pad = margin * float(np.hypot(*eye_vec))
    box = clamp_box(
        lm_rot[:, 0].min() - pad, lm_rot[:, 1].min() - pad, lm_rot[:, 0].max() + pad, lm_rot[:, 1].max() + pad, w, h
    )
    rot_from_out = _crop_to_output_map(box, size)
    src_from_out = np.linalg.inv(rot_33) @ rot_from_out
    grey_out = _resample(grey_HW, src_from_out, size)
    lm_out = _apply(np.linalg.inv(rot_from_out), lm_rot)
    try:
        hull = lm_out[ConvexHull(lm_out).vertices]
    except QhullError as err:
        raise ValueError(f"landmarks have no convex hull (collinear points?): {err}") from None
    mask = polygon_mask(hull, size) * _inside_box_mask(rot_from_out, box, size)
    image_u8, mask_u8 = _dark_face(grey_out, mask)
    _check_face(mask_u8)
    return AlignedFace(image_u8, mask_u8, lm_out.astype(np.float32), Method.LANDMARKS)


def align_with_ellipse(
    grey_HW: np.ndarray,
    ellipse: tuple[float, float, float, float],
    method: Method,
    *,
    margin: float = ELLIPSE_MARGIN,
    size: int = FACE_SIZE,
) -> AlignedFace:
    """Crops around an axis-aligned face ellipse and masks the face with it.

    Args:
      grey_HW: (H, W) grey image in [0, 255].
      ellipse: ``(cx, cy, rx, ry)`` in source pixels.
      method: the :class:`Method` recorded (how the ellipse was found).
      margin: margin around the ellipse, as a fraction of its larger diameter.
      size: output side.

    Returns:
      The :class:`AlignedFace` (landmarks all NaN).
    """
    h, w = grey_HW.shape
    cx, cy, rx, ry = (float(v) for v in ellipse)
    if rx <= 0 or ry <= 0:
        raise ValueError(f"empty face ellipse {ellipse}")
    pad = margin * 2.0 * max(rx, ry)
    box = clamp_box(cx - rx - pad, cy - ry - pad, cx + rx + pad, cy + ry + pad, w, h)
    src_from_out = _crop_to_output_map(box, size)
    grey_out = _resample(grey_HW, src_from_out, size)
    poly_out = _apply(np.linalg.inv(src_from_out), ellipse_poly(cx, cy, rx, ry, n=96))
    mask = polygon_mask(poly_out, size) * _inside_box_mask(src_from_out, box, size)
    image_u8, mask_u8 = _dark_face(grey_out, mask)
    _check_face(mask_u8)
    landmarks = np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
    return AlignedFace(image_u8, mask_u8, landmarks, method)


def ellipse_from_face_box(x: float, y: float, width: float, height: float) -> tuple[float, float, float, float]:
    """The face ellipse of a detector-style box ``(x, y, width, height)`` (top-left corner, pixel edges).

    Frontal-face boxes (the LBP cascade's, AffectNet's) run from the brows to
    the mouth or chin; the ellipse is the box's inscribed one, stretched down
    a little so it takes in the chin.
    """
    cx = x + 0.5 * width - 0.5
    cy = y + 0.55 * height - 0.5
    return cx, cy, 0.5 * width, 0.6 * height


def full_frame_ellipse(width: int, height: int) -> tuple[float, float, float, float]:
    """The face ellipse of a pre-cropped face: inscribed in the frame, slightly narrower."""
    return (width - 1) / 2.0, (height - 1) / 2.0, 0.42 * width, 0.5 * height


@functools.lru_cache(maxsize=1)
def _lbp_cascade():
    """scikit-image's LBP frontal-face cascade (loaded once per process)."""
    import skimage.data
    import skimage.feature

    return skimage.feature.Cascade(skimage.data.lbp_frontal_face_cascade_filename())


def detect_face_box(grey_HW: np.ndarray, min_fraction: float = 0.15) -> tuple[float, float, float, float] | None:
    """The largest frontal face found by scikit-image's LBP cascade, or ``None``.

    Args:
      grey_HW: (H, W) grey image in [0, 255].
      min_fraction: smallest face side searched, as a fraction of the shorter
        image side (datasets of posed portraits have big faces; skipping small
        windows keeps detection fast and avoids false positives).

    Returns:
      ``(x, y, width, height)`` of the detection (top-left corner), or ``None``.
    """
    h, w = grey_HW.shape
    # The cascade is slow on big photos and faces here fill much of the frame:
    # detect on a copy whose shorter side is at most 256 px.
    shrink = max(1.0, min(h, w) / 256.0)
    img = grey_HW / 255.0
    if shrink > 1.0:
        from skimage.transform import resize

        img = resize(img, (round(h / shrink), round(w / shrink)), anti_aliasing=True)
    sh, sw = img.shape
    short = min(sh, sw)
    min_side = max(24, int(min_fraction * short))
    if min_side > short:
        return None
    found = _lbp_cascade().detect_multi_scale(
        img=img, scale_factor=1.1, step_ratio=1, min_size=(min_side, min_side), max_size=(short, short)
    )
    if not found:
        return None
    centre = np.array([sw / 2.0, sh / 2.0])

    def rank(d: dict) -> tuple[float, float]:
        # Largest first; among equals, the one nearest the image centre.
        off = np.hypot(d["c"] + d["width"] / 2.0 - centre[0], d["r"] + d["height"] / 2.0 - centre[1])
        return (-float(d["width"] * d["height"]), float(off))

    best = min(found, key=rank)
    return (best["c"] * shrink, best["r"] * shrink, best["width"] * shrink, best["height"] * shrink)


def align_face(
    grey_HW: np.ndarray,
    *,
    landmarks: np.ndarray | None = None,
    face_box: tuple[float, float, float, float] | None = None,
    pre_cropped: bool = False,
    size: int = FACE_SIZE,
) -> AlignedFace:
    """Aligns with the best information available, in this order.

    1. ``landmarks`` (68 points): :func:`align_with_landmarks`;
    2. ``face_box`` (a dataset's own box): ellipse from the box;
    3. ``pre_cropped``: the frame is the face (FER2013, RAF-DB aligned);
    4. otherwise the LBP cascade, and the full frame if it finds nothing.

    Args:
      grey_HW: (H, W) grey image in [0, 255].
      landmarks: optional (68, 2) landmarks.
      face_box: optional ``(x, y, width, height)``.
      pre_cropped: the image is already a face crop.
      size: output side.

    Returns:
      The :class:`AlignedFace`.
    """
    h, w = grey_HW.shape
    if landmarks is not None:
        return align_with_landmarks(grey_HW, landmarks, size=size)
    if face_box is not None:
        return align_with_ellipse(grey_HW, ellipse_from_face_box(*face_box), Method.FACE_BOX, size=size)
    if not pre_cropped:
        box = detect_face_box(grey_HW)
        if box is not None:
            return align_with_ellipse(grey_HW, ellipse_from_face_box(*box), Method.LBP_CASCADE, size=size)
    return align_with_ellipse(grey_HW, full_frame_ellipse(w, h), Method.FULL_FRAME, margin=0.0, size=size)
