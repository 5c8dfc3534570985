"""On-device compositing renderer: the reference's synthetic-sample steps as one jitted function.

The reference (docs/reference.md 5.3-5.4) renders each training sample on the host
with OpenCV: pad the dark face to 148 px, random scale, flip, rotation,
translation and warp (each its own ``warpAffine``), Lab illumination matching,
mask clean-up, composite onto a background window, grey, resize 148 -> 48 ->
64 with CLAHE (p=0.25) and noise + blur (p=0.25) at 48 px. This module does
the same for a whole batch, vectorised, so it runs on the accelerator beside
the train step: :func:`render_batch`.

Geometry (all in the normalised coordinates of ``affine_grid`` with
``align_corners=False``, where -1 and +1 are the outer edges of the image):

* The **un-transformed face** ``U`` is the 128 px dark face padded by ``pad``
  pixels on each side (the reference's 148 px canvas) and resampled, with an
  anti-aliasing filter, to the output size S. :func:`prepare_faces` returns it.
* The random scale, flip, rotation, translation and warp are composed into one
  forward 3x3 map ``M`` (source -> output). ``theta = M^-1[:2]`` maps output
  coordinates to source coordinates, which is what PyTorch's
  ``affine_grid`` / ``grid_sample`` need; ``x_org = grid_sample(U,
  affine_grid(theta))``. So warping the un-transformed face with the returned
  theta through the STN sampler reproduces ``x_org`` exactly (this fixes the
  reference's forward-vs-inverse defect, docs/reference.md 7 item 12).

Other fixes of docs/reference.md 7 item 13: contrast normalisation divides by the
range (not the max) and never wraps; the background window is sampled inside
the crop (never stretched past its edge); the face is segmented by its mask,
not by ``pixel < 1``; masks are soft and warped bilinearly, then thresholded,
instead of nearest-warping a binary mask.

Every probability and range is a field of :class:`RenderConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from feratt_jax.ops.spatial_transform import affine_grid, grid_sample

SUPPORTED_IMAGE_SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 256)
SOURCE_FACE_SIZE = 128


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Parameters of the compositing renderer (hashable: a static jit argument).

    Attributes:
      image_size: output side S; one of ``SUPPORTED_IMAGE_SIZES``.
      face_size: side of the input dark faces (128 in the shared schema).
      pad: zero padding, in face pixels, around the face before the warp (the
        reference pads 128 -> 148).
      scale_range: random scale ``1 + scale_range * U(-1, 1)`` (reference ``factor``).
      angle: max rotation in degrees, ``U(-angle, angle)``.
      translation: max shift as a fraction of the side, per axis.
      warp: max displacement of each of the three warp-triangle corners, as a
        fraction of the side, per axis.
      flip_prob: probability of a horizontal flip.
      illumination: match the face's Lab lightness to the background's.
      illumination_clip: clip of the lightness gain (reference 0.5, 1.5).
      lightness_clip: clip of the face lightness after the gain, in Lab L units.
      normalize_face: min-max normalise the face over its mask (the
        reference's ``norm``, fixed to divide by the range).
      normalize_background: min-max normalise each background window.
      background_zoom: the window cut from each background crop spans this
        range of fractions of the crop side (random scale on device).
      mask_threshold: threshold of the warped soft mask.
      mask_cleanup: morphological closing (3x3) of the binary mask.
      downsample_size: the composite goes S -> downsample_size -> S (the
        reference's 48 <-> 64 step); ``None`` or 0 disables it.
      clahe_prob: probability of CLAHE at the downsampled size.
      clahe_clip_limit: CLAHE clip limit (OpenCV semantics).
      clahe_tiles: CLAHE tile grid (tiles x tiles).
      noise_blur_prob: probability of Gaussian noise followed by a Gaussian blur.
      noise_sigma: std of that noise in [0, 1] grey units (the reference adds
        N(0, 0.005) to L/255, about 0.013 of the grey range).
      blur_kernel_sizes: odd kernel sizes drawn uniformly for the blur; sigma
        is OpenCV's default for the size.
    """

    image_size: int = 64
    face_size: int = SOURCE_FACE_SIZE
    pad: int = 10
    scale_range: float = 0.2
    angle: float = 30.0
    translation: float = 0.2
    warp: float = 0.1
    flip_prob: float = 0.5
    illumination: bool = True
    illumination_clip: tuple[float, float] = (0.5, 1.5)
    lightness_clip: tuple[float, float] = (10.0, 90.0)
    normalize_face: bool = True
    normalize_background: bool = True
    background_zoom: tuple[float, float] = (0.7, 1.0)
    mask_threshold: float = 0.5
    mask_cleanup: bool = True
    downsample_size: int | None = 48
    clahe_prob: float = 0.25
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    noise_blur_prob: float = 0.25
    noise_sigma: float = 0.013
    blur_kernel_sizes: tuple[int, ...] = (3, 5, 7)

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"RenderConfig: {msg}")

        if self.image_size not in SUPPORTED_IMAGE_SIZES:
            fail(f"image_size {self.image_size} is not supported; use one of {SUPPORTED_IMAGE_SIZES}")
        if self.face_size < 16:
            fail(f"face_size must be >= 16, got {self.face_size}")
        if self.pad < 0:
            fail(f"pad must be >= 0, got {self.pad}")
        for name in ("flip_prob", "clahe_prob", "noise_blur_prob", "mask_threshold"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                fail(f"{name} must be a probability in [0, 1], got {p}")
        if not 0.0 <= self.scale_range < 1.0:
            fail(f"scale_range must be in [0, 1), got {self.scale_range}")
        if not 0.0 <= self.angle <= 180.0:
            fail(f"angle must be in [0, 180] degrees, got {self.angle}")
        if not 0.0 <= self.translation <= 1.0:
            fail(f"translation must be in [0, 1], got {self.translation}")
        if not 0.0 <= self.warp <= 0.45:
            fail(f"warp must be in [0, 0.45] (larger can fold the warp triangle), got {self.warp}")
        lo, hi = self.illumination_clip
        if not 0.0 < lo <= hi:
            fail(f"illumination_clip must satisfy 0 < lo <= hi, got {self.illumination_clip}")
        lo, hi = self.lightness_clip
        if not 0.0 <= lo < hi <= 100.0:
            fail(f"lightness_clip must satisfy 0 <= lo < hi <= 100, got {self.lightness_clip}")
        lo, hi = self.background_zoom
        if not 0.0 < lo <= hi <= 1.0:
            fail(f"background_zoom must satisfy 0 < lo <= hi <= 1, got {self.background_zoom}")
        d = self.downsample_size
        if d:
            if not 8 <= d <= self.image_size:
                fail(f"downsample_size must be in [8, image_size={self.image_size}] or None, got {d}")
        size = d or self.image_size
        if self.clahe_tiles < 1 or size % self.clahe_tiles:
            fail(
                f"clahe_tiles={self.clahe_tiles} must be >= 1 and divide the CLAHE image size {size} "
                "(downsample_size, or image_size when downsampling is off)"
            )
        if self.clahe_clip_limit <= 0:
            fail(f"clahe_clip_limit must be > 0, got {self.clahe_clip_limit}")
        if self.noise_sigma < 0:
            fail(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        if not self.blur_kernel_sizes or any(k < 1 or k % 2 == 0 or k > 15 for k in self.blur_kernel_sizes):
            fail(f"blur_kernel_sizes must be odd sizes in [1, 15], got {self.blur_kernel_sizes}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None, **overrides: Any) -> "RenderConfig":
        """Builds a config from a mapping (e.g. ``ConfigDict.to_dict()``) plus overrides.

        A ``"preset"`` key (``"train"`` or ``"eval"``) selects the starting values.

        Raises:
          ValueError: on unknown keys or invalid values.
        """
        merged = dict(d or {})
        merged.update(overrides)
        preset = merged.pop("preset", "train")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise ValueError(f"Unknown RenderConfig keys {unknown}; valid keys: {sorted(names)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for key, value in merged.items():
            if isinstance(value, str) and "str" not in types[key]:  # an override that did not parse as a literal
                raise ValueError(f"RenderConfig {key}={value!r}: expected {types[key]}, not a string")
        for key in ("illumination_clip", "lightness_clip", "background_zoom"):
            if key in merged:
                merged[key] = tuple(float(v) for v in merged[key])
        if "blur_kernel_sizes" in merged:
            merged["blur_kernel_sizes"] = tuple(int(v) for v in merged["blur_kernel_sizes"])
        return dataclasses.replace(render_preset(preset), **merged)

    @property
    def canvas_size(self) -> int:
        """Side of the padded face canvas in face pixels (148 by default)."""
        return self.face_size + 2 * self.pad


# The reference's eval.py renders with harsher geometry (docs/reference.md 5.5).
PRESETS: dict[str, dict[str, Any]] = {
    "train": {},
    "eval": {"angle": 45.0, "translation": 0.3, "warp": 0.2},
    # Small pose changes only (a curriculum start, and the probe's middle setting).
    "mild": {"scale_range": 0.1, "angle": 10.0, "translation": 0.05, "warp": 0.02},
    # The paper-era train.py's generator (reference commit 53fd5e4): angle 45, else as "train".
    "paper2019": {"angle": 45.0},
    # The "train" geometry with every composite resampled through 16 px and given noise and
    # blur: the first setting whose converged baseline lands in the paper's baseline range
    # (docs/training.md section 0, the benchmark calibration).
    "degraded16": {"downsample_size": 16, "noise_blur_prob": 1.0},
    # No geometry or photometric augmentation: handy for previews and tests.
    "identity": {
        "scale_range": 0.0,
        "angle": 0.0,
        "translation": 0.0,
        "warp": 0.0,
        "flip_prob": 0.0,
        "clahe_prob": 0.0,
        "noise_blur_prob": 0.0,
    },
}


def render_preset(name: str, **overrides: Any) -> RenderConfig:
    """A named preset (a key of ``PRESETS``: "train", "eval", "mild", "identity", ...) with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown render preset {name!r}; use one of {sorted(PRESETS)}")
    return RenderConfig(**{**PRESETS[name], **overrides})


TRAIN_PRESET = render_preset("train")
EVAL_PRESET = render_preset("eval")


# ---------------------------------------------------------------------------
# Static resampling matrices (numpy, built once per config at trace time)
# ---------------------------------------------------------------------------


def _resample_matrix(n_out: int, n_in: int, extent: float, offset: float, renormalize: bool) -> np.ndarray:
    """(n_out, n_in) linear-resampling weights with a triangle filter widened when shrinking.

    Output pixel i covers ``[i, i + 1) * extent / n_out`` in a continuous
    coordinate in which input pixel j covers ``[offset + j, offset + j + 1)``.

    Args:
      n_out: output length.
      n_in: input length.
      extent: length of the output's span in input-pixel units.
      offset: where input pixel 0 starts in that span.
      renormalize: divide by the weights that fall inside the input (edge
        clamp); otherwise by the weights of the infinite lattice, so outside
        counts as zero (black padding).
    """
    step = extent / n_out
    support = max(step, 1.0)
    u = (np.arange(n_out) + 0.5) * step - offset  # output centres in input-pixel units
    lo = int(np.floor(u.min() - support)) - 1
    hi = int(np.ceil(u.max() + support)) + 1
    j = np.arange(lo, hi)
    w = np.maximum(0.0, 1.0 - np.abs((j[None, :] + 0.5) - u[:, None]) / support)
    total = w.sum(axis=1, keepdims=True)
    inside = (j >= 0) & (j < n_in)
    w_in = w[:, inside]
    denom = w_in.sum(axis=1, keepdims=True) if renormalize else total
    return (w_in / np.maximum(denom, 1e-12)).astype(np.float32)


def _blur_table(kernel_sizes: tuple[int, ...]) -> np.ndarray:
    """(len(kernel_sizes), K_max) Gaussian taps with OpenCV's default sigma per size."""
    k_max = max(kernel_sizes)
    table = np.zeros((len(kernel_sizes), k_max), np.float32)
    for i, k in enumerate(kernel_sizes):
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel with sigma <= 0
        x = np.arange(k) - (k - 1) / 2
        g = np.exp(-(x**2) / (2 * sigma**2))
        g /= g.sum()
        start = (k_max - k) // 2
        table[i, start : start + k] = g
    return table


def _resize_BHW(x_BHW: jax.Array, mat_y: np.ndarray, mat_x: np.ndarray) -> jax.Array:
    """Separable resampling with static matrices: ``mat_y @ x @ mat_x^T`` per image.

    Written as two plain 2-D matmuls with the batch folded into the rows,
    which XLA:CPU runs ~2x faster than the equivalent batched einsum.
    """
    b, h, w = x_BHW.shape
    o, p = mat_y.shape[0], mat_x.shape[0]
    y = (x_BHW.reshape(b * h, w) @ jnp.asarray(mat_x.T)).reshape(b, h, p)
    y = jnp.swapaxes(y, 1, 2).reshape(b * p, h) @ jnp.asarray(mat_y.T)
    return jnp.swapaxes(y.reshape(b, p, o), 1, 2)


# ---------------------------------------------------------------------------
# Colour: grey <-> Lab lightness (sRGB, D65), elementwise
# ---------------------------------------------------------------------------


def _srgb_to_linear(v: jax.Array) -> jax.Array:
    return jnp.where(v <= 0.04045, v / 12.92, ((jnp.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: jax.Array) -> jax.Array:
    return jnp.where(v <= 0.0031308, 12.92 * v, 1.055 * jnp.maximum(v, 0.0031308) ** (1 / 2.4) - 0.055)


def grey_to_lightness(v: jax.Array) -> jax.Array:
    """Lab L* (0..100) of a grey sRGB value in [0, 1] (R = G = B, so Y = linear value)."""
    y = _srgb_to_linear(jnp.clip(v, 0.0, 1.0))
    eps = (6.0 / 29.0) ** 3
    f = jnp.where(y > eps, jnp.cbrt(jnp.maximum(y, eps)), y / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    return 116.0 * f - 16.0


def lightness_to_grey(lightness: jax.Array) -> jax.Array:
    """Inverse of :func:`grey_to_lightness`."""
    f = (lightness + 16.0) / 116.0
    d = 6.0 / 29.0
    y = jnp.where(f > d, f**3, 3 * d**2 * (f - 4.0 / 29.0))
    return jnp.clip(_linear_to_srgb(jnp.clip(y, 0.0, 1.0)), 0.0, 1.0)


# XLA:CPU evaluates cbrt / pow slowly (~10 ms per 1M pixels each), and the
# renderer converts three images per sample. Both curves are smooth and
# one-dimensional, so a 2049-entry table with linear interpolation matches the
# exact functions to ~1e-4 at a fraction of the cost on every backend.
_LUT_SIZE = 2048


def _lut_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tables of :func:`grey_to_lightness` on [0, 1] and :func:`lightness_to_grey` on [0, 100] (numpy)."""
    v = np.linspace(0.0, 1.0, _LUT_SIZE + 1)
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    d = 6.0 / 29.0
    f = np.where(lin > d**3, np.cbrt(lin), lin / (3 * d**2) + 4.0 / 29.0)
    g2l = 116.0 * f - 16.0
    lightness = np.linspace(0.0, 100.0, _LUT_SIZE + 1)
    f = (lightness + 16.0) / 116.0
    y = np.clip(np.where(f > d, f**3, 3 * d**2 * (f - 4.0 / 29.0)), 0.0, 1.0)
    l2g = np.clip(np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055), 0.0, 1.0)
    return g2l.astype(np.float32), l2g.astype(np.float32)


_G2L_TABLE, _L2G_TABLE = _lut_tables()


def _lut(x: jax.Array, table: np.ndarray, lo: float, hi: float) -> jax.Array:
    """Piecewise-linear lookup of ``table`` (sampled uniformly on [lo, hi]) at ``x`` (clipped)."""
    n = table.shape[0] - 1
    y = (jnp.clip(x, lo, hi) - lo) * (n / (hi - lo))
    i = jnp.clip(jnp.floor(y), 0, n - 1).astype(jnp.int32)
    frac = y - i.astype(y.dtype)
    t = jnp.asarray(table)
    return t[i] * (1.0 - frac) + t[i + 1] * frac


def grey_to_lightness_fast(v: jax.Array) -> jax.Array:
    """Table version of :func:`grey_to_lightness` (max error ~1e-3 L)."""
    return _lut(v, _G2L_TABLE, 0.0, 1.0)


def lightness_to_grey_fast(lightness: jax.Array) -> jax.Array:
    """Table version of :func:`lightness_to_grey` (max error ~1e-4)."""
    return _lut(lightness, _L2G_TABLE, 0.0, 100.0)


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------

# Warp triangle (0,0), (0,H), (W,0) of the reference, in normalised coordinates.
_TRI_SRC = np.array([[-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])  # rows x, y, 1
_TRI_SRC_INV = np.linalg.inv(_TRI_SRC).astype(np.float32)


def _affine3(a: jax.Array, b: jax.Array, c: jax.Array, d: jax.Array, e: jax.Array, f: jax.Array) -> jax.Array:
    z, o = jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([a, b, c]), jnp.stack([d, e, f]), jnp.stack([z, z, o])])


def sample_transform(key: jax.Array, config: RenderConfig) -> jax.Array:
    """Forward 3x3 map (source -> output, normalised coordinates) for one sample.

    Composition order follows the reference: scale, flip, rotation,
    translation, warp (``M = W T R F S``).

    Args:
      key: PRNG key.
      config: renderer config.

    Returns:
      (3, 3) float32 matrix.
    """
    k_s, k_f, k_r, k_t, k_w = jax.random.split(key, 5)
    s = 1.0 + config.scale_range * jax.random.uniform(k_s, (), minval=-1.0, maxval=1.0)
    flip = jax.random.uniform(k_f, ()) < config.flip_prob
    fx = jnp.where(flip, -1.0, 1.0)
    a = math.radians(config.angle) * jax.random.uniform(k_r, (), minval=-1.0, maxval=1.0)
    # A shift of `translation * W` pixels is 2 * translation in normalised units.
    t = 2.0 * config.translation * jax.random.uniform(k_t, (2,), minval=-1.0, maxval=1.0)
    d = 2.0 * config.warp * jax.random.uniform(k_w, (2, 3), minval=-1.0, maxval=1.0)
    zero = jnp.zeros(())
    one = jnp.ones(())
    scale_m = _affine3(s, zero, zero, zero, s, zero)
    flip_m = _affine3(fx, zero, zero, zero, one, zero)
    ca, sa = jnp.cos(a), jnp.sin(a)
    rot_m = _affine3(ca, -sa, zero, sa, ca, zero)
    trans_m = _affine3(one, zero, t[0], zero, one, t[1])
    dst = jnp.asarray(_TRI_SRC[:2]) + d  # (2, 3) displaced triangle corners
    warp_23 = dst @ jnp.asarray(_TRI_SRC_INV)
    warp_m = jnp.concatenate([warp_23, jnp.array([[0.0, 0.0, 1.0]])], axis=0)
    return warp_m @ trans_m @ rot_m @ flip_m @ scale_m


def theta_from_transform(m_33: jax.Array) -> jax.Array:
    """``affine_grid`` theta (output -> source, (2, 3)) of a forward 3x3 affine map."""
    a = m_33[:2, :2]
    b = m_33[:2, 2]
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    inv = jnp.stack([jnp.stack([a[1, 1], -a[0, 1]]), jnp.stack([-a[1, 0], a[0, 0]])]) / det
    return jnp.concatenate([inv, (-(inv @ b))[:, None]], axis=1)


# ---------------------------------------------------------------------------
# Photometric steps
# ---------------------------------------------------------------------------


def _to_unit_float(x: jax.Array) -> jax.Array:
    """uint8 / bool / float input -> float32 in [0, 1]."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.float32)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def _masked_minmax_normalize(x_BHW: jax.Array, m_BHW: jax.Array) -> jax.Array:
    """(x - min) / (max - min) over pixels where ``m`` is true; unchanged when the mask is empty."""
    big = jnp.float32(1e6)
    mn = jnp.min(jnp.where(m_BHW, x_BHW, big), axis=(1, 2), keepdims=True)
    mx = jnp.max(jnp.where(m_BHW, x_BHW, -big), axis=(1, 2), keepdims=True)
    ok = mx > mn
    y = (x_BHW - mn) / jnp.where(ok, mx - mn, 1.0)
    return jnp.where(ok, jnp.clip(y, 0.0, 1.0), x_BHW)


def _close3(m_BHW: jax.Array) -> jax.Array:
    """Morphological closing with a 3x3 square (dilate, then erode), separable.

    Written with shifted slices: XLA:CPU's reduce_window is ~10x slower here.
    """

    def sep(x: jax.Array, op, pad_value: float) -> jax.Array:
        _, h, w = x.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0)), constant_values=pad_value)
        x = op(op(xp[:, 0:h], xp[:, 1 : h + 1]), xp[:, 2 : h + 2])
        xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1)), constant_values=pad_value)
        return op(op(xp[:, :, 0:w], xp[:, :, 1 : w + 1]), xp[:, :, 2 : w + 2])

    dilated = sep(m_BHW, jnp.maximum, 0.0)
    # Pad the erosion with ones so the image border is not eroded (the face may touch it).
    return sep(dilated, jnp.minimum, 1.0)


def _cumsum_last(x: jax.Array, block: int = 16) -> jax.Array:
    """Cumulative sum over the last axis via two small triangular matmuls.

    ``jnp.cumsum`` over 256 bins is ~4x slower on XLA:CPU; this is exact up to
    float rounding (sums of small integers here).
    """
    n = x.shape[-1]
    if n % block:
        return jnp.cumsum(x, axis=-1)
    lead = x.shape[:-1]
    xb = x.reshape(*lead, n // block, block)
    inner = jnp.einsum("...k,kj->...j", xb, jnp.asarray(np.triu(np.ones((block, block), np.float32))))
    totals = inner[..., -1]
    offsets = jnp.einsum("...k,kj->...j", totals, jnp.asarray(np.triu(np.ones((n // block, n // block), np.float32), 1)))
    return (inner + offsets[..., None]).reshape(x.shape)


def clahe(x_BHW: jax.Array, tiles: int, clip_limit: float) -> jax.Array:
    """Contrast-limited adaptive histogram equalisation with OpenCV's semantics.

    256-bin histograms per tile, clip limit ``max(int(clip * tile_area / 256), 1)``
    with the excess spread uniformly, and bilinear interpolation between the
    lookup tables of neighbouring tiles (cv2.createCLAHE(clip, (tiles, tiles))).

    Args:
      x_BHW: images in [0, 1]; H and W divisible by ``tiles``.
      tiles: tile grid size.
      clip_limit: OpenCV clip limit.

    Returns:
      Equalised images in [0, 1].
    """
    b, h, w = x_BHW.shape
    th, tw = h // tiles, w // tiles
    area = th * tw
    limit = float(max(int(clip_limit * area / 256.0), 1))
    q = jnp.clip(jnp.round(x_BHW * 255.0), 0, 255).astype(jnp.int32)  # (B,H,W)
    ty = np.arange(h) // th
    tx = np.arange(w) // tw
    tile_hw = (ty[:, None] * tiles + tx[None, :]).astype(np.int32)  # (H,W) static
    n_t = tiles * tiles
    b_idx = (np.arange(b) * n_t).astype(np.int32).reshape(b, 1, 1)
    flat = ((jnp.asarray(b_idx) + jnp.asarray(tile_hw)[None, :, :]) * 256 + q).reshape(-1)
    hist = jnp.zeros((b * n_t * 256,), jnp.float32).at[flat].add(1.0).reshape(b, n_t, 256)
    clipped = jnp.minimum(hist, limit)
    excess = jnp.sum(hist - clipped, axis=2, keepdims=True)
    hist = clipped + excess / 256.0
    lut = jnp.clip(jnp.round(_cumsum_last(hist) * (255.0 / area)), 0.0, 255.0)  # (B,T,256)
    lut_flat = lut.reshape(-1)

    # OpenCV interpolation: tile coordinate t = p / tile_size - 0.5.
    def axis_weights(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.arange(n) / size - 0.5
        t0 = np.floor(f).astype(np.int32)
        wgt = (f - t0).astype(np.float32)
        return np.clip(t0, 0, tiles - 1), np.clip(t0 + 1, 0, tiles - 1), wgt

    y0, y1, wy = axis_weights(h, th)
    x0, x1, wx = axis_weights(w, tw)

    def look(ty_: np.ndarray, tx_: np.ndarray) -> jax.Array:
        t = (ty_[:, None] * tiles + tx_[None, :]).astype(np.int32)
        idx = (jnp.asarray(b_idx) + jnp.asarray(t)[None, :, :]) * 256 + q
        return lut_flat[idx]

    wy_ = jnp.asarray(wy).reshape(1, h, 1)
    wx_ = jnp.asarray(wx).reshape(1, 1, w)
    top = look(y0, x0) * (1 - wx_) + look(y0, x1) * wx_
    bot = look(y1, x0) * (1 - wx_) + look(y1, x1) * wx_
    return (top * (1 - wy_) + bot * wy_) / 255.0


def _blur(x_BHW: jax.Array, taps_BK: jax.Array) -> jax.Array:
    """Separable per-image Gaussian blur, reflect-101 border (OpenCV's default)."""
    k = taps_BK.shape[1]
    r = k // 2
    _, h, w = x_BHW.shape
    xp = jnp.pad(x_BHW, ((0, 0), (r, r), (r, r)), mode="reflect")
    tap = [taps_BK[:, i].reshape(-1, 1, 1) for i in range(k)]
    rows = sum(tap[i] * xp[:, i : i + h, :] for i in range(k))
    return sum(tap[i] * rows[:, :, i : i + w] for i in range(k))


# ---------------------------------------------------------------------------
# The renderer
# ---------------------------------------------------------------------------


def prepare_faces(faces_BHW: jax.Array, masks_BHW: jax.Array, config: RenderConfig) -> tuple[jax.Array, jax.Array]:
    """The un-transformed faces: padded into the canvas, resampled to S, normalised.

    Args:
      faces_BHW: (B, face_size, face_size) dark faces (uint8 or float in [0, 1]).
      masks_BHW: (B, face_size, face_size) soft masks (uint8 0..255, bool or float).
      config: renderer config.

    Returns:
      ``(face_BSS, alpha_BSS)``: the premultiplied normalised face on black
      (what the STN target theta is defined on) and its soft mask, float32.
    """
    faces = _to_unit_float(faces_BHW)
    masks = _to_unit_float(masks_BHW)
    if faces.ndim != 3 or faces.shape[1:] != (config.face_size, config.face_size):
        raise ValueError(f"faces must be (B, {config.face_size}, {config.face_size}), got {faces.shape}")
    if masks.shape != faces.shape:
        raise ValueError(f"masks must have the faces' shape {faces.shape}, got {masks.shape}")
    s = config.image_size
    mat = _resample_matrix(s, config.face_size, float(config.canvas_size), float(config.pad), renormalize=False)
    face_s = _resize_BHW(faces, mat, mat)
    alpha_s = jnp.clip(_resize_BHW(masks, mat, mat), 0.0, 1.0)
    # The dark face is premultiplied by its soft mask; undo that before normalising.
    covered = alpha_s > 1e-3
    face_u = jnp.where(covered, face_s / jnp.where(covered, alpha_s, 1.0), 0.0)
    if config.normalize_face:
        face_u = _masked_minmax_normalize(face_u, alpha_s >= config.mask_threshold)
    face_u = jnp.clip(face_u, 0.0, 1.0)
    return face_u * alpha_s, alpha_s


def per_sample_keys(rng: jax.Array, batch: int) -> jax.Array:
    """One key per sample from a single key or a batch of keys (typed or raw uint32)."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    batch_shape = rng.shape if typed else rng.shape[:-1]
    if batch_shape == ():
        return jax.random.split(rng, batch)
    if batch_shape == (batch,):
        return rng
    raise ValueError(f"rng must be one PRNG key or a batch of {batch} keys, got shape {rng.shape}")


@functools.partial(jax.jit, static_argnames=("config",))
def render_batch(
    faces_BHW: jax.Array,
    masks_BHW: jax.Array,
    backgrounds: jax.Array,
    labels_B: jax.Array,
    rng: jax.Array,
    config: RenderConfig = TRAIN_PRESET,
) -> dict[str, jax.Array]:
    """Renders a batch of FERAtt synthetic samples (pure, jitted, vectorised).

    Args:
      faces_BHW: (B, 128, 128) dark faces, uint8 (or float in [0, 1]).
      masks_BHW: (B, 128, 128) soft face masks, uint8 0..255 (or float / bool).
      backgrounds: (B, Hb, Wb) grey or (B, Hb, Wb, 3) RGB background crops,
        uint8 or float in [0, 1]; any size (a random window is resampled to S).
      labels_B: (B,) integer labels (passed through as int32).
      rng: one PRNG key (split per sample) or a batch of B keys.
      config: :class:`RenderConfig` (static).

    Returns:
      Dict of float32 NHWC arrays in [0, 1] with S = ``config.image_size``:
      ``x_org`` (B, S, S, 3) the clean transformed face on black; ``image``
      (B, S, S, 3) the augmented composite; ``mask`` (B, S, S, 1) binary face
      mask; plus ``label`` (B,) int32 and ``theta`` (B, 2, 3) float32 with
      ``x_org == grid_sample(U, affine_grid(theta))`` for the un-transformed
      face ``U`` of :func:`prepare_faces`.
    """
    b = faces_BHW.shape[0]
    s = config.image_size
    keys = per_sample_keys(rng, b)
    sub = jax.vmap(lambda k: jax.random.split(k, 6))(keys)  # (B, 6) keys
    k_geo, k_bg, k_clahe, k_noise, k_blur, k_nb = (sub[:, i] for i in range(6))

    # --- geometry: one affine map per sample, theta = its inverse
    m_B33 = jax.vmap(lambda k: sample_transform(k, config))(k_geo)
    theta_B23 = jax.vmap(theta_from_transform)(m_B33).astype(jnp.float32)

    face_u, alpha_u = prepare_faces(faces_BHW, masks_BHW, config)
    warped = grid_sample(jnp.stack([face_u, alpha_u], axis=-1), affine_grid(theta_B23, s, s), mode="bilinear")
    x_org = warped[..., 0]  # premultiplied: exactly warp(U, theta)
    alpha = jnp.clip(warped[..., 1], 0.0, 1.0)
    mask = (alpha >= config.mask_threshold).astype(jnp.float32)
    if config.mask_cleanup:
        mask = _close3(mask)

    # --- background window: random zoom and position inside the crop (never past its edge)
    bg = _to_unit_float(backgrounds)
    if bg.ndim == 4:
        if bg.shape[-1] == 1:
            bg = bg[..., 0]
        else:
            wts = jnp.array([0.299, 0.587, 0.114], jnp.float32)
            bg = jnp.einsum("bhwc,c->bhw", bg[..., :3], wts)
    if bg.ndim != 3 or bg.shape[0] != b:
        raise ValueError(f"backgrounds must be (B, H, W) or (B, H, W, C) with B={b}, got {backgrounds.shape}")
    zlo, zhi = config.background_zoom

    def bg_theta(k: jax.Array) -> jax.Array:
        kz, ko = jax.random.split(k)
        z = jax.random.uniform(kz, (), minval=zlo, maxval=zhi)
        o = (1.0 - z) * jax.random.uniform(ko, (2,), minval=-1.0, maxval=1.0)
        return jnp.stack([jnp.stack([z, 0.0 * z, o[0]]), jnp.stack([0.0 * z, z, o[1]])])

    theta_bg = jax.vmap(bg_theta)(k_bg)
    # Bilinear with align_corners=False can read half a pixel past the crop at the
    # window edge; replicate-pad by one pixel so zero padding never darkens it.
    hb, wb = bg.shape[1], bg.shape[2]
    bg_p = jnp.pad(bg, ((0, 0), (1, 1), (1, 1)), mode="edge")
    # In the padded crop's normalised coordinates x_p = x * W / (W + 2) (same for y).
    theta_bg_p = theta_bg * jnp.array([[wb / (wb + 2.0)], [hb / (hb + 2.0)]], jnp.float32)[None, :, :]
    back = grid_sample(bg_p[..., None], affine_grid(theta_bg_p, s, s), mode="bilinear")[..., 0]
    if config.normalize_background:
        back = _masked_minmax_normalize(back, jnp.ones_like(back, dtype=bool))

    # --- illumination matching in Lab lightness over the face pixels
    covered = alpha > 1e-3
    face = jnp.where(covered, x_org / jnp.where(covered, alpha, 1.0), 0.0)
    if config.illumination:
        l_face = grey_to_lightness_fast(face)
        l_back = grey_to_lightness_fast(back)
        n = jnp.sum(mask, axis=(1, 2), keepdims=True)
        mean_f = jnp.sum(l_face * mask, axis=(1, 2), keepdims=True) / jnp.maximum(n, 1.0)
        mean_b = jnp.sum(l_back * mask, axis=(1, 2), keepdims=True) / jnp.maximum(n, 1.0)
        gain = jnp.clip(mean_b / jnp.maximum(mean_f, 1e-3), *config.illumination_clip)
        gain = jnp.where(n > 0, gain, 1.0)
        face = lightness_to_grey_fast(jnp.clip(l_face * gain, *config.lightness_clip))
    comp = back * (1.0 - alpha) + face * alpha

    # --- the reference's low-resolution augmentation chain: S -> d, CLAHE, noise + blur, d -> S
    d = config.downsample_size or s
    if d != s:
        down = _resample_matrix(d, s, float(s), 0.0, renormalize=True)
        comp = _resize_BHW(comp, down, down)
    if config.clahe_prob > 0:
        use = (jax.vmap(lambda k: jax.random.uniform(k, ()))(k_clahe) < config.clahe_prob).reshape(b, 1, 1)
        comp = jnp.where(use, clahe(comp, config.clahe_tiles, config.clahe_clip_limit), comp)
    if config.noise_blur_prob > 0:
        use = (jax.vmap(lambda k: jax.random.uniform(k, ()))(k_nb) < config.noise_blur_prob).reshape(b, 1, 1)
        noise = config.noise_sigma * jax.vmap(lambda k: jax.random.normal(k, (d, d)))(k_noise)
        noisy = jnp.clip(comp + noise, 0.0, 1.0)
        table = jnp.asarray(_blur_table(config.blur_kernel_sizes))
        pick = jax.vmap(lambda k: jax.random.randint(k, (), 0, len(config.blur_kernel_sizes)))(k_blur)
        comp = jnp.where(use, _blur(noisy, table[pick]), comp)
    if d != s:
        up = _resample_matrix(s, d, float(d), 0.0, renormalize=True)
        comp = _resize_BHW(comp, up, up)
    comp = jnp.clip(comp, 0.0, 1.0)

    def rgb(x_BHW: jax.Array) -> jax.Array:
        return jnp.broadcast_to(x_BHW[..., None], (*x_BHW.shape, 3)).astype(jnp.float32)

    return {
        "x_org": rgb(jnp.clip(x_org, 0.0, 1.0)),
        "image": rgb(comp),
        "mask": mask[..., None].astype(jnp.float32),
        "label": jnp.asarray(labels_B).astype(jnp.int32),
        "theta": theta_B23,
    }
