"""Test-wide JAX set-up.

Eight fake CPU devices are forced before JAX is imported anywhere, so the
sharded code paths run on a laptop or CI machine without accelerators.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Catch silent broadcasting mistakes (nanodo does the same in its tests).
jax.config.update("jax_numpy_rank_promotion", "raise")
