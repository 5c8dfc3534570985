"""XLA flags that make FERAtt training faster on the CPU backend (docs/performance.md).

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` stops the
CPU backend from handing single convolutions to YNNPACK, so they run on
XLA's Eigen convolution path. For FERAtt the YNNPACK weight-gradient
convolutions at 64x64 are 3-4x slower than Eigen's (measured in
docs/performance.md), and the train step gets markedly faster overall.

XLA reads ``XLA_FLAGS`` once, when JAX creates its first backend, and
aborts the process on a flag it does not know. So
:func:`apply_fast_cpu_flags` must run before the first JAX computation, and
it only adds a flag that the installed jaxlib is known (or probed) to accept.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import MutableMapping

FAST_CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

# jaxlib releases on which every flag above was checked to exist (and to help).
VERIFIED_JAXLIB = ("0.10.",)


def _jaxlib_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("jaxlib")
    except Exception:  # noqa: BLE001 - not installed, or an unusual install
        return None


@functools.lru_cache(maxsize=None)
def flag_is_accepted(flag: str) -> bool:
    """Whether this jaxlib starts with ``flag`` in XLA_FLAGS (checked in a child process)."""
    version = _jaxlib_version()
    if version and version.startswith(VERIFIED_JAXLIB):
        return True
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices('cpu')"], env=env, capture_output=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _backends_started() -> bool:
    """Whether JAX has created its backends (after which XLA_FLAGS are not read again)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 - private API moved: assume it is not too late
        return False


def apply_fast_cpu_flags(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Append :data:`FAST_CPU_FLAGS` to ``XLA_FLAGS`` where the user has not set them.

    Harmless on GPU (the flags only concern the CPU backend). A flag whose
    name the user already set, in either sense, is left alone, and nothing
    is changed once JAX's backends exist (XLA would not read it any more).

    Args:
      environ: the environment to edit (default ``os.environ``).

    Returns:
      The flags that were added.
    """
    env = os.environ if environ is None else environ
    if environ is None and _backends_started():
        # Too late for this process: XLA has parsed XLA_FLAGS already. Leave the
        # environment as it is rather than change what child processes inherit.
        return []
    current = env.get("XLA_FLAGS", "")
    added = []
    for flag in FAST_CPU_FLAGS:
        name = flag.split("=", 1)[0]
        if name in current or not flag_is_accepted(flag):
            continue
        added.append(flag)
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


__all__ = ["FAST_CPU_FLAGS", "apply_fast_cpu_flags", "flag_is_accepted"]
