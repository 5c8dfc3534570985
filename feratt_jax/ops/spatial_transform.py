"""PyTorch-compatible spatial-transformer sampling (`F.affine_grid` / `F.grid_sample`) in JAX.

The reference (docs/reference.md 1.4, 2.1 STNloss) calls `F.affine_grid(theta, size)` and
`F.grid_sample(x, grid)` without `align_corners`, so under PyTorch >= 1.3 it runs with
`align_corners=False`, bilinear interpolation and `padding_mode='zeros'`. JAX has no built-in
for either call; this module reproduces exactly those semantics, in NHWC layout:

* Normalised coordinates: x runs along the width and y along the height; -1 and +1 are the
  *outer edges* of the border pixels (align_corners=False), so pixel i of a size-n axis has its
  centre at (2i + 1)/n - 1.
* `affine_grid` maps each output pixel centre (x, y, 1) through theta (2x3) to a source point.
* `grid_sample` turns a normalised source point back into pixel units with
  ``i = ((g + 1) * n - 1) / 2`` and reads the input there. Bilinear mode mixes the four
  neighbouring pixels; neighbours outside the image count as 0 (zero padding), and their weight is
  *not* renormalised, so the output fades to 0 near the border exactly as in PyTorch. Nearest mode
  rounds half to even (PyTorch uses `std::nearbyint`) and returns 0 outside the image.

Everything is vectorised (no Python loop over data) and jit-safe. Gradients flow to the image
and, in bilinear mode, to the grid / theta through the interpolation weights (the floor of the
coordinate is piecewise constant), which is what PyTorch's backward computes. In nearest mode the
grid gradient is zero, also as in PyTorch.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

__all__ = ["affine_grid", "grid_sample", "warp_affine"]

SampleMode = Literal["bilinear", "nearest"]


def _float_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Returns `dtype` if it is a floating type, else the default float type."""
    if jnp.issubdtype(dtype, jnp.floating):
        return dtype
    return jnp.zeros((), dtype=float).dtype


def _pixel_centres(n: int, dtype: jnp.dtype) -> jax.Array:
    """Normalised centres of the n pixels along one axis for align_corners=False.

    PyTorch computes these as ``linspace(-1, 1, n) * (n - 1) / n``; ``(2i + 1)/n - 1`` is the
    same value and is exact in floating point when n is a power of two (64 in FERAtt), which
    makes the identity transform reproduce the image bit for bit at those sizes.
    """
    i = jnp.arange(n, dtype=dtype)
    return (2.0 * i + 1.0) / n - 1.0


def affine_grid(theta_B23: jax.Array, height: int, width: int) -> jax.Array:
    """Sampling grid of `F.affine_grid(theta, (B, C, height, width), align_corners=False)`.

    Args:
      theta_B23: (B, 2, 3) affine matrices acting on normalised (x, y, 1) coordinates of the
        *output* image and giving normalised source coordinates (the "inverse" warp, as in
        PyTorch). Integer input is promoted to the default float type.
      height: output height H (static).
      width: output width W (static).

    Returns:
      (B, H, W, 2) grid; ``grid[b, h, w] = (x_src, y_src)`` in normalised coordinates, x first,
      like PyTorch's grid.
    """
    theta_B23 = jnp.asarray(theta_B23)
    theta_B23 = theta_B23.astype(_float_dtype(theta_B23.dtype))
    if theta_B23.ndim != 3 or theta_B23.shape[1:] != (2, 3):
        raise ValueError(f"theta must have shape (B, 2, 3), got {theta_B23.shape}")
    batch = theta_B23.shape[0]
    x_11W = _pixel_centres(width, theta_B23.dtype).reshape(1, 1, width)
    y_1H1 = _pixel_centres(height, theta_B23.dtype).reshape(1, height, 1)

    def row(r: int) -> jax.Array:
        # One output coordinate: theta[r, 0] * x + theta[r, 1] * y + theta[r, 2], with every
        # operand brought to rank 3 explicitly (rank promotion is disabled in the tests).
        t0, t1, t2 = (theta_B23[:, r, k].reshape(batch, 1, 1) for k in range(3))
        return t0 * x_11W + t1 * y_1H1 + t2

    return jnp.stack([row(0), row(1)], axis=-1)


def _gather_BHWC(x_BHWC: jax.Array, iy_BHW: jax.Array, ix_BHW: jax.Array) -> jax.Array:
    """Reads x[b, iy[b, h, w], ix[b, h, w], :] for every output pixel (indices already valid)."""
    return jax.vmap(lambda img_HWC, iy_hw, ix_hw: img_HWC[iy_hw, ix_hw])(x_BHWC, iy_BHW, ix_BHW)


