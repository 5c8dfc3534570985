"""Tests of the jitted compositing renderer.

All renders in this file (and in test_pipeline.py) use batch 16, per-sample
keys and the train preset at 64 px where possible, so XLA compiles the
renderer once per test session (~3 s on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feratt_jax.data import synthfaces
from feratt_jax.data.render import (
    EVAL_PRESET,
    TRAIN_PRESET,
    RenderConfig,
    clahe,
    grey_to_lightness,
    lightness_to_grey,
    prepare_faces,
    render_batch,
    render_preset,
)

B = 16


@pytest.fixture(scope="module")
def inputs():
    recs = [synthfaces.generate_face(s, c, 0) for s in range(2) for c in range(8)]
    bank = synthfaces.stack_records(recs)
    rng = np.random.default_rng(0)
    # Smooth random backgrounds (no pool needed here): low-res noise upsampled.
    bg = np.kron(rng.integers(0, 256, size=(B, 8, 8)), np.ones((1, 8, 8))).astype(np.uint8)
    keys = jax.random.split(jax.random.key(42), B)
    return bank, bg, keys


@pytest.fixture(scope="module")
def rendered(inputs):
    bank, bg, keys = inputs
    return jax.device_get(render_batch(bank["image"], bank["mask"], bg, bank["label"], keys, TRAIN_PRESET))


def _torch_style_warp_np(img_hw: np.ndarray, theta_23: np.ndarray) -> np.ndarray:
    """Independent numpy re-implementation of PyTorch's affine_grid + grid_sample.

    align_corners=False, bilinear, zero padding; written from the PyTorch docs.
    """
    h, w = img_hw.shape
    xs = (2 * np.arange(w) + 1) / w - 1
    ys = (2 * np.arange(h) + 1) / h - 1
    gx = theta_23[0, 0] * xs[None, :] + theta_23[0, 1] * ys[:, None] + theta_23[0, 2]
    gy = theta_23[1, 0] * xs[None, :] + theta_23[1, 1] * ys[:, None] + theta_23[1, 2]
    ix = ((gx + 1) * w - 1) / 2
    iy = ((gy + 1) * h - 1) / 2
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    out = np.zeros((h, w))
    for dy in (0, 1):
        for dx in (0, 1):
            xx, yy = x0 + dx, y0 + dy
            wgt = (1 - np.abs(ix - xx)) * (1 - np.abs(iy - yy))
            ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            out += np.where(ok, img_hw[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0) * wgt
    return out


def test_output_shapes_ranges_dtypes(rendered):
    s = TRAIN_PRESET.image_size
    shapes = {"x_org": (B, s, s, 3), "image": (B, s, s, 3), "mask": (B, s, s, 1), "label": (B,), "theta": (B, 2, 3)}
    for key, shape in shapes.items():
        assert rendered[key].shape == shape, key
    for key in ("x_org", "image", "mask", "theta"):
        assert rendered[key].dtype == np.float32, key
    assert rendered["label"].dtype == np.int32
    np.testing.assert_array_equal(rendered["label"], np.tile(np.arange(8), 2))
    for key in ("x_org", "image", "mask"):
        assert np.all(np.isfinite(rendered[key]))
        assert rendered[key].min() >= 0.0 and rendered[key].max() <= 1.0, key
    assert set(np.unique(rendered["mask"])) <= {0.0, 1.0}
    # Grey: the three channels are equal.
    np.testing.assert_array_equal(rendered["image"][..., 0], rendered["image"][..., 2])
    # Faces are visible and masked: x_org is black off the face, the mask is non-trivial.
    frac = rendered["mask"].mean(axis=(1, 2, 3))
    assert np.all(frac > 0.05) and np.all(frac < 0.9)
    outside = rendered["mask"][..., 0] == 0
    assert rendered["x_org"][..., 0][outside].mean() < 0.02


def test_theta_reproduces_x_org_through_stn_sampler(inputs, rendered):
    bank, _, _ = inputs
    face_u, _ = prepare_faces(bank["image"], bank["mask"], TRAIN_PRESET)
    face_u = np.asarray(face_u)
    m = rendered["mask"][..., 0] > 0
    for i in range(B):
        warped = _torch_style_warp_np(face_u[i], rendered["theta"][i])
        err = np.abs(warped - rendered["x_org"][i, ..., 0])
        assert err[m[i]].mean() < 0.02, i
        assert err.mean() < 0.02, i
    # Same through the project's STN sampler.
    from feratt_jax.ops.spatial_transform import warp_affine

    warped = np.asarray(warp_affine(jnp.asarray(face_u)[..., None], jnp.asarray(rendered["theta"])))[..., 0]
    assert np.abs(warped - rendered["x_org"][..., 0]).mean() < 0.02


def test_theta_matches_pytorch(inputs, rendered):
    torch = pytest.importorskip("torch")
    bank, _, _ = inputs
    face_u, _ = prepare_faces(bank["image"], bank["mask"], TRAIN_PRESET)
    x = torch.from_numpy(np.array(face_u)[:, None])
    theta = torch.from_numpy(np.array(rendered["theta"]))
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    err = np.abs(out[:, 0].numpy() - rendered["x_org"][..., 0])
    assert err.mean() < 0.02 and err.max() < 1e-3


def test_theta_is_the_inverse_map(inputs, rendered):
    """The forward map inv(theta) moves the face's centroid to where x_org shows it."""
    bank, _, _ = inputs
    _, alpha = prepare_faces(bank["image"], bank["mask"], TRAIN_PRESET)
    alpha = np.asarray(alpha)
    s = TRAIN_PRESET.image_size
    c = (2 * np.arange(s) + 1) / s - 1  # pixel centres in normalised units

    def centroid(m):
        return np.array([(m.sum(0) * c).sum(), (m.sum(1) * c).sum()]) / m.sum()

    checked = 0
    for i in range(B):
        mask_out = rendered["mask"][i, ..., 0]
        if mask_out[0].any() or mask_out[-1].any() or mask_out[:, 0].any() or mask_out[:, -1].any():
            continue  # face cut by the frame: its visible centroid is biased
        theta = np.vstack([rendered["theta"][i], [0, 0, 1]])
        fwd = np.linalg.inv(theta)
        expect = (fwd @ np.append(centroid(alpha[i]), 1.0))[:2]
        assert np.linalg.norm(expect - centroid(mask_out)) < 0.05, i
        # The reference's defect (theta used as the forward map) would put it elsewhere.
        wrong = (theta @ np.append(centroid(alpha[i]), 1.0))[:2]
        checked += np.linalg.norm(wrong - centroid(mask_out)) > 0.05
    assert checked >= 3


