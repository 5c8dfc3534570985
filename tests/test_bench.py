"""``feratt bench``: every field present and sane at tiny sizes; no timing assertions.

Figures are measured by the bench itself (docs/performance.md), never
asserted here: these tests only check that the machinery runs and reports
plausible values (positive times, FLOPs > 0, an MFU in (0, 1.5)).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from feratt_jax import bench
from feratt_jax.cli import main as cli_main

REPO = pathlib.Path(__file__).resolve().parents[1]

# Small enough to compile in seconds; the yardstick is shrunk so that it
# stays well above the tiny model's FLOP rate (MFU < 1.5) without costing time.
TINY = dict(
    models=("preactresnet18",),
    batch_sizes=(2,),
    image_size=32,
    steps=2,
    warmup=1,
    render_batch_sizes=(4,),
    yardstick_shape=(4, 16, 16, 64),
    log=None,
)


def _check_timing(t: dict, batch_size: int) -> None:
    assert t["steps"] == 2
    assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
    assert t["images_per_s"] == pytest.approx(batch_size / t["median_s"])
    assert t["cpu_median_s"] >= 0


try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


@pytest.fixture(scope="module")
def report():
    """One tiny run for the whole module (compiling is the slow part): JAX, plus PyTorch when installed."""
    return bench.run_bench(**TINY, compare_torch=HAVE_TORCH, torch_device="cpu")


def test_jax_fields(report):
    meta = report["meta"]
    assert meta["platform"] == "cpu" and meta["steps"] == 2
    assert "make_train_step" in meta["jax_train_step"]
    rec = report["results"][0]
    assert (rec["framework"], rec["model"], rec["batch_size"], rec["image_size"], rec["precision"]) == (
        "jax", "preactresnet18", 2, 32, "fp32")  # fmt: skip
    _check_timing(rec["train"], 2)
    _check_timing(rec["inference"], 2)
    assert rec["compile"]["train_compile_s"] > 0 and rec["compile"]["inference_compile_s"] > 0
    # XLA's count for a training step is about 3x the forward (plus the optimizer).
    assert rec["flops_per_step"] > 2 * rec["flops_per_inference"] > 0
    assert rec["flops_per_image_train"] == pytest.approx(rec["flops_per_step"] / 2)
    assert rec["achieved_flops_per_s"] > 0
    assert 0 < rec["mfu"] < 1.5
    assert 0 < rec["mfu_inference"] < 1.5
    assert rec["mfu_datasheet"] is None  # no datasheet peak for a CPU
    assert rec["peak_host_rss_bytes"] > 50 * 2**20
    assert rec["device_memory"] is None or rec["device_memory"]["peak_bytes_in_use"] > 0
    assert rec["executable_memory"]["argument_size_in_bytes"] > 0
    yard = report["yardstick"]["fp32"]
    assert yard["gflops_per_s"] >= yard["gflops_per_s_median"] > 0
    # XLA skips the zero-padding taps at the border: a little under the nominal count.
    assert 0.8 * yard["gflop"] < yard["xla_gflop"] <= yard["gflop"]
    (ren,) = report["renderer"]
    assert ren["batch_size"] == 4 and ren["images_per_s"] > 0 and ren["compile_s"] > 0


def test_outputs_written(report, tmp_path):
    bench.write_outputs(report, str(tmp_path / "b.json"), str(tmp_path / "md" / "b.md"))
    loaded = json.loads((tmp_path / "b.json").read_text())
    assert loaded["results"][0]["train"]["median_s"] == report["results"][0]["train"]["median_s"]
    md = (tmp_path / "md" / "b.md").read_text()
    assert "| jax xla | preactresnet18 | 2 | 32 | fp32 |" in md
    assert "renderer batch" in md and "Conv yardstick" in md


def test_cost_flops_accepts_list_and_dict():
    class Compiled:
        def __init__(self, analysis):
            self.analysis = analysis

        def cost_analysis(self):
            return self.analysis

    assert bench.cost_flops(Compiled({"flops": 10.0})) == 10.0
    assert bench.cost_flops(Compiled([{"flops": 7.0}])) == 7.0
    assert bench.cost_flops(Compiled([])) is None
    assert bench.cost_flops(Compiled({"bytes accessed": 1.0})) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        bench.run_bench(["nope"], log=None)
    with pytest.raises(ValueError, match="precision"):
        bench.run_bench(["preactresnet18"], precisions=["fp8"], log=None)


def test_cli_writes_json_and_markdown(report, tmp_path, capsys, monkeypatch):
    """``feratt bench`` parses its flags into run_bench's arguments and writes both files."""
    seen = {}

    def fake_run_bench(models, batch_sizes, **kwargs):
        seen.update(models=models, batch_sizes=batch_sizes, **kwargs)
        kwargs["checkpoint"](report)  # partial results are written as they come
        assert json.loads(out_json.read_text())["results"]
        return report

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["bench", "--model", "preactresnet18", "--batch-size", "2", "4", "--image-size", "32", "--steps", "3",
            "--warmup", "1", "--precision", "fp32", "bf16", "--render-batch-size", "--yardstick-shape", "4", "16", "16", "64",
            "--json", str(out_json), "--markdown", str(out_md)]  # fmt: skip
    assert cli_main(argv) == 0
    assert seen["models"] == ["preactresnet18"] and seen["batch_sizes"] == [2, 4]
    assert seen["precisions"] == ["fp32", "bf16"] and seen["render_batch_sizes"] == []
    assert (seen["steps"], seen["warmup"], seen["image_size"], seen["compare_torch"]) == (3, 1, 32, False)
    assert seen["yardstick_shape"] == (4, 16, 16, 64)
    written = json.loads(out_json.read_text())
    assert "bench" in written["meta"]["command"]
    assert "| jax xla | preactresnet18 |" in out_md.read_text()
    assert "| jax xla | preactresnet18 |" in capsys.readouterr().out


