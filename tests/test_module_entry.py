"""``python -m feratt_jax`` runs the ``feratt`` command line."""

import subprocess
import sys


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "feratt_jax", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: feratt"), proc.stdout[:200]
    for command in ("train", "eval", "predict", "convert"):
        assert command in proc.stdout


def test_python_dash_m_passes_exit_status():
    # A missing subcommand is argparse's usage error: exit status 2, not 0.
    proc = subprocess.run([sys.executable, "-m", "feratt_jax"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "required" in proc.stderr
