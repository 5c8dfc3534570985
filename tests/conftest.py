"""Test-wide JAX set-up.

Eight fake CPU devices are forced before JAX is imported anywhere, so the
sharded code paths run on a laptop or CI machine without accelerators.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same programs: every trainer run jits anew, eager
# ops on sharded arrays each compile a small program (0.25 s apiece; ~36 per
# tiny trainer run with eight devices), and child processes start cold. One
# persistent compilation cache per session, shared by the xdist workers and
# their child processes (through the environment), turns those repeats into
# loads. It is size-bounded so that JAX guards it
# with a file lock: two workers may write the same entry at once.
import tempfile  # noqa: E402

if "FERATT_TEST_COMPILE_CACHE" not in os.environ:  # the first process of the session (xdist's controller)
    os.environ["FERATT_TEST_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="feratt_jax_compile_cache_")
    os.environ["FERATT_TEST_COMPILE_CACHE_OWNER"] = str(os.getpid())
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["FERATT_TEST_COMPILE_CACHE"]
# Not 0: writing every eager op's program (a full model's eager init is hundreds)
# cost more than it saved; the sharded eager ops of a trainer take ~0.25 s each.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(16 << 30)

import jax  # noqa: E402

# Catch silent broadcasting mistakes (nanodo does the same in its tests).
jax.config.update("jax_numpy_rank_promotion", "raise")

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


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it."""
    if os.environ.get("FERATT_TEST_COMPILE_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["FERATT_TEST_COMPILE_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One face-bank cache folder per test process: every tiny run draws the same bank, built once."""
    return str(tmp_path_factory.mktemp("facebank_cache"))
