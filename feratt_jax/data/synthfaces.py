"""Procedural FACS-driven face generator ("synthfacs"), the embedded default dataset.

No package ships expression-labelled faces (docs/data.md section 2), so the default
dataset is drawn: a parametric 2D face whose identity (shape, tone, hair,
feature placement, texture) comes from a per-subject random vector and whose
expression is a vector of FACS action-unit (AU) intensities: the AU combination
this subject uses for the class (the EMFACS-style prototype or an EMFACS
alternative, chosen once per subject), times the subject's strength of each
AU and a random gain, plus nuisance noise on every AU (docs/data.md 4.3).

The output matches the reference's "dark" datasets (docs/reference.md 5.2), which
is what the FERAtt compositing renderer consumes:

* ``image``: (128, 128) uint8 grey face on black, ``uint8(clip((v + 0.2) * mask))``
  so every face pixel is >= 51;
* ``mask``: (128, 128) uint8 soft mask (anti-aliased head silhouette, 0..255);
* ``landmarks``: (68, 2) float32 (x, y) in iBUG order, pixel units with pixel
  centres at integer coordinates (the dlib / iBUG convention);
* ``label``: int in the unified order 0 Neutral, 1 Happiness, 2 Surprise,
  3 Sadness, 4 Anger, 5 Disgust, 6 Fear, 7 Contempt;
* ``subject``: int identity id;
* ``action_units``: (len(AU_NAMES),) float32 intensities in [0, 1].

Everything is deterministic from ``(seed, subject, label, index)``: identity
parameters from ``(seed, subject)``, expression and nuisance from all four.
This module deliberately depends on numpy and scipy only (no JAX), so face
banks can be built in worker processes cheaply.

Geometry is written in canvas units (fractions of the 128 px side, x right,
y down); the rasteriser works in continuous pixel coordinates.
"""

from __future__ import annotations

from feratt_jax import EXPRESSION_NAMES

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from feratt_jax.data._raster import (
    bezier_at,
    control_for_mid,
    ellipse_poly,
    polygon_coverage,
    quad_bezier,
    thick_curve,
)

# Bump whenever the drawing changes: it is part of the face-bank cache key.
GENERATOR_VERSION = 3

FACE_SIZE = 128
NUM_LANDMARKS = 68
NUM_CLASSES = 8
# The unified label order shared by every data source.
CLASS_NAMES = EXPRESSION_NAMES

# Bilateral AUs, then unilateral ones (L = image left, R = image right).
AU_NAMES = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU15",
    "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "L12", "R12", "L14", "R14",
)
_AU = {name: i for i, name in enumerate(AU_NAMES)}

# EMFACS-style class prototypes (docs/data.md 4.3). Contempt's unilateral AUs are
# written as "U12"/"U14" and resolved to a random side per face.
PROTOTYPES: dict[int, dict[str, float]] = {
    0: {},
    1: {"AU6": 1.0, "AU12": 1.0, "AU25": 0.5},
    2: {"AU1": 1.0, "AU2": 1.0, "AU5": 1.0, "AU26": 1.0, "AU25": 1.0},
    3: {"AU1": 1.0, "AU4": 0.7, "AU15": 1.0, "AU17": 0.5},
    4: {"AU4": 1.0, "AU5": 0.6, "AU7": 1.0, "AU23": 1.0, "AU24": 0.6},
    5: {"AU9": 1.0, "AU10": 1.0, "AU15": 0.6, "AU17": 0.5, "AU4": 0.4},
    6: {"AU1": 1.0, "AU2": 0.6, "AU4": 1.0, "AU5": 1.0, "AU7": 0.4, "AU20": 1.0, "AU26": 0.6},
    7: {"U12": 1.0, "U14": 1.0},
}

# EMFACS lists several AU combinations per emotion, and posers differ in which
# one they produce (docs/data.md 4.3). Each subject poses each class with one
# of these, chosen once per subject; the first entry of every class is its
# prototype above. Neutral has no alternative.
POSING_VARIANTS: dict[int, tuple[dict[str, float], ...]] = {
    0: (PROTOTYPES[0],),
    1: (
        PROTOTYPES[1],
        {"AU12": 1.0, "AU25": 0.5},  # posed (non-Duchenne) smile: no cheek raise
        {"AU6": 0.8, "AU12": 1.0},  # closed-lip smile
    ),
    2: (
        PROTOTYPES[2],
        {"AU1": 1.0, "AU2": 1.0, "AU25": 0.8, "AU26": 0.8},  # brows and jaw, lids not raised
        {"AU5": 1.0, "AU25": 1.0, "AU26": 1.0},  # lids and jaw, brows not raised
    ),
    3: (
        PROTOTYPES[3],
        {"AU1": 1.0, "AU4": 0.8, "AU15": 1.0},
        {"AU6": 0.6, "AU15": 1.0, "AU17": 0.6},
    ),
    4: (
        PROTOTYPES[4],
        {"AU4": 1.0, "AU5": 0.6, "AU7": 1.0, "AU17": 0.8, "AU24": 1.0},
        {"AU4": 1.0, "AU7": 1.0, "AU10": 0.6, "AU23": 1.0, "AU25": 0.6},
    ),
    5: (
        PROTOTYPES[5],
        {"AU4": 0.4, "AU9": 1.0, "AU17": 0.7},
        {"AU10": 1.0, "AU17": 0.8, "AU25": 0.4},
    ),
    6: (
        PROTOTYPES[6],
        {"AU1": 1.0, "AU2": 0.8, "AU4": 1.0, "AU5": 1.0},  # brows and lids, mouth closed
        {"AU1": 1.0, "AU2": 1.0, "AU4": 0.6, "AU5": 1.0, "AU25": 1.0, "AU26": 0.8},  # no lip stretch
    ),
    7: (
        PROTOTYPES[7],
        {"U14": 1.0},
        {"U12": 0.6, "U14": 1.0},
    ),
}

# Realistic skin luminances (dark to light, already in grey) and hair shades;
# sampling along a palette avoids implausible tones (docs/data.md 4.3).
_SKIN_STOPS = np.array([0.30, 0.40, 0.50, 0.58, 0.65, 0.72])
_HAIR_SHADES = np.array([0.06, 0.12, 0.20, 0.32, 0.45, 0.58, 0.68])