def test_identity_preset_is_the_untransformed_face(inputs):
    bank, bg, keys = inputs
    cfg = render_preset("identity", illumination=False)
    out = jax.device_get(render_batch(bank["image"], bank["mask"], bg, bank["label"], keys, cfg))
    np.testing.assert_allclose(out["theta"], np.tile(np.eye(2, 3, dtype=np.float32), (B, 1, 1)), atol=1e-6)
    face_u, _ = prepare_faces(bank["image"], bank["mask"], cfg)
    np.testing.assert_allclose(out["x_org"][..., 0], np.asarray(face_u), atol=1e-5)


def test_render_is_deterministic_and_keyed(inputs, rendered):
    bank, bg, keys = inputs
    again = jax.device_get(render_batch(bank["image"], bank["mask"], bg, bank["label"], keys, TRAIN_PRESET))
    for k in rendered:
        np.testing.assert_array_equal(rendered[k], again[k])
    other = jax.device_get(
        render_batch(bank["image"], bank["mask"], bg, bank["label"], jax.random.split(jax.random.key(7), B), TRAIN_PRESET)
    )
    assert not np.allclose(rendered["theta"], other["theta"])


def test_sharded_batch_renders_the_same(inputs, rendered):
    bank, bg, keys = inputs
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    args = [jax.device_put(x, shard) for x in (bank["image"], bank["mask"], bg, bank["label"], keys)]
    out = jax.device_get(render_batch(*args, TRAIN_PRESET))
    for k in ("theta", "mask", "label"):
        np.testing.assert_array_equal(out[k], rendered[k])
    np.testing.assert_allclose(out["image"], rendered["image"], atol=1e-5)


