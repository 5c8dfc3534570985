"""Benchmarks: JAX train/inference step timings, FLOPs and MFU, the renderer, and PyTorch beside them.

``feratt bench`` (arguments in :mod:`feratt_jax.cli`) calls :func:`run_bench`,
which returns one JSON-ready report. For every (model, batch size, precision) setting it measures:

* compile time of the jitted train step and of the inference forward
  (``lower`` + ``compile``, ahead of time, so no step is timed cold);
* train-step and inference times over ``steps`` timed calls after
  ``warmup`` untimed ones: median, min, max and images/s (on the median);
* FLOPs per step from XLA's cost analysis of the compiled executables, the
  achieved FLOP/s, and the MFU against a peak measured in the same process
  by a 3x3 convolution "yardstick" compiled by XLA in the same dtype;
* peak host RSS (``getrusage``; process-wide, so it grows monotonically over
  the settings of one run), the device's ``memory_stats()`` (null on CPU)
  and XLA's own memory analysis of the executable;
* with ``compare_torch``: the same for the PyTorch twin of the model
  (:mod:`feratt_jax.interop.torch_model`) in eager NCHW and channels_last
  modes, *interleaved* step by step with the JAX run so that every framework
  sees the same machine load, and the JAX/PyTorch ratios;
* the jitted compositing renderer's images/s (:func:`feratt_jax.data.render.render_batch`).

What the JAX "train step" is: the trainer's own :func:`feratt_jax.step.make_train_step`
(forward in train mode, the variant's losses, ``value_and_grad``,
PyTorch-exact Adam with AMSGrad at a constant learning rate, new BatchNorm
statistics and the logged metrics, with the old state donated) on a batch
already rendered; the on-device render is timed separately as the renderer.
The model is built with :func:`feratt_jax.models.build_model`'s defaults and
the loss with the variant's defaults, the reference's settings.

torch and the renderer are imported only when they are used.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from feratt_jax import losses as losses_lib
from feratt_jax import optimizers, step
from feratt_jax.data.render import RenderConfig, render_batch
from feratt_jax.models import FERATT_VARIANTS, LOSS_VARIANT, MODEL_NAMES, build_model
from feratt_jax.models.summary import DEFAULT_IMAGE_SIZE

# The reference's optimizer: Adam(lr=1e-4, amsgrad=True) at a constant rate.
LEARNING_RATE = 1e-4


PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}

# Dense datasheet peaks (FLOP/s) for an extra MFU figure on known accelerators.
# H100/H200 SXM: 989 TFLOP/s dense bf16, 67 TFLOP/s fp32 (non-tensor-core).
DATASHEET_PEAK_FLOPS = {
    ("h100", "bf16"): 989e12,
    ("h100", "fp32"): 67e12,
    ("h200", "bf16"): 989e12,
    ("h200", "fp32"): 67e12,
}

TORCH_EXTRA_HINT = "pip install 'feratt-jax[torch]'"


# ==========================================================================
# Small helpers
# ==========================================================================


def summarize_times(times_s: Sequence[float], batch_size: int, cpu_times_s: Sequence[float] | None = None) -> dict[str, float]:
    """Median/min/max/mean of per-step wall times and images/s at the median.

    ``cpu_times_s`` (process CPU seconds per step, all threads) is summarised
    as ``cpu_median_s``: on a shared machine the wall time grows with other
    processes' load while the CPU time stays close to the work done, so it
    is the steadier figure for comparing variants (spinning worker threads
    count too, so it is not a pure work measure).
    """
    if not times_s:
        raise ValueError("no timed steps")
    median = statistics.median(times_s)
    out = {
        "median_s": median,
        "min_s": min(times_s),
        "max_s": max(times_s),
        "mean_s": statistics.fmean(times_s),
        "steps": len(times_s),
        "images_per_s": batch_size / median,
    }
    if cpu_times_s:
        out["cpu_median_s"] = statistics.median(cpu_times_s)
    return out


class _Clock:
    """Wall and process-CPU time of one timed region."""

    def __enter__(self) -> "_Clock":
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    @property
    def times(self) -> tuple[float, float]:
        return self.wall, self.cpu


def cost_flops(compiled: Any) -> float | None:
    """FLOPs of a compiled executable from XLA's cost analysis (None if XLA gives none).

    ``cost_analysis()`` returns a dict in current jax and a list with one
    dict per computation in older releases.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    flops = float(analysis["flops"])
    return flops if flops > 0 else None