def test_compare_torch_missing_names_the_extra(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match=r"pip install 'feratt-jax\[torch\]'"):
        bench.run_bench(["preactresnet18"], compare_torch=True, log=None)
    argv = ["bench", "--model", "preactresnet18", "--compare-torch", "--render-batch-size"]
    assert cli_main(argv) == 2
    assert "feratt-jax[torch]" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
def test_compare_torch_fields(report):
    assert [(r["framework"], r["mode"]) for r in report["results"]] == [
        ("jax", "xla"), ("torch", "eager"), ("torch", "channels_last")]  # fmt: skip
    jax_rec = report["results"][0]
    for rec in report["results"][1:]:
        _check_timing(rec["train"], 2)
        _check_timing(rec["inference"], 2)
        assert rec["precision"] == "fp32" and rec["compile"] is None
        # Same arithmetic as the JAX step: XLA's FLOP count is reused.
        assert rec["flops_per_step"] == jax_rec["flops_per_step"]
        assert rec["achieved_flops_per_s"] > 0 and rec["mfu"] is None
    (ratio,) = report["ratios"]
    for key in ("train_jax_over_torch_eager", "train_jax_over_torch_channels_last",
                "inference_jax_over_torch_eager", "inference_jax_over_torch_channels_last"):  # fmt: skip
        assert ratio[key] > 0
    assert report["meta"]["torch_threads"] == os.cpu_count()
    assert report["yardstick"]["torch_fp32"]["channels_last_gflops_per_s"] > 0
    assert "train JAX/eager" in bench.to_markdown(report)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
@pytest.mark.parametrize("model", ["preactresnet18", "ferattention", "ferattentionstn", "ferattentiongmm", "ferattentiongmmstn"])
def test_torch_losses_of_every_variant(model):
    """The PyTorch train step's loss for each variant (CE, + Att, + STN, + DGMM and ||z||), on fake outputs."""
    import torch

    b = 4
    runner = object.__new__(bench.TorchRunner)  # the loss needs no model
    runner.torch, runner.batch_size, runner.num_classes = torch, b, 8
    runner.variant = bench.LOSS_VARIANT[model]
    runner.device = torch.device("cpu")
    runner.generator = np.random.default_rng(0)
    from feratt_jax.interop import torch_losses

    runner.losses = torch_losses
    host = bench.synthetic_batch(b, 64, 8)
    runner.x_org = torch.from_numpy(host["x_org"].transpose(0, 3, 1, 2).copy())
    runner.label = torch.from_numpy(host["label"]).long()
    runner.theta = torch.from_numpy(host["theta"])
    out = {
        "logits": torch.randn(b, 8, requires_grad=True),
        "reconstruction": torch.rand(b, 3, 64, 64, requires_grad=True),
        "theta": (runner.theta + 0.01).requires_grad_(),
        "embedding": torch.randn(b, 32, requires_grad=True),
    }
    loss = runner._loss(out)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert out["logits"].grad is not None
    assert (out["reconstruction"].grad is not None) == (model != "preactresnet18")
    assert (out["theta"].grad is not None) == ("stn" in model)
    assert (out["embedding"].grad is not None) == ("gmm" in model)


_NO_OPTIONAL = r"""
import importlib.abc, sys
BLOCKED = ("grain", "ml_collections", "tensorboardX", "tensorflow", "orbax")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
import feratt_jax.cli
feratt_jax.cli.build_parser()
from feratt_jax import bench
# Everything the bench imports lazily when it runs (renderer, GMM metrics), torch aside.
import feratt_jax.data.render, feratt_jax.metrics
compiled = bench.RendererRunner(2).compiled
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED + ("torch",))
assert not loaded, loaded
print("ok")
"""


def test_bench_path_needs_no_optional_packages():
    """grain, ml_collections, tensorboardX (and torch, unless asked) are never imported by the bench."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", _NO_OPTIONAL], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """experiments/gpu_check.sh --dry-run runs on CPU and writes its JSON + markdown."""
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", str(REPO / "experiments" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["meta"]["complete"] is True
    assert {(r["framework"], r["precision"]) for r in report["results"]} >= {("jax", "bf16"), ("jax", "fp32")}
    for name in ("env.json", "bench.md", "summary.md", "log.txt"):
        assert (tmp_path / name).is_file(), name


def test_fast_cpu_flags_edit_only_what_is_unset():
    from feratt_jax import xla_cpu

    (flag,) = xla_cpu.FAST_CPU_FLAGS
    assert xla_cpu.flag_is_accepted(flag)  # the installed jaxlib knows it
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.apply_fast_cpu_flags(env) == [flag]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {flag}"
    assert xla_cpu.apply_fast_cpu_flags(env) == []  # idempotent
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_cpu.apply_fast_cpu_flags(mine) == [] and mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    empty: dict[str, str] = {}
    assert xla_cpu.apply_fast_cpu_flags(empty) == [flag] and empty["XLA_FLAGS"] == flag
    # In this (test) process the backends exist already: os.environ is left alone.
    jax.devices()
    before = os.environ.get("XLA_FLAGS")
    assert xla_cpu.apply_fast_cpu_flags() == []
    assert os.environ.get("XLA_FLAGS") == before
