"""Heavy runs for tests, done in child processes on one CPU device.

conftest gives every test process eight fake CPU devices, and compiling the
full-size FERAtt train step for them takes a test process to 12-15 GB. Two
xdist workers doing that at once do not fit the 24 GB CI machine (a worker
was OOM-killed, and once the whole run hung). A child process on one device
stays under 6 GB and returns all of it when it exits.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_cpu_device_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child on one CPU device, plus ``extra``."""
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", **(extra or {}))


def start_on_one_cpu_device(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python ARGS`` in the repo root on one CPU device; stdin/stdout are pipes, stderr is merged."""
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=one_cpu_device_env(env), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def run_on_one_cpu_device(args: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> str:
    """Run ``python ARGS`` in the repo root on one CPU device; return its stdout, fail the test on error."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=one_cpu_device_env(env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"python {' '.join(args[:3])} ... exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): xdist workers may then train twice, which is only slower
        yield
        return
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def shared_basetemp(tmp_path_factory) -> pathlib.Path:
    """The temporary folder all xdist workers of this session share (their basetemps' parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def trained_once(
    tmp_path_factory, name: str, train_args: list[str], copy_to: pathlib.Path, env: dict[str, str] | None = None
) -> pathlib.Path:
    """``feratt train TRAIN_ARGS --workdir ...`` once per test session, copied to ``copy_to``.

    The first worker to ask trains (under a lock, in a child process); the
    others wait and reuse the run. Each caller gets its own copy, because
    tests write into the workdir (eval, represent) and must not race.
    """
    root = shared_basetemp(tmp_path_factory) / "shared_runs"
    root.mkdir(exist_ok=True)
    workdir = root / name
    with _exclusive(root / f"{name}.lock"):
        if not (workdir / "eval" / "metrics.json").is_file():
            shutil.rmtree(workdir, ignore_errors=True)  # a run that died half-way
            run_on_one_cpu_device(["-m", "feratt_jax.cli", "train", "--workdir", str(workdir), *train_args], env=env)
    shutil.copytree(workdir, copy_to)
    return copy_to