def test_rng_forms(inputs):
    from feratt_jax.data.render import per_sample_keys

    assert per_sample_keys(jax.random.key(0), 4).shape == (4,)
    assert per_sample_keys(jax.random.PRNGKey(0), 4).shape == (4, 2)
    assert per_sample_keys(jax.random.split(jax.random.key(0), 4), 4).shape == (4,)
    with pytest.raises(ValueError, match="batch of 4 keys"):
        per_sample_keys(jax.random.split(jax.random.key(0), 3), 4)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="flip_prob must be a probability"):
        RenderConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="clahe_prob must be a probability"):
        RenderConfig(clahe_prob=-0.1)
    with pytest.raises(ValueError, match="image_size 50 is not supported"):
        RenderConfig(image_size=50)
    with pytest.raises(ValueError, match="clahe_tiles"):
        RenderConfig(clahe_tiles=5)
    with pytest.raises(ValueError, match="downsample_size"):
        RenderConfig(image_size=64, downsample_size=96)
    with pytest.raises(ValueError, match="Unknown RenderConfig keys"):
        RenderConfig.from_dict({"flip_probability": 0.5})
    with pytest.raises(ValueError, match="unknown render preset"):
        render_preset("harsh")


def test_presets_and_from_dict():
    assert (EVAL_PRESET.angle, EVAL_PRESET.translation, EVAL_PRESET.warp) == (45.0, 0.3, 0.2)
    assert (TRAIN_PRESET.angle, TRAIN_PRESET.translation, TRAIN_PRESET.warp) == (30.0, 0.2, 0.1)
    cfg = RenderConfig.from_dict({"preset": "eval", "flip_prob": 0.0, "background_zoom": [0.5, 1.0]})
    assert cfg.angle == 45.0 and cfg.flip_prob == 0.0 and cfg.background_zoom == (0.5, 1.0)
    assert RenderConfig.from_dict({}) == TRAIN_PRESET
    hash(cfg)  # static jit argument


def test_lightness_roundtrip_matches_skimage():
    from skimage.color import rgb2lab

    v = np.linspace(0, 1, 11, dtype=np.float32)
    lab = rgb2lab(np.repeat(v[:, None], 3, axis=1)[None])[0, :, 0]
    np.testing.assert_allclose(np.asarray(grey_to_lightness(jnp.asarray(v))), lab, atol=1e-3)
    np.testing.assert_allclose(np.asarray(lightness_to_grey(grey_to_lightness(jnp.asarray(v)))), v, atol=1e-5)


def test_clahe_raises_local_contrast():
    rng = np.random.default_rng(0)
    x = 0.45 + 0.1 * rng.random((2, 48, 48)).astype(np.float32)  # low contrast
    y = np.asarray(jax.jit(lambda a: clahe(a, 8, 2.0))(jnp.asarray(x)))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert y.std() > 2 * x.std()
    # Monotone within a tile: ordering of pixel values is preserved where tiles agree.
    flat_x, flat_y = x[0, 20:28, 20:28].ravel(), y[0, 20:28, 20:28].ravel()
    order = np.argsort(flat_x)
    assert np.all(np.diff(flat_y[order]) >= -0.08)


def test_rgb_background_is_accepted(inputs):
    bank, bg, keys = inputs
    # A grey background given as RGB renders like the grey one (identity preset keeps it cheap to compare).
    cfg = render_preset("identity", illumination=False)  # same config as above: no recompile
    grey = render_batch(bank["image"], bank["mask"], bg, bank["label"], keys, cfg)
    rgb = render_batch(bank["image"], bank["mask"], np.repeat(bg[..., None], 3, -1), bank["label"], keys, cfg)
    np.testing.assert_allclose(np.asarray(grey["image"]), np.asarray(rgb["image"]), atol=2e-3)


def test_lightness_tables_match_exact_curves():
    from feratt_jax.data.render import grey_to_lightness_fast, lightness_to_grey_fast

    v = jnp.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(np.asarray(grey_to_lightness_fast(v)), np.asarray(grey_to_lightness(v)), atol=2e-2)
    lightness = jnp.linspace(0.0, 100.0, 1001)
    np.testing.assert_allclose(
        np.asarray(lightness_to_grey_fast(lightness)), np.asarray(lightness_to_grey(lightness)), atol=1e-3
    )