def executable_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of an executable: argument/output/temp bytes."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}


def peak_host_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_memory(device: Any) -> dict[str, int] | None:
    """``device.memory_stats()`` peak/in-use bytes, or None where the backend has none (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    keep = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keep if k in stats} or None


def device_description(device: Any) -> str:
    kind = getattr(device, "device_kind", "") or ""
    if device.platform == "cpu":
        cpu = _cpu_model_name()
        return f"cpu: {cpu} ({os.cpu_count()} cores)" if cpu else f"cpu ({os.cpu_count()} cores)"
    return f"{device.platform}: {kind}"


def _cpu_model_name() -> str | None:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _datasheet_peak(device: Any, precision: str) -> float | None:
    kind = (getattr(device, "device_kind", "") or "").lower()
    for (name, prec), peak in DATASHEET_PEAK_FLOPS.items():
        if name in kind and prec == precision:
            return peak
    return None


def _block(tree: Any) -> None:
    jax.block_until_ready(tree)


# ==========================================================================
# Synthetic inputs
# ==========================================================================


def synthetic_batch(batch_size: int, image_size: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A rendered-batch-shaped dict (what the trainer's render returns), NHWC float32.

    The values do not matter for speed (no data-dependent control flow in
    the model), only the shapes and dtypes do.
    """
    rng = np.random.default_rng(seed)
    theta = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32), (batch_size, 1, 1))
    theta += rng.uniform(-0.1, 0.1, theta.shape).astype(np.float32)
    return {
        "image": rng.random((batch_size, image_size, image_size, 3), dtype=np.float32),
        "x_org": rng.random((batch_size, image_size, image_size, 3), dtype=np.float32),
        "label": (np.arange(batch_size) % num_classes).astype(np.int32),
        "theta": theta,
    }


# ==========================================================================
# Runners: one object per framework/mode, stepped in turn by the scheduler
# ==========================================================================


class JaxRunner:
    """Builds, compiles and steps the JAX train step and eval forward of one setting."""

    framework = "jax"

    def __init__(self, model_name: str, batch_size: int, image_size: int, precision: str, *, num_classes: int = 8, seed: int = 0):
        self.mode = "xla"
        self.model_name, self.batch_size, self.image_size, self.precision = model_name, batch_size, image_size, precision
        self.device = jax.devices()[0]
        dtype = PRECISIONS[precision]
        self.model = build_model(model_name, num_classes=num_classes, dtype=dtype)
        schedule = optax.constant_schedule(LEARNING_RATE)
        self.tx = optimizers.make_optimizer(schedule)
        host_batch = synthetic_batch(batch_size, image_size, num_classes, seed)
        self.batch = jax.device_put(host_batch, self.device)
        sample = jnp.zeros((1, image_size, image_size, 3), jnp.float32)

        def init_state(rng: jax.Array) -> step.TrainState:
            variables = self.model.init({"params": rng, "dropout": rng}, sample, train=False)
            params = variables["params"]
            return step.TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}), self.tx.init(params))

        self.state = jax.jit(init_state)(jax.random.key(seed + 1))
        _block(self.state)

        # The trainer's step for a config with no resize and no standardization.
        prepare = lambda image_BHWC: step.model_input(image_BHWC, 0)  # noqa: E731
        loss_options = {"variant": LOSS_VARIANT[model_name], "num_classes": num_classes}
        step_fn = step.make_train_step(self.model, self.tx, schedule, prepare=prepare, loss_options=loss_options, seed=seed)
        eval_fn = step.make_eval_step(self.model, prepare)

        # Donating the state lets XLA update parameters and optimizer moments in place.
        t0 = time.perf_counter()
        lowered = jax.jit(step_fn, donate_argnums=(0,)).lower(self.state, self.batch)
        t1 = time.perf_counter()
        self.train_compiled = lowered.compile()
        t2 = time.perf_counter()
        lowered_eval = jax.jit(eval_fn).lower(self.state.params, self.state.batch_stats, self.batch["image"])
        t3 = time.perf_counter()
        self.eval_compiled = lowered_eval.compile()
        t4 = time.perf_counter()
        self.compile = {"train_trace_s": t1 - t0, "train_compile_s": t2 - t1, "train_total_s": t2 - t0,
                        "inference_trace_s": t3 - t2, "inference_compile_s": t4 - t3, "inference_total_s": t4 - t2}
        self.flops_train = cost_flops(self.train_compiled)
        self.flops_inference = cost_flops(self.eval_compiled)
        self.memory_train = executable_memory(self.train_compiled)

    def train_step(self) -> tuple[float, float]:
        with _Clock() as c:
            self.state, metrics = self.train_compiled(self.state, self.batch)
            _block((self.state, metrics))
        return c.times

    def begin_inference(self) -> None:
        pass

    def inference_step(self) -> tuple[float, float]:
        with _Clock() as c:
            _block(self.eval_compiled(self.state.params, self.state.batch_stats, self.batch["image"]))
        return c.times

    def device_memory(self) -> dict[str, int] | None:
        return device_memory(self.device)


