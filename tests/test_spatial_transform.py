"""Tests for feratt_jax.ops.spatial_transform (PyTorch affine_grid / grid_sample semantics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feratt_jax.ops import affine_grid, grid_sample, warp_affine

IDENTITY_23 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


def _theta(tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
    """(1, 2, 3) pure translation in normalised units."""
    theta = IDENTITY_23.copy()
    theta[0, 2] = tx
    theta[1, 2] = ty
    return theta[None]


def _image(values: list[list[float]]) -> jnp.ndarray:
    """A (1, H, W, 1) image from a nested list."""
    return jnp.asarray(np.asarray(values, np.float32)[None, :, :, None])


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_affine_grid_identity_is_pixel_centres():
    # align_corners=False: centres of 4 pixels along x are -3/4, -1/4, 1/4, 3/4; of 2 along y
    # -1/2, 1/2.
    grid = np.asarray(affine_grid(jnp.asarray(IDENTITY_23[None]), 2, 4))
    assert grid.shape == (1, 2, 4, 2)
    np.testing.assert_array_equal(grid[0, 0, :, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_array_equal(grid[0, :, 0, 1], [-0.5, 0.5])
    np.testing.assert_array_equal(grid[0, 1, :, 1], [0.5] * 4)


def test_affine_grid_general_theta_by_hand():
    # grid = theta @ (x, y, 1) at the single pixel centre of a 1x1 output, (0, 0).
    theta = np.array([[[2.0, 3.0, 0.25], [5.0, 7.0, -0.5]]], np.float32)
    grid = np.asarray(affine_grid(jnp.asarray(theta), 1, 1))
    np.testing.assert_allclose(grid[0, 0, 0], [0.25, -0.5])
    # 1x2 output: x centres -1/2, 1/2, y centre 0 -> x' = 2x + 0.25, y' = 5x - 0.5.
    grid = np.asarray(affine_grid(jnp.asarray(theta), 1, 2))
    np.testing.assert_allclose(grid[0, 0, :, 0], [-0.75, 1.25])
    np.testing.assert_allclose(grid[0, 0, :, 1], [-3.0, 2.0])


def test_half_pixel_shift_2x2_by_hand():
    # Shift the sampling points right by half a pixel: in a width-2 image one pixel is 2/2 = 1
    # normalised unit, so tx = 0.5. Output (h, w) reads source column w + 0.5:
    #   w=0 -> halfway between columns 0 and 1; w=1 -> halfway between column 1 and the zero pad.
    img = _image([[1.0, 2.0], [3.0, 4.0]])
    out = np.asarray(warp_affine(img, jnp.asarray(_theta(tx=0.5))))[0, :, :, 0]
    expected = [[(1 + 2) / 2, (2 + 0) / 2], [(3 + 4) / 2, (4 + 0) / 2]]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_half_pixel_shift_3x3_both_axes_by_hand():
    # 3x3 image; shift by +1/2 pixel in x (tx = 0.5 * 2/3) and -1/2 pixel in y (ty = -0.5 * 2/3).
    # Output (h, w) samples the source at (row h - 1/2, col w + 1/2): the mean of the 2x2 block of
    # rows {h-1, h} and columns {w, w+1}, with zeros outside the image.
    vals = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    img = _image(vals)
    out = np.asarray(warp_affine(img, jnp.asarray(_theta(tx=1.0 / 3.0, ty=-1.0 / 3.0))))
    expected = [
        [(0 + 0 + 1 + 2) / 4, (0 + 0 + 2 + 3) / 4, (0 + 0 + 3 + 0) / 4],
        [(1 + 2 + 4 + 5) / 4, (2 + 3 + 5 + 6) / 4, (3 + 0 + 6 + 0) / 4],
        [(4 + 5 + 7 + 8) / 4, (5 + 6 + 8 + 9) / 4, (6 + 0 + 9 + 0) / 4],
    ]
    np.testing.assert_allclose(out[0, :, :, 0], expected, rtol=0, atol=1e-5)


def test_quarter_pixel_bilinear_weights_by_hand():
    # 1x2 image [a, b] sampled by a 1x1 output at source column 0.25 (between the pixel centres):
    # ix = ((x + 1) * 2 - 1) / 2 = 0.25  <=>  x = -0.25. Row: the single row, iy = 0 (y = 0).
    img = _image([[10.0, 30.0]])
    grid = jnp.asarray(np.array([-0.25, 0.0], np.float32).reshape(1, 1, 1, 2))
    out = float(np.asarray(grid_sample(img, grid))[0, 0, 0, 0])
    assert out == pytest.approx(0.75 * 10.0 + 0.25 * 30.0, abs=1e-5)
    # Nearest: 0.25 rounds to column 0; 0.5 (x = 0) rounds half to even -> column 0; 0.75 -> 1.
    for x, want in ((-0.25, 10.0), (0.0, 10.0), (0.25, 30.0)):
        g = jnp.asarray(np.array([x, 0.0], np.float32).reshape(1, 1, 1, 2))
        got = float(np.asarray(grid_sample(img, g, mode="nearest"))[0, 0, 0, 0])
        assert got == want, (x, got)


def test_identity_theta_reproduces_image_exactly():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(2, 64, 64, 3)).astype(np.float32))
    theta = jnp.asarray(np.repeat(IDENTITY_23[None], 2, axis=0))
    for mode in ("bilinear", "nearest"):
        out = warp_affine(x, theta, mode=mode)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_identity_theta_odd_size_close():
    # For sizes that are not powers of two the pixel centres are not exact binary fractions.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(size=(1, 5, 3, 2)).astype(np.float32))
    out = warp_affine(x, jnp.asarray(IDENTITY_23[None]))
    np.testing.assert_allclose(np.asarray(out), np.asarray(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_integer_translation_shifts_with_zero_fill(mode):
    # theta translation (tx, ty) = (2 dx / W, 2 dy / H) makes out[h, w] = x[h + dy, w + dx],
    # 0 outside. Compared with a direct numpy slice.
    rng = np.random.default_rng(2)
    height, width, dx, dy = 8, 4, 1, -2
    x = rng.uniform(1.0, 2.0, size=(1, height, width, 3)).astype(np.float32)
    out = np.asarray(
        warp_affine(jnp.asarray(x), jnp.asarray(_theta(2 * dx / width, 2 * dy / height)), mode=mode)
    )
    expected = np.zeros_like(x)
    for h in range(height):
        for w in range(width):
            if 0 <= h + dy < height and 0 <= w + dx < width:
                expected[0, h, w] = x[0, h + dy, w + dx]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_far_outside_is_zero_and_finite():
    x = jnp.ones((1, 4, 4, 1), jnp.float32)
    out = warp_affine(x, jnp.asarray(_theta(tx=1e9, ty=-1e9)))
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_output_size_and_dtypes():
    x = jnp.asarray(np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1))
    theta = jnp.asarray(np.repeat(IDENTITY_23[None], 2, axis=0))
    out = warp_affine(x, theta, mode="nearest", output_size=(2, 3))
    assert out.shape == (2, 2, 3, 1) and out.dtype == jnp.uint8
    bil = warp_affine(x, theta)
    assert jnp.issubdtype(bil.dtype, jnp.floating)
    np.testing.assert_array_equal(np.asarray(bil), np.asarray(x).astype(np.float32))


def test_jit_matches_eager():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)).astype(np.float32))
    theta = jnp.asarray((IDENTITY_23[None] + 0.3 * rng.normal(size=(2, 2, 3))).astype(np.float32))
    jitted = jax.jit(warp_affine, static_argnames=("mode", "output_size"))
    for mode in ("bilinear", "nearest"):
        np.testing.assert_allclose(
            np.asarray(jitted(x, theta, mode=mode)),
            np.asarray(warp_affine(x, theta, mode=mode)),
            rtol=1e-6,
            atol=1e-6,
        )


# ---------------------------------------------------------------------------------------------
# Parity with PyTorch
# ---------------------------------------------------------------------------------------------


def _random_case(seed: int, batch=3, channels=2, height=7, width=6):
    rng = np.random.default_rng(seed)
    x_nchw = rng.normal(size=(batch, channels, height, width)).astype(np.float32)
    theta = (IDENTITY_23[None] + 0.5 * rng.normal(size=(batch, 2, 3))).astype(np.float32)
    return x_nchw, theta


@pytest.mark.parametrize("out_hw", [(7, 6), (5, 9)])
def test_affine_grid_matches_torch(out_hw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    _, theta = _random_case(4)
    ref = F.affine_grid(torch.from_numpy(theta), (3, 2, *out_hw), align_corners=False).numpy()
    got = np.asarray(affine_grid(jnp.asarray(theta), *out_hw))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("seed", [5, 6])
def test_grid_sample_matches_torch(mode, seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x_nchw, theta = _random_case(seed)
    for out_hw in ((7, 6), (4, 11)):
        grid = F.affine_grid(torch.from_numpy(theta), (3, 2, *out_hw), align_corners=False)
        ref = F.grid_sample(
            torch.from_numpy(x_nchw), grid, mode=mode, padding_mode="zeros", align_corners=False
        ).numpy()
        got = np.asarray(
            grid_sample(
                jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), jnp.asarray(grid.numpy()), mode=mode
            )
        )
        np.testing.assert_allclose(got, ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
        # The full warp (our own grid) agrees too.
        got_warp = np.asarray(
            warp_affine(
                jnp.asarray(x_nchw.transpose(0, 2, 3, 1)),
                jnp.asarray(theta),
                mode=mode,
                output_size=out_hw,
            )
        )
        if mode == "bilinear":
            np.testing.assert_allclose(got_warp, ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_gradients_match_torch(mode):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x_nchw, theta = _random_case(7)
    rng = np.random.default_rng(8)
    cotangent_nchw = rng.normal(size=x_nchw.shape).astype(np.float32)

    x_t = torch.from_numpy(x_nchw).requires_grad_(True)
    th_t = torch.from_numpy(theta).requires_grad_(True)
    grid_t = F.affine_grid(th_t, x_t.shape, align_corners=False)
    out_t = F.grid_sample(x_t, grid_t, mode=mode, padding_mode="zeros", align_corners=False)
    (out_t * torch.from_numpy(cotangent_nchw)).sum().backward()

    cot_nhwc = jnp.asarray(cotangent_nchw.transpose(0, 2, 3, 1))

    def objective(x_bhwc, th):
        return jnp.sum(warp_affine(x_bhwc, th, mode=mode) * cot_nhwc)

    gx, gth = jax.grad(objective, argnums=(0, 1))(
        jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), jnp.asarray(theta)
    )
    np.testing.assert_allclose(
        np.asarray(gx), x_t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(gth), th_t.grad.numpy(), rtol=1e-4, atol=1e-4)
    if mode == "bilinear":
        assert np.abs(np.asarray(gth)).max() > 1e-3  # the theta gradient is really there
    else:
        np.testing.assert_array_equal(np.asarray(gth), 0.0)
