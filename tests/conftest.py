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


import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import gc  # noqa: E402

import pytest  # noqa: E402


def _libc_malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_malloc_trim()


@pytest.fixture(autouse=True)
def _release_compiled_programs_after_each_test():
    """Drop compiled executables and dead arrays after each test.

    Many tests jit their own closures over the full 45M-parameter model;
    JAX keeps every such executable (and its constants) alive, and within
    one xdist worker they reached 10-13 GB, twice OOM-killing a worker on
    this 24 GB machine. The persistent compilation cache above makes the
    recompiles this causes cheap.

    Freed memory is then handed back to the OS: glibc keeps it in the
    process heap otherwise, and a worker that had trained FERAtt in process
    stayed at 8.5 GB resident after clearing (0.9 GB after the trim) while
    the other worker needed the room.
    """
    yield
    jax.clear_caches()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