def _corner(x_BHWC: jax.Array, iy_BHW: jax.Array, ix_BHW: jax.Array) -> jax.Array:
    """Pixel values at integer-valued float coordinates, 0 where the coordinate is outside.

    The coordinates are clipped before the integer cast, so that far-away points (or huge
    theta values) never overflow the int32 conversion; the validity mask zeroes them afterwards.
    """
    height, width = x_BHWC.shape[1], x_BHWC.shape[2]
    valid_BHW = (ix_BHW >= 0) & (ix_BHW <= width - 1) & (iy_BHW >= 0) & (iy_BHW <= height - 1)
    ix_int = jnp.clip(ix_BHW, 0, width - 1).astype(jnp.int32)
    iy_int = jnp.clip(iy_BHW, 0, height - 1).astype(jnp.int32)
    values_BHWC = _gather_BHWC(x_BHWC, iy_int, ix_int)
    return jnp.where(valid_BHW[..., None], values_BHWC, jnp.zeros((), values_BHWC.dtype))


def grid_sample(
    x_BHWC: jax.Array, grid_BHW2: jax.Array, *, mode: SampleMode = "bilinear"
) -> jax.Array:
    """`F.grid_sample(x, grid, mode, padding_mode='zeros', align_corners=False)` in NHWC.

    Args:
      x_BHWC: (B, H_in, W_in, C) input image.
      grid_BHW2: (B, H_out, W_out, 2) normalised source coordinates (x, y), e.g. from
        `affine_grid`.
      mode: "bilinear" (default, differentiable in x and grid) or "nearest" (round half to
        even; differentiable in x only, as in PyTorch).

    Returns:
      (B, H_out, W_out, C). Nearest mode keeps x's dtype (values are copied, so uint8 images and
      label maps stay exact). Bilinear mode computes in the promotion of x's and the grid's float
      types and returns x's dtype when x is floating, else that float type.
    """
    x_BHWC = jnp.asarray(x_BHWC)
    grid_BHW2 = jnp.asarray(grid_BHW2)
    if x_BHWC.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C), got {x_BHWC.shape}")
    if grid_BHW2.ndim != 4 or grid_BHW2.shape[-1] != 2 or grid_BHW2.shape[0] != x_BHWC.shape[0]:
        raise ValueError(
            f"grid must be (B, H_out, W_out, 2) with B={x_BHWC.shape[0]}, got {grid_BHW2.shape}"
        )
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    height, width = x_BHWC.shape[1], x_BHWC.shape[2]

    compute_dtype = jnp.promote_types(_float_dtype(x_BHWC.dtype), _float_dtype(grid_BHW2.dtype))
    grid_BHW2 = grid_BHW2.astype(compute_dtype)
    # Un-normalise to pixel units, with PyTorch's exact formula for align_corners=False.
    ix_BHW = ((grid_BHW2[..., 0] + 1.0) * width - 1.0) / 2.0
    iy_BHW = ((grid_BHW2[..., 1] + 1.0) * height - 1.0) / 2.0

    if mode == "nearest":
        # jnp.round rounds half to even, like std::nearbyint in PyTorch's kernel.
        return _corner(x_BHWC, jnp.round(iy_BHW), jnp.round(ix_BHW))

    out_dtype = x_BHWC.dtype if jnp.issubdtype(x_BHWC.dtype, jnp.floating) else compute_dtype
    x_c = x_BHWC.astype(compute_dtype)
    # floor() has zero derivative, so d(out)/d(grid) flows only through the weights below,
    # which is what PyTorch's grid_sampler backward computes.
    ix0 = jnp.floor(ix_BHW)
    iy0 = jnp.floor(iy_BHW)
    ix1 = ix0 + 1.0
    iy1 = iy0 + 1.0
    w_nw = ((ix1 - ix_BHW) * (iy1 - iy_BHW))[..., None]
    w_ne = ((ix_BHW - ix0) * (iy1 - iy_BHW))[..., None]
    w_sw = ((ix1 - ix_BHW) * (iy_BHW - iy0))[..., None]
    w_se = ((ix_BHW - ix0) * (iy_BHW - iy0))[..., None]
    # Same accumulation order as PyTorch (nw, ne, sw, se).
    out = (
        _corner(x_c, iy0, ix0) * w_nw
        + _corner(x_c, iy0, ix1) * w_ne
        + _corner(x_c, iy1, ix0) * w_sw
        + _corner(x_c, iy1, ix1) * w_se
    )
    return out.astype(out_dtype)


def warp_affine(
    x_BHWC: jax.Array,
    theta_B23: jax.Array,
    *,
    mode: SampleMode = "bilinear",
    output_size: tuple[int, int] | None = None,
) -> jax.Array:
    """``grid_sample(x, affine_grid(theta, H, W))``: the STN warp of the reference.

    Args:
      x_BHWC: (B, H, W, C) image.
      theta_B23: (B, 2, 3) normalised affine matrices (output -> source), PyTorch convention.
      mode: "bilinear" or "nearest", see `grid_sample`.
      output_size: (H_out, W_out); defaults to the input's (H, W), as in the reference.

    Returns:
      (B, H_out, W_out, C) warped image.
    """
    x_BHWC = jnp.asarray(x_BHWC)
    height, width = output_size if output_size is not None else x_BHWC.shape[1:3]
    return grid_sample(x_BHWC, affine_grid(theta_B23, height, width), mode=mode)
