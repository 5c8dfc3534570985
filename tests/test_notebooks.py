"""The Colab notebooks run top to bottom (their tiny setting) and are stored without outputs.

The notebook runs in a fresh kernel, with ``FERATT_NOTEBOOK_TINY=1`` (the
``:tiny`` config, two training steps) and a temporary working directory.
The kernel gets one CPU device: the eight fake devices that conftest.py
forces for the sharding tests would only slow it down.
"""

from __future__ import annotations

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "colab" / "feratt_quickstart.ipynb"
REAL_DATASETS = REPO / "colab" / "feratt_real_datasets.ipynb"

# Each notebook trains and evaluates in a separate kernel (about a minute
# and a half of compile and compute on a 2-core CPU).
pytestmark = pytest.mark.slow


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _execute_tiny(path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch):
    """Runs a notebook in a fresh kernel with FERATT_NOTEBOOK_TINY=1 in tmp_path/work."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("FERATT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("FERATT_CACHE_DIR", str(tmp_path / "facebank_cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    flags = os.environ.get("XLA_FLAGS", "").split()
    monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count")))

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb, workdir


def _png_outputs(nb) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))


@pytest.mark.parametrize("path", [QUICKSTART, REAL_DATASETS], ids=["quickstart", "real_datasets"])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    sources = "\n".join(c.source for c in nb.cells)
    assert "REPO_URL" in sources and "FERATT_NOTEBOOK_TINY" in sources


def test_quickstart_runs_tiny(tmp_path, monkeypatch):
    nb, workdir = _execute_tiny(QUICKSTART, tmp_path, monkeypatch)

    text = _outputs_text(nb)
    assert "feratt_jax is already importable: skipping the install" in text
    assert "TINY=True" in text
    run_dir = workdir / "feratt_quickstart" / "ferattention_tiny"
    for rel in ("eval/metrics.json", "eval/confusion_test.png", "eval/attention_test.png", "metrics.jsonl"):
        assert (run_dir / rel).is_file(), rel
    assert (workdir / "feratt_quickstart" / "preview.png").is_file()
    assert (workdir / "feratt_quickstart" / "predict" / "predictions.json").is_file()
    images = _png_outputs(nb)
    assert images >= 6, images  # preview, batch, curves, attention grid, confusion, overlay
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch is not installed: skipping the checkpoint conversion" in text
    else:
        diffs = [line for line in text.splitlines() if "max |flax - torch|" in line]
        assert len(diffs) == 3, text[-2000:]
        for line in diffs:
            assert float(line.rsplit("=", 1)[1]) < 1e-3, line


def test_real_datasets_runs_tiny(tmp_path, monkeypatch):
    nb, workdir = _execute_tiny(REAL_DATASETS, tmp_path, monkeypatch)

    text = _outputs_text(nb)
    assert "feratt_jax is already importable: skipping the install" in text
    assert "TINY=True" in text
    assert "TINY: a fake CK+ tree replaces the raw download" in text
    # The fake tree: 4 labelled sequences of 4 frames kept, one unknown code skipped, one unlabelled dropped.
    assert "wrote 16 ckplus faces (npz)" in text, text[:3000]
    assert "unknown label code 9" in text and "sequence without an emotion label: 1" in text
    prepared = workdir / "feratt_real_datasets" / "prepared" / "ckplus"
    assert (prepared / "skipped.tsv").is_file()
    for mode in ("real", "synthetic"):
        run_dir = workdir / "feratt_real_datasets" / f"ckplus_{mode}_preactresnet18_tiny"
        for rel in ("eval/metrics.json", "eval/confusion_test.png", "metrics.jsonl"):
            assert (run_dir / rel).is_file(), (mode, rel)
        assert f"{mode}: test accuracy" in text
        config = (run_dir / "config.json").read_text()
        assert str(prepared) in config and f'"mode": "{mode}"' in config
    assert _png_outputs(nb) >= 4  # faces and masks, training inputs, two confusion matrices