class TorchRunner:
    """The PyTorch twin of a model: train step (forward, reference losses, backward, Adam amsgrad) and inference.

    ``mode`` is "eager" (NCHW, contiguous) or "channels_last" (model and
    input converted to ``torch.channels_last``). Always float32, the
    reference's precision.
    """

    framework = "torch"

    def __init__(self, model_name: str, batch_size: int, image_size: int, mode: str, device: str, *, num_classes: int = 8, seed: int = 0):
        torch = _import_torch()
        from feratt_jax.interop import torch_losses
        from feratt_jax.interop.torch_model import build_torch_model

        if mode not in ("eager", "channels_last"):
            raise ValueError(f"torch mode must be eager or channels_last, got {mode!r}")
        self.torch, self.losses = torch, torch_losses
        self.mode, self.device = mode, torch.device(device)
        self.model_name, self.batch_size, self.image_size, self.precision = model_name, batch_size, image_size, "fp32"
        self.variant = LOSS_VARIANT[model_name]
        self.num_classes = num_classes
        torch.manual_seed(seed)
        model = build_torch_model(model_name, num_classes=num_classes).to(self.device)
        host = synthetic_batch(batch_size, image_size, num_classes, seed)
        fmt = torch.channels_last if mode == "channels_last" else torch.contiguous_format

        def image(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(self.device).contiguous(memory_format=fmt)

        if mode == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        self.model = model.train()
        self.x, self.x_org = image(host["image"]), image(host["x_org"])
        self.label = torch.from_numpy(host["label"]).long().to(self.device)
        self.theta = torch.from_numpy(host["theta"]).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, amsgrad=True)
        self.generator = np.random.default_rng(seed)
        self.compile = None  # eager: nothing to compile
        self.flops_train = self.flops_inference = None  # filled from the JAX twin by the scheduler
        self.memory_train = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _loss(self, out: Mapping[str, Any]) -> Any:
        lf = self.losses
        loss = lf.cross_entropy(out["logits"], self.label)
        if self.variant == "classifier":
            return loss
        loss = loss + lf.att_loss(self.x_org, out["reconstruction"])
        if "stn" in self.variant:
            loss = loss + lf.stn_loss(self.x_org, out["theta"], self.theta)
        if "gmm" in self.variant:
            lam = float(self.generator.beta(2.0, 2.0))
            perm = self.torch.from_numpy(self.generator.permutation(self.batch_size)).to(self.device)
            loss = loss + lf.dgmm_loss(out["embedding"], self.label, lam, perm, num_classes=self.num_classes)
            norm_weight = losses_lib.REFERENCE_EMBEDDING_NORM_WEIGHT[self.variant]
            loss = loss + norm_weight * out["embedding"].norm(2)
        return loss

    def train_step(self) -> tuple[float, float]:
        self._sync()
        with _Clock() as c:
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model(self.x)
            loss = self._loss(out)
            loss.backward()
            self.optimizer.step()
            self._sync()
        return c.times

    def begin_inference(self) -> None:
        self.model.eval()

    def inference_step(self) -> tuple[float, float]:
        self._sync()
        with _Clock() as c, self.torch.inference_mode():
            self.model(self.x)
            self._sync()
        return c.times

    def device_memory(self) -> dict[str, int] | None:
        if self.device.type != "cuda":
            return None
        cuda = self.torch.cuda
        return {"peak_bytes_in_use": int(cuda.max_memory_allocated(self.device)), "bytes_in_use": int(cuda.memory_allocated(self.device))}


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"--compare-torch needs PyTorch, which is not installed: {TORCH_EXTRA_HINT}") from err
    return torch


