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
import json
import os
import pathlib
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


def probe_cache_file() -> pathlib.Path:
    """Where probe results are kept: ``$XDG_CACHE_HOME/feratt_jax/xla_flags.json`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "feratt_jax" / "xla_flags.json"


def _read_probe_cache() -> dict:
    try:
        cached = json.loads(probe_cache_file().read_text())
    except (OSError, ValueError):  # absent, unreadable or garbled: probe again
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_probe_cache(key: str, flag: str, accepted: bool) -> None:
    cached = _read_probe_cache()
    entry = cached.get(key) if isinstance(cached.get(key), dict) else {}
    cached[key] = {**entry, flag: accepted}
    path = probe_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    except OSError:  # read-only home, full disk: the probe just runs again next time
        pass


def _probe(flag: str) -> bool | None:
    """Start a child with ``flag``: True = accepted, False = XLA rejected it, None = could not tell."""
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices('cpu')"], env=env, capture_output=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return True
    # XLA names the flag it does not know; any other failure is not a verdict on the flag.
    return False if flag.split("=", 1)[0].encode() in proc.stderr else None


@functools.lru_cache(maxsize=None)
def flag_is_accepted(flag: str) -> bool:
    """Whether this jaxlib starts with ``flag`` in XLA_FLAGS.

    Known for :data:`VERIFIED_JAXLIB`; otherwise checked once per jaxlib
    version in a child process (~1.5 s) and the verdict kept in
    :func:`probe_cache_file`, so later commands start no child.
    """
    version = _jaxlib_version()
    if version and version.startswith(VERIFIED_JAXLIB):
        return True
    key = f"jaxlib {version}"
    cached = _read_probe_cache().get(key)
    if isinstance(cached, dict) and isinstance(cached.get(flag), bool):
        return cached[flag]
    verdict = _probe(flag)
    if verdict is None:
        return False  # not cached: a transient failure is not a verdict
    if version:
        _write_probe_cache(key, flag, verdict)
    return verdict


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


__all__ = ["FAST_CPU_FLAGS", "apply_fast_cpu_flags", "flag_is_accepted", "probe_cache_file"]
