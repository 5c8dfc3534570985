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

# Many tests compile the same train/eval steps (each trainer run jits anew);
# a per-session persistent compilation cache turns the repeats into loads.
import tempfile  # noqa: E402

_compile_cache = tempfile.mkdtemp(prefix="feratt_jax_compile_cache_")
jax.config.update("jax_compilation_cache_dir", _compile_cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _release_compiled_programs_after_each_test():
    """Drop compiled executables and dead arrays after each test.

    Many tests jit their own closures over the full 45M-parameter model;
    JAX keeps every such executable (and its constants) alive, and within
    one xdist worker they reached 10-13 GB, twice OOM-killing a worker on
    this 24 GB machine. The persistent compilation cache above makes the
    recompiles this causes cheap.
    """
    yield
    jax.clear_caches()
    gc.collect()