# ==========================================================================
# Yardstick and renderer
# ==========================================================================


def conv_yardstick(precision: str = "fp32", *, steps: int = 10, shape: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    """FLOP/s of one large 3x3 convolution forward compiled by XLA: the MFU denominator.

    The shape is sized per platform so that one call is long enough to time
    but short on CPU: (32, 32, 32, 128) -> 128 channels on CPU (9.7 GFLOP),
    (256, 64, 64, 256) -> 256 on accelerators (619 GFLOP).

    Returns:
      ``{"shape", "dtype", "gflop", "xla_gflop", "median_s", "min_s", "gflops_per_s"}``;
      ``gflops_per_s`` is XLA's FLOP count over the fastest call (a peak),
      ``gflops_per_s_median`` over the median; ``gflop`` is the nominal
      2*B*H*W*C*C*9, which also counts the zero-padded border taps.
    """
    device = jax.devices()[0]
    if shape is None:
        shape = (32, 32, 32, 128) if device.platform == "cpu" else (256, 64, 64, 256)
    b, h, w, c = shape
    dtype = PRECISIONS[precision]
    x = jax.random.normal(jax.random.key(0), (b, h, w, c), dtype)
    k = jax.random.normal(jax.random.key(1), (3, 3, c, c), dtype) * 0.05

    def conv(x_BHWC, k_HWIO):
        return jax.lax.conv_general_dilated(x_BHWC, k_HWIO, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    compiled = jax.jit(conv).lower(x, k).compile()
    nominal = 2.0 * b * h * w * c * c * 9
    # XLA counts only the taps that land inside the image; the model's FLOPs
    # come from the same count, so the ratio (MFU) compares like with like.
    flops = cost_flops(compiled) or nominal
    _block(compiled(x, k))
    times = []
    for _ in range(max(steps, 3)):
        t0 = time.perf_counter()
        _block(compiled(x, k))
        times.append(time.perf_counter() - t0)
    best, median = min(times), statistics.median(times)
    return {
        "op": "conv3x3 fwd, NHWC, XLA",
        "shape": [b, h, w, c, c],
        "dtype": precision,
        "gflop": nominal / 1e9,
        "xla_gflop": flops / 1e9,
        "median_s": median,
        "min_s": best,
        "gflops_per_s": flops / best / 1e9,
        "gflops_per_s_median": flops / median / 1e9,
    }


def torch_conv_yardstick(device: str, *, steps: int = 10, shape: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    """The same convolution in PyTorch (fp32, NCHW and channels_last), for context."""
    torch = _import_torch()
    dev = torch.device(device)
    if shape is None:
        shape = (32, 32, 32, 128) if dev.type == "cpu" else (256, 64, 64, 256)
    b, h, w, c = shape
    conv = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False).to(dev)
    flops = 2.0 * b * h * w * c * c * 9
    result: dict[str, Any] = {"op": "conv3x3 fwd, torch fp32", "shape": [b, h, w, c, c], "gflop": flops / 1e9}
    for mode in ("eager", "channels_last"):
        x = torch.randn(b, c, h, w, device=dev)
        m = conv
        if mode == "channels_last":
            x, m = x.contiguous(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode():
            for i in range(max(steps, 3) + 1):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                m(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if i:
                    times.append(time.perf_counter() - t0)
        result[f"{mode}_gflops_per_s"] = flops / min(times) / 1e9
    return result


def synthetic_render_inputs(batch_size: int, seed: int = 0, background_size: int = 64) -> dict[str, np.ndarray]:
    """Host inputs of the renderer in the pipeline's dtypes: uint8 faces/masks/backgrounds, int32 labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    disc = (((yy - 64) / 52.0) ** 2 + ((xx - 64) / 44.0) ** 2 <= 1.0).astype(np.uint8) * 255
    faces = rng.integers(0, 256, (batch_size, 128, 128), dtype=np.uint8) * (disc > 0)
    return {
        "faces": faces.astype(np.uint8),
        "masks": np.broadcast_to(disc, (batch_size, 128, 128)).copy(),
        "backgrounds": rng.integers(0, 256, (batch_size, background_size, background_size), dtype=np.uint8),
        "labels": (np.arange(batch_size) % 8).astype(np.int32),
        "seeds": rng.integers(0, 2**32, batch_size, dtype=np.uint64).astype(np.uint32),
    }


class RendererRunner:
    """The trainer's render call (per-sample keys from seeds, then ``render_batch``) as one jitted function."""

    def __init__(self, batch_size: int, image_size: int = 64, seed: int = 0):
        self.batch_size, self.image_size = batch_size, image_size
        config = RenderConfig(image_size=image_size)
        self.device = jax.devices()[0]
        self.inputs = jax.device_put(synthetic_render_inputs(batch_size, seed), self.device)

        def render(inputs: Mapping[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
            # New keys every call, derived on device as the trainer derives them from seeds.
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), step))(inputs["seeds"])
            return render_batch(inputs["faces"], inputs["masks"], inputs["backgrounds"], inputs["labels"], keys, config)

        self.step = 0
        t0 = time.perf_counter()
        self.compiled = jax.jit(render).lower(self.inputs, jnp.int32(0)).compile()
        self.compile_s = time.perf_counter() - t0

    def render_step(self) -> tuple[float, float]:
        self.step += 1
        step = jnp.int32(self.step)
        with _Clock() as c:
            _block(self.compiled(self.inputs, step))
        return c.times


def bench_renderer(batch_size: int, image_size: int = 64, *, steps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Images/s of the jitted compositing renderer at one batch size (inputs already on device)."""
    runner = RendererRunner(batch_size, image_size)
    for _ in range(warmup):
        runner.render_step()
    times = [runner.render_step() for _ in range(steps)]
    stats = summarize_times([t[0] for t in times], batch_size, [t[1] for t in times])
    return {"batch_size": batch_size, "image_size": image_size, "compile_s": runner.compile_s, **stats}


# ==========================================================================
# The scheduler
# ==========================================================================


def _interleaved(runners: Sequence[Any], method: str, steps: int, warmup: int) -> list[list[tuple[float, float]]]:
    """Warm each runner up, then time ``steps`` calls of ``method``, one runner after the other per round.

    Round-robin order means every runner sees the same background load
    (other processes, thermal state) on average, which keeps the ratios fair
    on a shared machine.
    """
    for r in runners:
        for _ in range(warmup):
            getattr(r, method)()
    times: list[list[tuple[float, float]]] = [[] for _ in runners]
    for _ in range(steps):
        for i, r in enumerate(runners):
            times[i].append(getattr(r, method)())
    return times


def _result_record(runner: Any, train_times: list[tuple[float, float]], inference_times: list[tuple[float, float]],
                   flops_train: float | None, flops_inference: float | None) -> dict[str, Any]:
    bs = runner.batch_size
    train = summarize_times([t[0] for t in train_times], bs, [t[1] for t in train_times])
    inference = summarize_times([t[0] for t in inference_times], bs, [t[1] for t in inference_times])
    rec: dict[str, Any] = {
        "framework": runner.framework,
        "mode": runner.mode,
        "model": runner.model_name,
        "batch_size": bs,
        "image_size": runner.image_size,
        "precision": runner.precision,
        "compile": runner.compile,
        "train": train,
        "inference": inference,
        "flops_per_step": flops_train,
        "flops_per_image_train": flops_train / bs if flops_train else None,
        "flops_per_inference": flops_inference,
        "achieved_flops_per_s": flops_train / train["median_s"] if flops_train else None,
        "achieved_flops_per_s_inference": flops_inference / inference["median_s"] if flops_inference else None,
    }
    rec["mfu"] = rec["mfu_inference"] = rec["mfu_datasheet"] = None  # set by _set_mfu
    rec["peak_host_rss_bytes"] = peak_host_rss_bytes()
    rec["device_memory"] = runner.device_memory()
    rec["executable_memory"] = runner.memory_train
    return rec


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if (a and b) else None


def _set_mfu(report: dict[str, Any], device: Any) -> None:
    """MFU of every JAX record against the best yardstick of its precision measured so far.

    The yardstick is re-measured after every setting and its fastest call
    kept, so a moment of load from other processes does not lower the peak
    (and inflate the MFU). PyTorch records get no MFU (the yardstick is XLA's).
    """
    for rec in report["results"]:
        if rec["framework"] != "jax" or rec["precision"] not in report["yardstick"]:
            continue
        peak = report["yardstick"][rec["precision"]]["gflops_per_s"] * 1e9
        datasheet = _datasheet_peak(device, rec["precision"])
        rec["mfu"] = _ratio(rec["achieved_flops_per_s"], peak)
        rec["mfu_inference"] = _ratio(rec["achieved_flops_per_s_inference"], peak)
        rec["mfu_datasheet"] = _ratio(rec["achieved_flops_per_s"], datasheet)


def _set_renderer_ratios(report: dict[str, Any]) -> None:
    """Renderer images/s over the fastest FERAtt train step of the run (the conservative ratio)."""
    jax_train = [r for r in report["results"] if r["framework"] == "jax" and r["model"] in FERATT_VARIANTS]
    if not jax_train:
        return
    best = max(r["train"]["images_per_s"] for r in jax_train)
    for rec in report["renderer"]:
        rec["over_train_step_images_per_s"] = rec["images_per_s"] / best


def _update_yardstick(report: dict[str, Any], precision: str, steps: int, shape: tuple[int, int, int, int] | None) -> dict[str, Any]:
    """Measure the yardstick again and keep the faster of the old and new figures."""
    new = conv_yardstick(precision, steps=steps, shape=shape)
    old = report["yardstick"].get(precision)
    measurements = (old.get("measurements", 1) if old else 0) + 1
    best = new if (old is None or new["gflops_per_s"] > old["gflops_per_s"]) else old
    report["yardstick"][precision] = {**best, "measurements": measurements}
    return report["yardstick"][precision]


def _resolve_torch_device(torch_device: str) -> str:
    if torch_device != "auto":
        return torch_device
    torch = _import_torch()
    if jax.devices()[0].platform == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def run_bench(
    models: Sequence[str] = ("ferattention",),
    batch_sizes: Sequence[int] = (32,),
    *,
    image_size: int | None = None,
    precisions: Sequence[str] = ("fp32",),
    steps: int = 10,
    warmup: int = 2,
    compare_torch: bool = False,
    torch_device: str = "auto",
    render_batch_sizes: Sequence[int] = (32, 256),
    render_steps: int | None = None,
    num_classes: int = 8,
    yardstick_shape: tuple[int, int, int, int] | None = None,
    log: Callable[[str], None] | None = print,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every (model, batch size, precision) setting; returns the report dict.

    Args:
      models: model names (see :data:`feratt_jax.models.MODEL_NAMES`).
      batch_sizes: global batch sizes (one device).
      image_size: input side; None = the model's usual size (64 for FERAtt).
      precisions: "fp32" and/or "bf16" (JAX compute dtype; PyTorch stays fp32).
      steps: timed steps per measurement (>= 10 for reported figures).
      warmup: untimed steps before timing (after compilation).
      compare_torch: also run the PyTorch twin (eager and channels_last), interleaved.
      torch_device: "auto" (cuda when JAX runs on a GPU and torch sees one), "cpu" or "cuda".
      render_batch_sizes: renderer batch sizes; empty to skip the renderer.
      render_steps: timed renderer calls (default ``steps``).
      num_classes: C.
      yardstick_shape: override the conv yardstick's (B, H, W, C).
      log: progress printer (None = quiet).
      checkpoint: called with the report so far after every setting (e.g.
        to write partial results, so that a run cut short by a time limit
        still leaves its figures).

    Returns:
      ``{"meta", "yardstick", "results", "ratios", "renderer"}`` (JSON-ready).

    Raises:
      ValueError: unknown model or precision, non-positive sizes.
      ImportError: ``compare_torch`` without torch (names the extra to install).
    """
    say = log or (lambda _msg: None)
    for m in models:
        if m not in MODEL_NAMES:
            raise ValueError(f"unknown model {m!r}; choose one of {MODEL_NAMES}")
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"unknown precision {p!r}; choose one of {sorted(PRECISIONS)}")
    if steps < 1 or warmup < 0 or any(b < 1 for b in batch_sizes):
        raise ValueError("steps and batch sizes must be positive and warmup non-negative")
    device = jax.devices()[0]
    tdev = None
    torch_meta: dict[str, Any] = {}
    if compare_torch:
        torch = _import_torch()
        tdev = _resolve_torch_device(torch_device)
        # Use every core, as a user of the reference would.
        torch.set_num_threads(os.cpu_count() or 1)
        if tdev == "cuda":
            torch.backends.cudnn.benchmark = True
        torch_meta = {"torch_version": torch.__version__, "torch_device": tdev, "torch_threads": torch.get_num_threads()}

    report: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device_description(device),
            "platform": device.platform,
            "device_kind": getattr(device, "device_kind", None),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "jax_version": jax.__version__,
            "jaxlib_version": _jaxlib_version(),
            "complete": False,
            "flax_version": flax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "steps": steps,
            "warmup": warmup,
            "jax_train_step": "feratt_jax.step.make_train_step, the trainer's own step (forward, losses, grad, AMSGrad, "
            "BN stats, metrics; donated state) on a pre-rendered batch; the renderer is timed separately",
            **torch_meta,
        },
        "yardstick": {},
        "results": [],
        "ratios": [],
        "renderer": [],
    }
    if compare_torch:
        say(f"torch conv yardstick on {tdev} ...")
        report["yardstick"]["torch_fp32"] = torch_conv_yardstick(tdev, steps=steps, shape=yardstick_shape)

    # The renderer first: it is quick, and a run cut short by a time limit
    # (gpu_check.sh) still has its figure. Its ratio to the train step is
    # filled in as train results arrive.
    for bs in render_batch_sizes:
        say(f"renderer batch {bs} ...")
        rec = bench_renderer(bs, 64, steps=render_steps or steps, warmup=warmup)
        report["renderer"].append(rec)
        say(f"  {rec['images_per_s']:.0f} images/s (median {rec['median_s'] * 1e3:.2f} ms)")
    if checkpoint and render_batch_sizes:
        checkpoint(report)

    for precision in precisions:
        say(f"XLA conv yardstick ({precision}) ...")
        yard = _update_yardstick(report, precision, steps, yardstick_shape)
        say(f"  {yard['gflops_per_s']:.1f} GFLOP/s")
        for model_name in models:
            size = image_size or DEFAULT_IMAGE_SIZE.get(model_name, 64)
            for bs in batch_sizes:
                say(f"{model_name} batch {bs} {size}px {precision}: compiling ...")
                jr = JaxRunner(model_name, bs, size, precision, num_classes=num_classes)
                runners: list[Any] = [jr]
                if compare_torch:
                    for mode in ("eager", "channels_last"):
                        runners.append(TorchRunner(model_name, bs, size, mode, tdev, num_classes=num_classes))
                train_times = _interleaved(runners, "train_step", steps, warmup)
                for r in runners:
                    r.begin_inference()
                inference_times = _interleaved(runners, "inference_step", steps, warmup)
                # PyTorch runs the same arithmetic: its FLOPs are XLA's count for the JAX twin.
                recs = [_result_record(r, tt, it, jr.flops_train, jr.flops_inference)
                        for r, tt, it in zip(runners, train_times, inference_times)]
                report["results"].extend(recs)
                _update_yardstick(report, precision, steps, yardstick_shape)
                _set_mfu(report, device)
                _set_renderer_ratios(report)
                say("  " + _one_line(recs[0]))
                if compare_torch:
                    ratio = {"model": model_name, "batch_size": bs, "image_size": size, "precision": precision}
                    for rec in recs[1:]:
                        ratio[f"train_jax_over_torch_{rec['mode']}"] = recs[0]["train"]["images_per_s"] / rec["train"]["images_per_s"]
                        ratio[f"inference_jax_over_torch_{rec['mode']}"] = (
                            recs[0]["inference"]["images_per_s"] / rec["inference"]["images_per_s"]
                        )
                    report["ratios"].append(ratio)
                    for rec in recs[1:]:
                        say("  " + _one_line(rec))
                    say(
                        f"  JAX/PyTorch train img/s: {ratio['train_jax_over_torch_eager']:.2f}x eager, "
                        f"{ratio['train_jax_over_torch_channels_last']:.2f}x channels_last; inference: "
                        f"{ratio['inference_jax_over_torch_eager']:.2f}x eager, {ratio['inference_jax_over_torch_channels_last']:.2f}x channels_last"
                    )
                del runners, jr
                if checkpoint:
                    checkpoint(report)

    _set_renderer_ratios(report)
    report["meta"]["complete"] = True
    return report


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def _one_line(rec: Mapping[str, Any]) -> str:
    t, i = rec["train"], rec["inference"]
    mfu = f", MFU {rec['mfu'] * 100:.1f}%" if rec.get("mfu") else ""
    comp = f", compile {rec['compile']['train_total_s']:.1f} s" if rec.get("compile") else ""
    return (
        f"{rec['framework']}/{rec['mode']}: train {t['median_s'] * 1e3:.1f} ms ({t['images_per_s']:.1f} img/s), "
        f"inference {i['median_s'] * 1e3:.1f} ms ({i['images_per_s']:.1f} img/s){mfu}{comp}"
    )


# ==========================================================================
# Output
# ==========================================================================


def _fmt(v: Any, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown tables (settings, ratios, renderer, yardstick)."""
    meta = report["meta"]
    lines = [
        f"Device: {meta['device']}; jax {meta['jax_version']}"
        + (f", torch {meta['torch_version']} on {meta['torch_device']} ({meta['torch_threads']} threads)" if "torch_version" in meta else "")
        + f"; {meta['steps']} timed steps after {meta['warmup']} warm-up; XLA_FLAGS={meta['xla_flags'] or '(none)'}; {meta['date']}",
        "",
        "| framework | model | batch | px | precision | compile s | train ms median [min-max] | train img/s | train CPU s | "
        "inference ms | inference img/s | GFLOP/step | GFLOP/s | MFU | peak RSS MiB | device peak MiB |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        t, i = r["train"], r["inference"]
        comp = r["compile"]["train_total_s"] if r.get("compile") else None
        dev = (r.get("device_memory") or {}).get("peak_bytes_in_use")
        lines.append(
            f"| {r['framework']} {r['mode']} | {r['model']} | {r['batch_size']} | {r['image_size']} | {r['precision']} | "
            f"{_fmt(comp)} | {t['median_s'] * 1e3:.1f} [{t['min_s'] * 1e3:.1f}-{t['max_s'] * 1e3:.1f}] | {t['images_per_s']:.1f} | "
            f"{_fmt(t.get('cpu_median_s'), '.2f')} | "
            f"{i['median_s'] * 1e3:.1f} | {i['images_per_s']:.1f} | {_fmt(r['flops_per_step'], '.1f', 1e-9)} | "
            f"{_fmt(r['achieved_flops_per_s'], '.1f', 1e-9)} | {_fmt(r['mfu'], '.1f', 100)}{'%' if r['mfu'] else ''} | "
            f"{r['peak_host_rss_bytes'] / 2**20:.0f} | {_fmt(dev, '.0f', 2**-20)} |"
        )
    if report["ratios"]:
        lines += ["", "| model | batch | precision | train JAX/eager | train JAX/channels_last | inference JAX/eager | inference JAX/channels_last |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for q in report["ratios"]:
            lines.append(
                f"| {q['model']} | {q['batch_size']} | {q['precision']} | {q['train_jax_over_torch_eager']:.2f}x | "
                f"{q['train_jax_over_torch_channels_last']:.2f}x | {q['inference_jax_over_torch_eager']:.2f}x | "
                f"{q['inference_jax_over_torch_channels_last']:.2f}x |"
            )
    if report["renderer"]:
        lines += ["", "| renderer batch | px | compile s | ms median [min-max] | images/s | x FERAtt train img/s |", "|---:|---:|---:|---|---:|---:|"]
        for r in report["renderer"]:
            lines.append(
                f"| {r['batch_size']} | {r['image_size']} | {r['compile_s']:.1f} | {r['median_s'] * 1e3:.2f} "
                f"[{r['min_s'] * 1e3:.2f}-{r['max_s'] * 1e3:.2f}] | {r['images_per_s']:.0f} | {_fmt(r.get('over_train_step_images_per_s'))} |"
            )
    yard = report["yardstick"]
    parts = [f"XLA {k}: {v['gflops_per_s']:.1f} GFLOP/s" for k, v in yard.items() if k in PRECISIONS]
    if "torch_fp32" in yard:
        ty = yard["torch_fp32"]
        parts.append(f"torch fp32: {ty['eager_gflops_per_s']:.1f} (NCHW) / {ty['channels_last_gflops_per_s']:.1f} (channels_last) GFLOP/s")
    if parts:
        shape = next(iter(yard.values()))["shape"]
        lines += ["", f"Conv yardstick (3x3, B,H,W,Cin,Cout = {shape}, fastest call over "
                  "every measurement of the run): " + "; ".join(parts) + ". MFU is against the XLA figure of the same precision."]
    return "\n".join(lines) + "\n"


def write_outputs(report: Mapping[str, Any], json_path: str | None, markdown_path: str | None) -> None:
    for path, text in ((json_path, json.dumps(report, indent=2, sort_keys=True)), (markdown_path, to_markdown(report) if markdown_path else "")):
        if path:
            p = pathlib.Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)

