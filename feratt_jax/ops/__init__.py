"""Array operations that JAX does not provide out of the box.

`spatial_transform` holds PyTorch-compatible `affine_grid` / `grid_sample`, used by the STN
variants, the STN loss and the synthetic-data renderer.
"""

from feratt_jax.ops.spatial_transform import affine_grid, grid_sample, warp_affine

__all__ = ["affine_grid", "grid_sample", "warp_affine"]