# Stream tags keep identity and per-face random streams independent.
_ID_STREAM = 0x1D
_FACE_STREAM = 0xFA
_POSER_STREAM = 0x90


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the face generator (all part of the cache key).

    Attributes:
      gain_range: range of the expression gain (the "intensity level");
        0.6-1.0 models posed peak expressions (docs/training.md section 0).
      au_noise: std of the Gaussian nuisance added to every AU before clipping.
      pose_jitter: std of the small in-plane roll (radians) applied per face;
        shift and scale jitter are proportional to it.
      blur_sigma: final Gaussian blur in pixels (softens the drawing).
      texture_amplitude: amplitude of the per-identity band-pass skin texture.
      lighting_amplitude: max amplitude of the per-face directional shading.
      glasses_prob: probability an identity wears glasses (distractor).
      beard_prob: probability an identity has a beard (distractor).
      bald_prob: probability an identity has no hair.
      floor: the dark format's additive floor (0.2 gives face pixels >= 51).
      posing_variation: probability that a subject poses a class with one of
        its alternative AU combinations (``POSING_VARIANTS``) rather than the
        prototype; chosen once per subject and class. 0 gives every subject
        the prototype (generator version 2's behaviour).
      expressiveness_spread: std of the per-subject, per-AU intensity factor
        (a poser's own strength of each muscle), clipped to [0.4, 1.4].
      motion_scale: scale of every AU-driven movement of a feature (brows,
        lids, lip corners, mouth opening, jaw, nose wings); the appearance
        changes (folds, furrows, shading) keep their strength. 1 is generator
        version 2's exaggerated motion.
      fold_contrast: strength of the AU folds, furrows, wrinkles and bulges
        (the luminance change of each, relative to 1); 1 is generator
        version 2's.
      wrinkle_contrast: darkness of the fine AU wrinkles (:func:`_draw_wrinkles`;
        a line darkens the skin by half this); 0 draws none, as version 2.
      shading_contrast: scale of the broad AU shading (cheek bulge, brow
        shadow, chin boss, hollowed cheeks) in :func:`_shading`; 1 is
        generator version 2's amplitude.
    """

    gain_range: tuple[float, float] = (0.6, 1.0)
    au_noise: float = 0.07
    pose_jitter: float = 0.035
    blur_sigma: float = 0.6
    texture_amplitude: float = 0.025
    lighting_amplitude: float = 0.12
    glasses_prob: float = 0.1
    beard_prob: float = 0.1
    bald_prob: float = 0.12
    floor: float = 0.2
    # Both off by default: posing variation costs a linear HOG probe ~16 points
    # on clean faces (70.5 vs 86.6 %, below the ~85 % posed faces give) and the
    # converged baseline only ~5 (docs/training.md section 0).
    posing_variation: float = 0.0
    expressiveness_spread: float = 0.0
    motion_scale: float = 1.0
    fold_contrast: float = 1.0
    wrinkle_contrast: float = 0.0
    shading_contrast: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = self.gain_range
        if not 0.0 <= lo <= hi <= 1.5:
            raise ValueError(f"gain_range must satisfy 0 <= lo <= hi <= 1.5, got {self.gain_range}")
        for name in ("glasses_prob", "beard_prob", "bald_prob", "posing_variation"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"GeneratorConfig.{name} must be a probability in [0, 1], got {p}")
        for name in (
            "au_noise",
            "pose_jitter",
            "blur_sigma",
            "texture_amplitude",
            "lighting_amplitude",
            "expressiveness_spread",
            "shading_contrast",
            "motion_scale",
            "fold_contrast",
            "wrinkle_contrast",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"GeneratorConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"GeneratorConfig.floor must be in [0, 1), got {self.floor}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "GeneratorConfig":
        """Builds a config from a mapping (e.g. an ml_collections ConfigDict's ``to_dict()``).

        Raises:
          ValueError: on unknown keys.
        """
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown GeneratorConfig keys {unknown}; valid keys: {sorted(names)}")
        if "gain_range" in d:
            d["gain_range"] = tuple(float(v) for v in d["gain_range"])
        return cls(**d)

    def cache_token(self) -> str:
        """Stable text for the face-bank cache key."""
        return repr(sorted(dataclasses.asdict(self).items()))


@dataclasses.dataclass
class Identity:
    """Per-subject appearance parameters, reused across all expressions."""

    subject: int
    cx: float
    cy: float
    face_a: float
    face_b: float
    chin_b: float
    jaw_taper: float
    skin: float
    hair: float | None
    hair_drop: float
    hair_volume: float
    hair_side: float
    eye_dx: float
    eye_dy: float
    eye_hw: float
    eye_h: float
    eye_lower: float
    eye_tilt: float
    iris_r: float
    iris_lum: float
    sclera_lum: float
    brow_gap: float
    brow_len: float
    brow_th: float
    brow_h: float
    brow_arch: float
    brow_lum: float
    nose_len: float
    nose_w: float
    mouth_dy: float
    mouth_hw: float
    lip_u: float
    lip_l: float
    lip_lum: float
    asym: np.ndarray  # (4,) small per-side offsets: eye y, brow y, corner y, brow x
    glasses: bool
    beard: float
    mole: tuple[float, float] | None
    texture: np.ndarray  # (FACE_SIZE, FACE_SIZE) float32 band-pass noise
    # How this subject poses: an index into POSING_VARIANTS[c] per class, and
    # a strength factor per AU.
    posing: np.ndarray  # (NUM_CLASSES,) int
    expressiveness: np.ndarray  # (len(AU_NAMES),) float


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent deterministic stream for a tuple of non-negative integers."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, GENERATOR_VERSION, *(int(k) for k in keys)])


def sample_identity(seed: int, subject: int, config: GeneratorConfig = GeneratorConfig()) -> Identity:
    """Samples the appearance of one subject.

    Args:
      seed: dataset seed.
      subject: non-negative subject id.
      config: generator parameters.

    Returns:
      The subject's :class:`Identity`.
    """
    if subject < 0:
        raise ValueError(f"subject must be >= 0, got {subject}")
    r = _rng(seed, _ID_STREAM, subject)
    u = r.uniform
    skin = float(np.interp(u(0, len(_SKIN_STOPS) - 1), np.arange(len(_SKIN_STOPS)), _SKIN_STOPS))
    skin = float(np.clip(skin + r.normal(0, 0.02), 0.25, 0.76))
    hair = None if u() < config.bald_prob else float(_HAIR_SHADES[r.integers(len(_HAIR_SHADES))] + r.normal(0, 0.02))
    brow_base = hair if hair is not None else skin * 0.5
    brow_lum = float(np.clip(min(brow_base, skin * 0.55) + r.normal(0, 0.02), 0.03, 0.6))
    # Band-pass texture: breaks up flat regions a CNN could latch on to.
    noise = r.standard_normal((FACE_SIZE, FACE_SIZE)).astype(np.float32)
    tex = ndimage.gaussian_filter(noise, 1.0) - ndimage.gaussian_filter(noise, 4.0)
    tex *= config.texture_amplitude / max(float(tex.std()), 1e-6)
    mole = None
    if u() < 0.25:
        mole = (float(u(-0.22, 0.22)), float(u(-0.05, 0.3)))
    # Its own stream, so the posing settings never change how a subject looks.
    pr = _rng(seed, _POSER_STREAM, subject)
    posing = np.zeros(NUM_CLASSES, np.int64)
    for c in range(NUM_CLASSES):
        n_alt = len(POSING_VARIANTS[c]) - 1
        alt = pr.integers(1, n_alt + 1) if n_alt else 0
        if pr.uniform() < config.posing_variation:
            posing[c] = alt
    expressiveness = np.clip(pr.normal(1.0, config.expressiveness_spread, size=len(AU_NAMES)), 0.4, 1.4)
    return Identity(
        subject=int(subject),
        cx=0.5 + float(r.normal(0, 0.008)),
        cy=0.53 + float(r.normal(0, 0.008)),
        face_a=float(u(0.30, 0.36)),
        face_b=float(u(0.40, 0.45)),
        chin_b=float(u(0.95, 1.02)),
        jaw_taper=float(u(0.10, 0.30)),
        skin=skin,
        hair=hair,
        hair_drop=float(u(0.08, 0.16)),
        hair_volume=float(u(0.01, 0.05)),
        hair_side=float(u(0.05, 0.6)),
        eye_dx=float(u(0.135, 0.165)),
        eye_dy=float(u(-0.085, -0.045)),
        eye_hw=float(u(0.058, 0.072)),
        eye_h=float(u(0.024, 0.034)),
        eye_lower=float(u(0.45, 0.65)),
        eye_tilt=float(u(-0.012, 0.006)),
        iris_r=float(u(0.019, 0.025)),
        iris_lum=float(u(0.12, 0.5)),
        sclera_lum=float(u(0.68, 0.78)),
        brow_gap=float(u(0.03, 0.05)),
        brow_len=float(u(0.12, 0.15)),
        brow_th=float(u(0.018, 0.03)),
        brow_h=float(u(0.065, 0.09)),
        brow_arch=float(u(0.008, 0.022)),
        brow_lum=brow_lum,
        nose_len=float(u(0.14, 0.18)),
        nose_w=float(u(0.035, 0.05)),
        mouth_dy=float(u(0.085, 0.11)),
        mouth_hw=float(u(0.105, 0.135)),
        lip_u=float(u(0.012, 0.02)),
        lip_l=float(u(0.016, 0.026)),
        lip_lum=float(skin * u(0.6, 0.82)),
        asym=r.normal(0, 0.004, size=4),
        glasses=bool(u() < config.glasses_prob),
        beard=float(u(0.25, 0.5)) if u() < config.beard_prob else 0.0,
        mole=mole,
        texture=tex.astype(np.float32),
        posing=posing,
        expressiveness=expressiveness,
    )


def sample_action_units(
    label: int,
    rng: np.random.Generator,
    config: GeneratorConfig = GeneratorConfig(),
    identity: Identity | None = None,
) -> np.ndarray:
    """AU intensities for one face: the poser's AU combination x gain + nuisance, clipped to [0, 1].

    Args:
      label: class in the unified order.
      rng: random stream of this face.
      config: generator parameters.
      identity: the subject; its ``posing`` picks the class's AU combination
        from ``POSING_VARIANTS`` and its ``expressiveness`` scales each AU.
        ``None`` poses the prototype at full strength.

    Returns:
      (len(AU_NAMES),) float32 vector.
    """
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
    au = np.zeros(len(AU_NAMES), np.float64)
    gain = rng.uniform(*config.gain_range)
    side = "L" if rng.uniform() < 0.5 else "R"
    combo = PROTOTYPES[label] if identity is None else POSING_VARIANTS[label][int(identity.posing[label])]
    for name, w in combo.items():
        if name.startswith("U"):
            name = side + name[1:]
        au[_AU[name]] = w * gain
    if identity is not None:
        au *= identity.expressiveness
    au += rng.normal(0.0, config.au_noise, size=au.shape)
    return np.clip(au, 0.0, 1.0).astype(np.float32)


class _Canvas:
    """Painter's-algorithm canvas in canvas units, with a pose transform."""

    def __init__(self, size: int, pose: np.ndarray):
        self.size = size
        self.lum = np.zeros((size, size), np.float32)
        self.alpha = np.zeros((size, size), np.float32)
        self.pose = pose  # (2, 3) affine in canvas units

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Canvas units -> continuous pixel coordinates, after the pose jitter."""
        p = pts @ self.pose[:, :2].T + self.pose[:, 2][None, :]
        return p * self.size

    def fill(self, pts: np.ndarray, value: float, opacity: float = 1.0, to_mask: bool = False, sub: int = 4) -> None:
        """Paints polygon ``pts`` ((N, 2) canvas units) with luminance ``value``."""
        if opacity <= 0.0:
            return
        p = self.to_px(pts)
        out = polygon_coverage(p[:, 0], p[:, 1], self.size, self.size, sub=sub)
        if out is None:
            return
        cov, r0, c0 = out
        h, w = cov.shape
        a = cov * opacity
        win = self.lum[r0 : r0 + h, c0 : c0 + w]
        win += a * (value - win)
        if to_mask:
            m = self.alpha[r0 : r0 + h, c0 : c0 + w]
            np.maximum(m, cov, out=m)

    def scale(self, pts: np.ndarray, factor: float, opacity: float = 1.0) -> None:
        """Multiplies the luminance inside polygon ``pts`` by ``factor`` (shadows, wrinkles)."""
        if opacity <= 0.0:
            return
        p = self.to_px(pts)
        out = polygon_coverage(p[:, 0], p[:, 1], self.size, self.size)
        if out is None:
            return
        cov, r0, c0 = out
        h, w = cov.shape
        win = self.lum[r0 : r0 + h, c0 : c0 + w]
        win *= 1.0 + cov * opacity * (factor - 1.0)


def _outline(idn: Identity, t: np.ndarray, jaw_drop: float) -> np.ndarray:
    """Head outline points at angles ``t`` (0 = image right, pi/2 = chin)."""
    s, c = np.sin(t), np.cos(t)
    low = np.maximum(s, 0.0)
    x = idn.cx + idn.face_a * c * (1.0 - idn.jaw_taper * low**2)
    b = np.where(s > 0, idn.face_b * idn.chin_b + 0.04 * jaw_drop, idn.face_b)
    y = idn.cy + b * s
    return np.stack([x, y], axis=1)


def _gauss_blob(xx: np.ndarray, yy: np.ndarray, x0: float, y0: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((xx - x0) / sx) ** 2 + ((yy - y0) / sy) ** 2))


_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRID_CACHE:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        _GRID_CACHE[size] = (np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size)))
    return _GRID_CACHE[size]


@dataclasses.dataclass
class _Face:
    """State shared by the feature drawers of one face (canvas units)."""

    idn: Identity
    a: dict[str, float]  # AU intensities by name: appearance (shading, folds, opacity)
    g: dict[str, float]  # AU intensities that move features (a x GeneratorConfig.motion_scale)
    cv: _Canvas
    rng: np.random.Generator
    lms: np.ndarray  # (68, 2) landmarks being filled in
    eye_y: float = 0.0
    tip_y: float = 0.0
    mouth_y: float = 0.0
    nose_w: float = 0.0
    eyes: dict[int, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    corner: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    fold_contrast: float = 1.0

    def fold(self, pts: np.ndarray, factor: float, opacity: float = 1.0) -> None:
        """An AU's fold, furrow or bulge: scales the luminance under ``pts`` by ``factor``, strengthened by ``fold_contrast``."""
        self.cv.scale(pts, max(1.0 + self.fold_contrast * (factor - 1.0), 0.05), opacity=opacity)

    @property
    def cx(self) -> float:
        return self.idn.cx


def _fade(value: float, start: float, slope: float) -> float:
    """Opacity of an appearance change that starts at AU intensity ``start``."""
    return float(np.clip((value - start) * slope, 0.0, 1.0))


def _draw_head(f: _Face) -> None:
    """Head, beard and hair (they define the mask); jaw landmarks 0-16."""
    idn, cv = f.idn, f.cv
    ctr = np.array([idn.cx, idn.cy])
    # AU26 drops the jaw: the lower face lengthens.
    jaw_drop = f.g["AU26"]
    cv.fill(_outline(idn, np.linspace(0.0, 2 * np.pi, 72, endpoint=False), jaw_drop), idn.skin, to_mask=True, sub=3)
    # Jaw landmarks 0..16: from the image-left ear level, round the chin, to the right.
    delta = 0.15
    t_jaw = (np.pi + delta) - np.arange(17) * (np.pi + 2 * delta) / 16.0
    f.lms[0:17] = ctr[None, :] + 0.96 * (_outline(idn, t_jaw, jaw_drop) - ctr[None, :])
    if idn.beard > 0:
        # Lower-face polygon: the outline below the nose-tip line.
        pts = _outline(idn, np.linspace(-0.25, np.pi + 0.25, 40), jaw_drop)
        pts = pts[pts[:, 1] > f.tip_y + 0.02]
        if len(pts) > 2:
            cv.scale(pts, 1.0 - idn.beard)
    if idn.hair is not None:
        side = idn.hair_side
        t_out = np.linspace(np.pi + side - 0.08, 2 * np.pi - side + 0.08, 40)
        outer = ctr[None, :] + (1.0 + idn.hair_volume / idn.face_b) * (_outline(idn, t_out, 0.0) - ctr[None, :])
        p_r = _outline(idn, np.array([2 * np.pi - side]), 0.0)[0]
        p_l = _outline(idn, np.array([np.pi + side]), 0.0)[0]
        mid = np.array([idn.cx, idn.cy - idn.face_b + idn.hair_drop])
        line = quad_bezier(p_r, control_for_mid(p_r, mid, p_l), p_l, 16)
        cv.fill(np.concatenate([outer, line], axis=0), idn.hair, to_mask=True, sub=3)


def _draw_forehead(f: _Face) -> None:
    """Forehead furrows of AU1 (centre) and AU2 (sides), glabella furrows and bulge of AU4."""
    idn, cv, a, cx = f.idn, f.cv, f.a, f.cx
    raise_ = max(a["AU1"], a["AU2"])
    op = _fade(raise_, 0.2, 1.6)
    if op > 0:
        # AU1 wrinkles the middle of the forehead, AU2 its sides; bands, not lines,
        # so they survive 64x64 and the renderer's blur.
        half = 0.05 + 0.09 * min(1.0, a["AU2"] / max(raise_, 1e-6))
        for j in range(3):
            y0 = f.eye_y - idn.brow_h - 0.055 - 0.032 * j
            p0, p2 = np.array([cx - half, y0 + 0.01]), np.array([cx + half, y0 + 0.01])
            curve = quad_bezier(p0, control_for_mid(p0, np.array([cx, y0 - 0.004 * a["AU1"]]), p2), p2, 14)
            f.fold(thick_curve(curve, 0.009), 0.76, opacity=op)
            f.fold(thick_curve(curve + np.array([0.0, 0.012]), 0.008), 1.12, opacity=op)
    op = _fade(a["AU4"], 0.25, 1.8)
    if op > 0:
        # Lowered, drawn-together brows bunch the skin between them: vertical
        # furrows and a shaded bulge over the nose root.
        top, bottom = f.eye_y - idn.brow_h - 0.03, f.eye_y - idn.brow_h + 0.04
        f.fold(ellipse_poly(cx, 0.5 * (top + bottom), 0.035, 0.045, 18), 0.8, opacity=op)
        for s in (-1, 1):
            seg = np.array([[cx + s * 0.012, top], [cx + s * 0.016, bottom]])
            f.fold(thick_curve(seg, 0.011, 0.008), 0.66, opacity=op)


def _draw_eyes(f: _Face) -> None:
    """Eyes with AU5 (lid raise), AU6/AU7 (lower lid up, bulge) and crow's feet; landmarks 36-47."""
    idn, cv, a, g, cx, lms = f.idn, f.cv, f.a, f.g, f.cx, f.lms
    up_ap = idn.eye_h * (1 + 1.1 * g["AU5"]) * (1 - 0.5 * g["AU7"]) * (1 - 0.2 * g["AU4"]) * (1 - 0.15 * g["AU6"])
    lo_ap = idn.eye_h * idn.eye_lower * (1 + 0.5 * g["AU5"]) * (1 - 0.75 * g["AU6"]) * (1 - 0.6 * g["AU7"])
    lo_ap = max(lo_ap, 0.002)
    gaze = f.rng.uniform(-0.3, 0.3) * idn.eye_hw
    for s in (-1, 1):
        k = 0 if s < 0 else 1
        ex = cx + s * idn.eye_dx
        ey = f.eye_y + (idn.asym[0] if s < 0 else -idn.asym[0])
        inner = np.array([ex - s * idn.eye_hw, ey])
        # AU7 straightens the lower lid and lifts the outer corner slightly.
        outer = np.array([ex + s * idn.eye_hw, ey + idn.eye_tilt - 0.006 * g["AU7"]])
        mid = 0.5 * (inner + outer)
        c_up = control_for_mid(inner, mid - np.array([0.0, up_ap]), outer)
        c_lo = control_for_mid(inner, mid + np.array([0.0, lo_ap]), outer)
        upper = quad_bezier(inner, c_up, outer, 14)
        lower = quad_bezier(inner, c_lo, outer, 14)
        cv.fill(np.concatenate([upper, lower[::-1]], axis=0), idn.sclera_lum)
        # Iris and pupil stay where they are while the lids move: AU5 bares the
        # sclera above the iris. The lids are re-drawn over them to clip them.
        ic = np.array([ex + gaze, ey - 0.15 * idn.eye_h])
        cv.fill(ellipse_poly(ic[0], ic[1], idn.iris_r, idn.iris_r, 20), idn.iris_lum)
        cv.fill(ellipse_poly(ic[0], ic[1], 0.45 * idn.iris_r, 0.45 * idn.iris_r, 14), 0.04)
        lid_top = np.concatenate([upper, (upper - np.array([0.0, idn.iris_r * 2.2]))[::-1]], axis=0)
        lid_bot = np.concatenate([lower, (lower + np.array([0.0, idn.iris_r * 2.2]))[::-1]], axis=0)
        cv.fill(lid_top, idn.skin * (0.93 + 0.06 * a["AU5"]))
        cv.fill(lid_bot, idn.skin * 0.97)
        cv.fill(thick_curve(upper, 0.006, 0.008), 0.06)  # lash line
        # The lid crease: hidden by AU5 (the lid retracts into it), deep in a neutral eye.
        crease = upper - np.array([0.0, 0.012 + 0.25 * up_ap])
        cv.scale(thick_curve(crease[2:-1], 0.005), 0.8, opacity=1.0 - 0.8 * a["AU5"])
        cv.scale(thick_curve(lower[1:-1], 0.003), 0.85)
        # AU6/AU7 bunch the lower lid into a shaded bulge under the eye.
        bulge = max(a["AU7"], a["AU6"])
        if bulge > 0.15:
            under = lower + np.array([0.0, 0.014])
            f.fold(thick_curve(under[2:-2], 0.012, 0.012), 0.8, opacity=_fade(bulge, 0.15, 1.5))
        f.eyes[k] = {"inner": inner, "outer": outer, "center": np.array([ex, ey])}
        # iBUG: 36-41 image-left eye from the outer corner, 42-47 image-right eye from the inner corner.
        if s < 0:
            up_pts = bezier_at(outer, c_up, inner, np.array([1 / 3, 2 / 3]))
            lo_pts = bezier_at(outer, c_lo, inner, np.array([2 / 3, 1 / 3]))
            lms[36], lms[37:39], lms[39], lms[40:42] = outer, up_pts, inner, lo_pts
        else:
            up_pts = bezier_at(inner, c_up, outer, np.array([1 / 3, 2 / 3]))
            lo_pts = bezier_at(inner, c_lo, outer, np.array([2 / 3, 1 / 3]))
            lms[42], lms[43:45], lms[45], lms[46:48] = inner, up_pts, outer, lo_pts
        op = _fade(a["AU6"], 0.2, 1.5)
        if op > 0:
            # Crow's feet: a fan of wedges at the outer corner.
            for ang in (-0.4, 0.0, 0.4):
                d = np.array([s * math.cos(ang), math.sin(ang)])
                p0 = outer + s * np.array([0.01, 0.0])
                f.fold(thick_curve(np.stack([p0, p0 + 0.04 * d]), 0.008, 0.003), 0.72, opacity=op)


def _draw_brows(f: _Face) -> None:
    """Brows: AU1 lifts the inner ends, AU2 the outer ends, AU4 (and AU9) lower and join them; landmarks 17-26."""
    idn, cv, a, g, cx = f.idn, f.cv, f.a, f.g, f.cx
    th = idn.brow_th * (1 + 0.3 * a["AU4"])
    lower = g["AU4"] + 0.4 * g["AU9"]
    for s in (-1, 1):
        by = f.eyes[0 if s < 0 else 1]["center"][1] - idn.brow_h + (idn.asym[1] if s < 0 else -idn.asym[1])
        inner = np.array(
            [cx + s * (idn.brow_gap - 0.025 * g["AU4"] + idn.asym[3]), by - 0.075 * g["AU1"] + 0.065 * lower]
        )
        outer = np.array([cx + s * (idn.brow_gap + idn.brow_len), by + 0.15 * idn.brow_h - 0.07 * g["AU2"] + 0.015 * lower])
        mid = 0.5 * (inner + outer) - np.array([0.0, idn.brow_arch + 0.025 * g["AU2"]])
        ctrl = control_for_mid(inner, mid, outer)
        cv.fill(thick_curve(quad_bezier(inner, ctrl, outer, 16), th, 0.55 * th), idn.brow_lum)
        pts = bezier_at(inner, ctrl, outer, np.linspace(0.0, 1.0, 5))
        if s < 0:
            f.lms[17:22] = pts[::-1]
        else:
            f.lms[22:27] = pts


def _draw_nose(f: _Face) -> None:
    """Nose with AU9 (wrinkled bridge, raised and flared wings); landmarks 27-35."""
    idn, cv, a, cx, ey = f.idn, f.cv, f.a, f.cx, f.eye_y
    f.lms[27:31] = np.stack([np.full(4, cx), ey - 0.01 + np.arange(4) * (idn.nose_len + 0.01) / 3.0], axis=1)
    nw = idn.nose_w * (1 + 0.25 * f.g["AU9"] + 0.1 * f.g["AU10"])
    f.nose_w = nw
    wing_up = 0.02 * f.g["AU9"] + 0.008 * f.g["AU10"]
    base_y = f.tip_y + 0.018 - wing_up
    f.lms[31:36] = np.array(
        [
            [cx - nw, base_y - 0.004],
            [cx - 0.5 * nw, base_y + 0.004],
            [cx, base_y + 0.008 + 0.5 * wing_up],
            [cx + 0.5 * nw, base_y + 0.004],
            [cx + nw, base_y - 0.004],
        ]
    )
    light_side = 1 if f.rng.uniform() < 0.5 else -1
    bridge = np.array([[cx + light_side * 0.018, ey + 0.0], [cx + light_side * 0.022, f.tip_y - 0.01]])
    cv.scale(thick_curve(bridge, 0.012, 0.016), 0.9)
    cv.scale(ellipse_poly(cx, f.tip_y + 0.02, 0.05, 0.012, 18), 0.85)  # shadow under the tip
    cv.fill(ellipse_poly(cx, f.tip_y - 0.004, 0.018, 0.012, 14), min(idn.skin * 1.08, 0.8), opacity=0.7)
    for s in (-1, 1):
        cv.fill(ellipse_poly(cx + s * 0.45 * nw, base_y, 0.012, 0.006 + 0.003 * a["AU9"], 14, angle=s * 0.3), idn.skin * 0.3)
        wing_c = np.array([cx + s * nw, base_y - 0.01])
        arc = np.stack(
            [wing_c + np.array([s * 0.012 * math.cos(q), 0.014 * math.sin(q)]) for q in np.linspace(-1.6, 1.3, 8)]
        )
        cv.scale(thick_curve(arc, 0.004 + 0.004 * a["AU9"]), 0.72)
    op = _fade(a["AU9"], 0.15, 1.6)
    if op > 0:
        # Nose wrinkle: the skin of the bridge folds into dark oblique bands
        # between bright ridges, over a shaded nose root.
        f.fold(ellipse_poly(cx, ey + 0.02, 0.035, 0.035, 18), 0.82, opacity=op)
        for s in (-1, 1):
            for j in range(3):
                p0 = np.array([cx + s * 0.004, ey + 0.004 + 0.02 * j])
                seg = np.stack([p0, p0 + np.array([s * 0.04, 0.02])])
                f.fold(thick_curve(seg, 0.008), 0.68, opacity=op)
                f.fold(thick_curve(seg + np.array([0.0, 0.01]), 0.006), 1.15, opacity=op)


def _mouth_corners(f: _Face) -> None:
    """Lip corners: AU12 pulls them up and out, AU15 down, AU20 sideways, AU23/24 in, AU14 in and up."""
    idn, g = f.idn, f.g  # movements only
    u12 = {-1: g["L12"], 1: g["R12"]}
    u14 = {-1: g["L14"], 1: g["R14"]}
    tight = max(g["AU23"], g["AU24"])
    hw = idn.mouth_hw * (1 + 0.3 * g["AU12"] + 0.45 * g["AU20"]) * (1 - 0.2 * tight) * (1 - 0.15 * g["AU26"])
    for s in (-1, 1):
        x = f.cx + s * (hw + 0.02 * u12[s] - 0.004 * u14[s])
        y = (
            f.mouth_y
            - 0.075 * g["AU12"]
            + 0.065 * g["AU15"]
            + 0.015 * g["AU20"]
            - 0.1 * u12[s]
            - 0.012 * u14[s]
            + (idn.asym[2] if s < 0 else -idn.asym[2])
        )
        f.corner[s] = np.array([x, y])


def _draw_cheeks(f: _Face) -> None:
    """Nasolabial folds (AU6/9/10/12), the contempt dimple (AU14) and the lip depressor folds (AU15)."""
    cv, a, cx = f.cv, f.a, f.cx
    u12 = {-1: a["L12"], 1: a["R12"]}
    u14 = {-1: a["L14"], 1: a["R14"]}
    for s in (-1, 1):
        fold = max(a["AU12"], a["AU10"], 0.8 * a["AU9"], u12[s], 0.6 * a["AU6"])
        if fold > 0.1:
            # A filled crescent from the nose wing to past the lip corner: the
            # raised cheek overhangs it, so its lateral side is lit.
            p0 = np.array([cx + s * (f.nose_w + 0.01), f.tip_y - 0.008])
            p2 = f.corner[s] + np.array([s * 0.028, 0.02])
            ctrl = 0.5 * (p0 + p2) + np.array([s * 0.03, -0.005])
            curve = quad_bezier(p0, ctrl, p2, 14)
            op = min(1.0, fold * 1.2)
            f.fold(thick_curve(curve, 0.014, 0.006), 0.66, opacity=op)
            f.fold(thick_curve(curve + np.array([s * 0.016, -0.004]), 0.016, 0.008), 1.16, opacity=op)
        if u14[s] > 0.1:
            # AU14 tightens one corner into a dimple: a shaded pit beside the
            # corner, with the tightened corner bulging next to it.
            d = f.corner[s] + np.array([s * 0.018, -0.002])
            op = _fade(u14[s], 0.1, 1.5)
            f.fold(ellipse_poly(d[0], d[1], 0.014, 0.026, 16), 0.6, opacity=op)
            f.fold(ellipse_poly(d[0] - s * 0.016, d[1] - 0.004, 0.01, 0.014, 12), 1.18, opacity=op)
        op = _fade(a["AU15"], 0.2, 1.5)
        if op > 0:
            # AU15 pulls the skin below the corners down into short oblique folds.
            p0 = f.corner[s] + np.array([s * 0.004, 0.006])
            seg = np.stack([p0, p0 + np.array([s * 0.012, 0.045])])
            f.fold(thick_curve(seg, 0.01, 0.005), 0.7, opacity=op)


def _draw_mouth(f: _Face) -> None:
    """Lips and mouth opening (AU10/12/15/17/20/23/24/25/26); landmarks 48-67."""
    idn, cv, a, g, cx = f.idn, f.cv, f.a, f.g, f.cx
    u12 = {-1: g["L12"], 1: g["R12"]}
    cl, cr_ = f.corner[-1], f.corner[1]
    centre_y = f.mouth_y - 0.012 * g["AU12"] - 0.012 * (u12[-1] + u12[1])
    # AU25 parts the lips, AU26 drops the jaw (an opening that grows faster at
    # high intensity, the mouth stretch of a surprised face); a smile opens
    # into a crescent, AU20 into a wide slot.
    opening = 0.025 * g["AU25"] + 0.07 * g["AU26"] + 0.05 * g["AU26"] ** 2 + 0.045 * g["AU20"] * min(1.0, 3 * g["AU26"])
    open_u = 0.3 * opening + 0.035 * g["AU10"] + 0.005 * g["AU12"]
    open_l = max(0.7 * opening + 0.05 * g["AU12"] * g["AU25"] ** 0.5 - 0.015 * g["AU17"], -open_u)
    press = max(1 - 0.7 * g["AU23"] - 0.6 * g["AU24"], 0.2)
    tu = idn.lip_u * press
    tl = idn.lip_l * press * (1 + 0.3 * g["AU17"])
    ui_mid = np.array([cx, centre_y - open_u])
    li_mid = np.array([cx, centre_y + open_l])
    uo_mid = ui_mid - np.array([0.0, tu])
    lo_mid = li_mid + np.array([0.0, tl])
    c_ui = control_for_mid(cl, ui_mid, cr_)
    c_li = control_for_mid(cl, li_mid, cr_)
    c_uo = control_for_mid(cl, uo_mid, cr_)
    c_lo = control_for_mid(cl, lo_mid, cr_)
    n = 18
    ui, li = quad_bezier(cl, c_ui, cr_, n), quad_bezier(cl, c_li, cr_, n)
    uo, lo = quad_bezier(cl, c_uo, cr_, n), quad_bezier(cl, c_lo, cr_, n)
    if a["AU10"] > 0.1:
        # AU10 lifts the middle of the upper lip more than its sides (an angular upper lip).
        bump = 0.02 * g["AU10"] * np.sin(np.linspace(0.0, np.pi, n)) ** 2
        ui = ui - np.stack([np.zeros(n), bump], axis=1)
        uo = uo - np.stack([np.zeros(n), bump], axis=1)
    if opening + 0.03 * g["AU10"] + 0.02 * g["AU12"] > 0.004:
        cv.fill(np.concatenate([ui, li[::-1]], axis=0), 0.07)
        teeth_h = 0.026
        if a["AU12"] > 0.25 or a["AU10"] > 0.3:
            # Upper teeth show in a smile and under a raised upper lip.
            lower_edge = np.minimum(ui[:, 1] + teeth_h, np.maximum(li[:, 1], ui[:, 1]))
            cv.fill(np.concatenate([ui, np.stack([ui[:, 0], lower_edge], axis=1)[::-1]], axis=0), 0.75)
        if a["AU20"] > 0.3 and opening > 0.02:
            # A stretched, open mouth (fear) bares the lower teeth.
            upper_edge = np.maximum(li[:, 1] - 0.7 * teeth_h, np.minimum(ui[:, 1], li[:, 1]))
            cv.fill(np.concatenate([li, np.stack([li[:, 0], upper_edge], axis=1)[::-1]], axis=0), 0.7)
    cv.fill(np.concatenate([uo, ui[::-1]], axis=0), idn.lip_lum)
    cv.fill(np.concatenate([li, lo[::-1]], axis=0), idn.lip_lum * 1.05)
    cv.fill(thick_curve(0.5 * (ui + li), 0.004 + 0.004 * max(a["AU23"], a["AU24"])), idn.lip_lum * 0.45)
    op = _fade(max(a["AU23"], a["AU24"]), 0.25, 1.6)
    if op > 0:
        # Pressed lips bulge the skin above and below them.
        for dy, w in ((-0.028, 0.026), (0.032, 0.026)):
            band = quad_bezier(cl, control_for_mid(cl, np.array([cx, centre_y + dy]), cr_), cr_, 12)[2:-2]
            f.fold(thick_curve(band, w), 0.72, opacity=op)
    op = _fade(a["AU17"], 0.2, 2.0)
    if op > 0:
        # AU17 pushes the chin boss up: a deep furrow under the lower lip.
        p0, p2 = np.array([cx - 0.055, lo_mid[1] + 0.03]), np.array([cx + 0.055, lo_mid[1] + 0.03])
        curve = quad_bezier(p0, control_for_mid(p0, 0.5 * (p0 + p2) + np.array([0, 0.014]), p2), p2, 12)
        f.fold(thick_curve(curve, 0.015, 0.015), 0.66, opacity=op)
    lms = f.lms
    lms[48] = cl
    lms[49:54] = bezier_at(cl, c_uo, cr_, np.arange(1, 6) / 6.0)
    lms[54] = cr_
    lms[55:60] = bezier_at(cl, c_lo, cr_, np.arange(5, 0, -1) / 6.0)
    lms[60] = cl + np.array([0.006, 0.0])
    lms[61:64] = bezier_at(cl, c_ui, cr_, np.array([0.25, 0.5, 0.75]))
    lms[64] = cr_ - np.array([0.006, 0.0])
    lms[65:68] = bezier_at(cl, c_li, cr_, np.array([0.75, 0.5, 0.25]))


def _draw_wrinkles(f: _Face, contrast: float) -> None:
    """Fine wrinkles of the AUs: thin dark lines a few hundredths of the face apart.

    Real peak expressions also change skin texture at a fine scale (forehead
    lines, crow's feet, glabellar lines, nose and lip wrinkles, the stippled
    chin of AU17). At this spacing (about 2.5 px of a 64 px render, 1.3 px of
    a 32 px input) they are visible to a model that sees the face at 64 px or
    more and average away at 32 px: class information that a 32x32 baseline
    cannot use, as on real faces.
    """
    idn, a, cx, ey = f.idn, f.a, f.cx, f.eye_y
    dark, lit = max(1.0 - 0.5 * contrast, 0.05), 1.0 + 0.5 * contrast

    def line(pts: np.ndarray, width: float, op: float) -> None:
        # A dark furrow with a lit ridge beside it: the pair keeps the local
        # mean, so it vanishes once a pixel spans both.
        if op > 0:
            d = pts[-1] - pts[0]
            n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9)
            f.cv.scale(thick_curve(pts, width), dark, opacity=op)
            f.cv.scale(thick_curve(pts + width * n, width), lit, opacity=op)

    raise_ = max(a["AU1"], a["AU2"])
    op = _fade(raise_, 0.2, 1.6)
    half = 0.05 + 0.1 * min(1.0, a["AU2"] / max(raise_, 1e-6))
    for j in range(4):  # forehead lines (AU1 centre, AU2 sides)
        y0 = ey - idn.brow_h - 0.04 - 0.045 * j
        xs = np.linspace(cx - half, cx + half, 12)
        line(np.stack([xs, y0 + 0.006 * ((xs - cx) / half) ** 2], axis=1), 0.01, op)
    op = _fade(a["AU4"], 0.25, 1.8)
    for s in (-1, 1):  # glabellar lines
        for off in (0.014, 0.04):
            x0 = cx + s * off
            line(np.array([[x0, ey - idn.brow_h - 0.035], [x0 - s * 0.004, ey - idn.brow_h + 0.035]]), 0.009, op)
    op = _fade(a["AU6"], 0.2, 1.5)
    for k in (0, 1):  # crow's feet
        s = -1 if k == 0 else 1
        o = f.eyes[k]["outer"] + np.array([s * 0.012, 0.0])
        for ang in (-0.6, -0.2, 0.2, 0.6):
            d = np.array([s * math.cos(ang), math.sin(ang)])
            line(np.stack([o, o + 0.055 * d]), 0.008, op)
    op = _fade(a["AU9"], 0.15, 1.6)
    for j in range(4):  # nose-bridge wrinkles
        y0 = ey + 0.024 * j
        line(np.array([[cx - 0.03, y0], [cx + 0.03, y0]]), 0.008, op)
    op = _fade(max(a["AU23"], a["AU24"]), 0.25, 1.6)
    for i in range(-3, 4):  # vertical lines of pressed lips
        x0 = cx + 0.022 * i
        line(np.array([[x0, f.mouth_y - 0.03], [x0, f.mouth_y + 0.035]]), 0.007, op)
    op = _fade(a["AU17"], 0.2, 2.0)
    if op > 0:  # the stippled ("orange peel") chin
        for i in range(-2, 3):
            for j in range(3):
                x0, y0 = cx + 0.03 * i + 0.015 * (j % 2), f.mouth_y + 0.07 + 0.028 * j
                f.cv.scale(ellipse_poly(x0, y0, 0.007, 0.007, 8), dark, opacity=op)
                f.cv.scale(ellipse_poly(x0 + 0.01, y0 - 0.01, 0.007, 0.007, 8), lit, opacity=op)
    op = _fade(a["AU15"], 0.2, 1.5)
    for s in (-1, 1):  # marionette lines below the depressed corners
        c = f.corner[s]
        for off in (0.012, 0.036):
            p0 = c + np.array([s * off, 0.012])
            line(np.stack([p0, p0 + np.array([s * 0.006, 0.05])]), 0.008, op)


def _draw_distractors(f: _Face) -> None:
    """Glasses and a mole: identity features that carry no expression."""
    idn, cv = f.idn, f.cv
    if idn.glasses:
        for k in (0, 1):
            e = f.eyes[k]["center"]
            ring = ellipse_poly(e[0], e[1] - 0.005, idn.eye_hw * 1.45, idn.eye_hw * 1.05, 28)
            cv.fill(thick_curve(np.concatenate([ring, ring[:1]], axis=0), 0.007), 0.08)
        l0, r0 = f.eyes[0]["center"], f.eyes[1]["center"]
        bridge = np.array([[l0[0] + idn.eye_hw * 1.4, l0[1] - 0.01], [r0[0] - idn.eye_hw * 1.4, r0[1] - 0.01]])
        cv.fill(thick_curve(bridge, 0.006), 0.08)
    if idn.mole is not None:
        cv.fill(ellipse_poly(idn.cx + idn.mole[0], idn.cy + idn.mole[1], 0.006, 0.006, 10), idn.skin * 0.45)


def _shading(f: _Face, config: GeneratorConfig) -> np.ndarray:
    """Multiplicative shading on the pixel grid: head roundness, lighting, and the broad AU changes.

    The large, soft appearance changes of FACS (cheeks raised by AU6, the brow
    shadow of AU4, the chin boss of AU17) are Gaussian blobs here: at the
    scale of a cheek they survive the downsampling to 64x64 and the blur.
    """
    idn, a, pose = f.idn, f.a, f.cv.pose
    xx, yy = _grid(f.cv.size)

    def pc(x: float, y: float) -> tuple[float, float]:
        # Blob centres follow the pose jitter.
        return float(pose[0, 0] * x + pose[0, 1] * y + pose[0, 2]), float(pose[1, 0] * x + pose[1, 1] * y + pose[1, 2])

    hx, hy = pc(idn.cx, idn.cy)
    rr2 = ((xx - hx) / idn.face_a) ** 2 + ((yy - hy) / idn.face_b) ** 2
    gain = 1.0 - 0.22 * np.minimum(rr2, 1.2) ** 1.5
    phi = f.rng.uniform(0, 2 * np.pi)
    amp = f.rng.uniform(0, config.lighting_amplitude)
    gain *= 1.0 + amp * (math.cos(phi) * (xx - hx) / idn.face_a + math.sin(phi) * (yy - hy) / idn.face_b)
    amp_au = config.shading_contrast
    u12 = {0: a["L12"], 1: a["R12"]}
    for k in (0, 1):
        e = f.eyes[k]["center"]
        ex, ey = pc(*e)
        s = -1 if k == 0 else 1
        # Eye sockets; AU4 deepens their shadow under the lowered brow.
        gain *= 1.0 - (0.12 + amp_au * 0.2 * a["AU4"]) * _gauss_blob(xx, yy, ex, ey - 0.015, 0.06, 0.035)
        # AU6 (and a strong AU12) raise the cheeks: a lit bulge under the eye
        # with a shadow between it and the lower lid.
        cheek = a["AU6"] + 0.6 * max(a["AU12"], u12[k])
        if cheek > 0.05:
            bx, by = pc(e[0] + s * 0.01, e[1] + 0.085 - 0.02 * cheek)
            gain *= 1.0 + amp_au * 0.2 * cheek * _gauss_blob(xx, yy, bx, by, 0.05, 0.032)
            sx_, sy_ = pc(e[0], e[1] + 0.04)
            gain *= 1.0 - amp_au * 0.12 * a["AU6"] * _gauss_blob(xx, yy, sx_, sy_, 0.045, 0.012)
    if a["AU17"] > 0.05:
        bx, by = pc(idn.cx, f.mouth_y + 0.085 + 0.04 * a["AU26"])
        gain *= 1.0 + amp_au * 0.2 * a["AU17"] * _gauss_blob(xx, yy, bx, by, 0.045, 0.025)
    if a["AU26"] > 0.05:
        # The dropped jaw hollows the cheeks beside the open mouth.
        for s in (-1, 1):
            bx, by = pc(idn.cx + s * 0.17, f.mouth_y - 0.01)
            gain *= 1.0 - amp_au * 0.12 * a["AU26"] * _gauss_blob(xx, yy, bx, by, 0.035, 0.06)
    return gain.astype(np.float32)


def render_face(
    idn: Identity,
    au: np.ndarray,
    rng: np.random.Generator,
    config: GeneratorConfig = GeneratorConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one face.

    Args:
      idn: the subject's identity.
      au: (len(AU_NAMES),) AU intensities.
      rng: random stream of this face (pose jitter, gaze, lighting).
      config: generator parameters.

    Returns:
      ``(image, mask, landmarks)``: (128, 128) uint8 dark face, (128, 128)
      uint8 soft mask, (68, 2) float32 (x, y) landmarks in pixel-centre units.
    """
    a = {name: float(au[i]) for i, name in enumerate(AU_NAMES)}
    # Per-face nuisance: small similarity jitter about the face centre.
    roll = rng.normal(0.0, config.pose_jitter)
    zoom = 1.0 + rng.normal(0.0, 0.6 * config.pose_jitter)
    shift = rng.normal(0.0, 0.3 * config.pose_jitter, size=2)
    cr, sr = math.cos(roll) * zoom, math.sin(roll) * zoom
    lin = np.array([[cr, -sr], [sr, cr]])
    ctr = np.array([idn.cx, idn.cy])
    pose = np.concatenate([lin, (ctr - lin @ ctr + shift)[:, None]], axis=1)
    # A long face with its jaw dropped (AU26) can reach past the canvas: lift
    # it so the chin stays on it (about 1 % of faces, most of them surprise).
    g = {name: v * config.motion_scale for name, v in a.items()}
    chin = pose[:, :2] @ _outline(idn, np.array([np.pi / 2]), g["AU26"])[0] + pose[:, 2]
    pose[1, 2] -= max(0.0, float(chin[1]) - 1.0)
    f = _Face(
        idn=idn,
        a=a,
        g=g,
        cv=_Canvas(FACE_SIZE, pose),
        rng=rng,
        lms=np.zeros((NUM_LANDMARKS, 2), np.float64),
        fold_contrast=config.fold_contrast,
    )
    f.eye_y = idn.cy + idn.eye_dy
    f.tip_y = f.eye_y + idn.nose_len
    f.mouth_y = f.tip_y + idn.mouth_dy
    # Painter's order: later drawers paint over earlier ones.
    _draw_head(f)
    _draw_forehead(f)
    _draw_eyes(f)
    _draw_brows(f)
    _draw_nose(f)
    _mouth_corners(f)
    _draw_cheeks(f)
    _draw_mouth(f)
    if config.wrinkle_contrast > 0:
        _draw_wrinkles(f, config.wrinkle_contrast)
    _draw_distractors(f)
    cv = f.cv
    lum = cv.lum * _shading(f, config)
    lum += idn.texture * cv.alpha
    if config.blur_sigma > 0:
        lum = ndimage.gaussian_filter(lum, config.blur_sigma)
    mask = cv.alpha
    lum = np.clip(lum, 0.0, 1.0)
    image = np.clip((lum + config.floor) * mask, 0.0, 1.0)
    image_u8 = np.round(image * 255.0).astype(np.uint8)
    mask_u8 = np.round(mask * 255.0).astype(np.uint8)
    lms_px = cv.to_px(f.lms) - 0.5  # pixel-centre convention
    return image_u8, mask_u8, lms_px.astype(np.float32)


def generate_face(
    subject: int,
    label: int,
    index: int = 0,
    seed: int = 0,
    config: GeneratorConfig = GeneratorConfig(),
    identity: Identity | None = None,
) -> dict[str, Any]:
    """Generates one record of the shared face schema.

    Args:
      subject: subject id (>= 0).
      label: class in the unified order.
      index: sample index within (subject, label), selects gain and nuisance.
      seed: dataset seed.
      config: generator parameters.
      identity: optional pre-sampled identity of ``subject`` (saves its cost
        when many faces of one subject are drawn).

    Returns:
      Dict with ``image``, ``mask``, ``landmarks``, ``label``, ``subject``,
      ``action_units`` (see module docstring).
    """
    if identity is None:
        identity = sample_identity(seed, subject, config)
    elif identity.subject != subject:
        raise ValueError(f"identity is for subject {identity.subject}, not {subject}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = _rng(seed, _FACE_STREAM, subject, label, index)
    au = sample_action_units(label, rng, config, identity)
    image, mask, lms = render_face(identity, au, rng, config)
    return {
        "image": image,
        "mask": mask,
        "landmarks": lms,
        "label": int(label),
        "subject": int(subject),
        "action_units": au,
    }


def generate_subject_faces(
    subject: int,
    intensities: int,
    seed: int = 0,
    config: GeneratorConfig = GeneratorConfig(),
    num_classes: int = NUM_CLASSES,
) -> dict[str, np.ndarray]:
    """All faces of one subject: every class x ``intensities`` samples, stacked.

    Args:
      subject: subject id.
      intensities: samples per (subject, class).
      seed: dataset seed.
      config: generator parameters.
      num_classes: number of classes drawn (labels 0..num_classes-1).

    Returns:
      Face-bank dict (see :func:`stack_records`) with ``num_classes * intensities`` rows.
    """
    idn = sample_identity(seed, subject, config)
    recs = [
        generate_face(subject, label, i, seed, config, identity=idn)
        for label in range(num_classes)
        for i in range(intensities)
    ]
    bank = stack_records(recs)
    bank["index"] = np.tile(np.arange(intensities, dtype=np.int32), num_classes)
    return bank


def stack_records(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks records into a face bank (dict of arrays with a leading N axis)."""
    return {
        "image": np.stack([r["image"] for r in records]).astype(np.uint8),
        "mask": np.stack([r["mask"] for r in records]).astype(np.uint8),
        "landmarks": np.stack([r["landmarks"] for r in records]).astype(np.float32),
        "label": np.asarray([r["label"] for r in records], np.int32),
        "subject": np.asarray([r["subject"] for r in records], np.int32),
        "action_units": np.stack([r["action_units"] for r in records]).astype(np.float32),
    }
