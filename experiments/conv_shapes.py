"""Where the CPU train step's time goes: every convolution of a model, XLA vs PyTorch (docs/performance.md).

Collects the distinct convolutions of the model's forward (shape, kernel,
stride, padding, and how many times each occurs) from its jaxpr, then times
forward + backward (gradients for input and kernel) of each one in XLA and
in PyTorch (NCHW and channels_last), interleaved call by call in one
process, and prints a table sorted by XLA time plus the totals weighted by
the counts. The totals are the convolution part of one train step; the rest
of the step is everything else (BatchNorm, activations, upsampling, losses,
the optimizer).

Usage::

    python experiments/conv_shapes.py --model ferattention --batch-size 32 [--steps 5] [--json out.json]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution python experiments/conv_shapes.py \
        --patch small-conv-im2col
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def model_convolutions(model_name: str, batch_size: int, image_size: int = 64) -> collections.Counter:
    """Counter of (lhs shape, rhs shape, strides, padding) over the model's train-mode forward."""
    from feratt_jax.models import build_model

    model = build_model(model_name, num_classes=8)
    x = jnp.zeros((batch_size, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x[:1]))
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    found: collections.Counter = collections.Counter()

    def walk(jpr: Any) -> None:
        for eqn in jpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                p = eqn.params
                found[(tuple(lhs), tuple(rhs), tuple(p["window_strides"]), tuple(tuple(q) for q in p["padding"]))] += 1
            for v in eqn.params.values():
                if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                    walk(v.jaxpr)
                elif hasattr(v, "eqns"):
                    walk(v)

    walk(jaxpr.jaxpr)
    return found


def _time(fn, steps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ferattention")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--patch", action="append", default=[], help="a cpu_variants.py patch (e.g. small-conv-im2col)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    # Shapes come from the unpatched model; the patch changes how they are computed.
    convs = model_convolutions(args.model, args.batch_size)
    if args.patch:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import cpu_variants

        cpu_variants.apply_patches(args.patch)
    torch = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for (lhs, rhs, strides, padding), count in convs.items():
        kh, kw, ci, co = rhs
        x = jax.random.normal(jax.random.key(0), lhs)
        k = jax.random.normal(jax.random.key(1), rhs) * 0.05

        def conv(x, k, strides=strides, padding=padding):
            # Looked up at call time so that a --patch applies.
            return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

        y_shape = jax.eval_shape(conv, x, k).shape
        dy = jax.random.normal(jax.random.key(2), y_shape)
        fwd_bwd = jax.jit(lambda x, k, dy: jax.vjp(conv, x, k)[1](dy))
        jax_fn = lambda: jax.block_until_ready(fwd_bwd(x, k, dy))  # noqa: E731
        flops = 2.0 * np.prod(y_shape) * kh * kw * ci  # forward, nominal
        row = {"lhs": list(lhs), "kernel": list(rhs), "strides": list(strides), "padding": [list(q) for q in padding],
               "count": count, "gflop_fwd_bwd": 3 * flops / 1e9}  # fmt: skip
        timers = {"xla": jax_fn}
        if torch is not None:
            conv_t = torch.nn.Conv2d(ci, co, (kh, kw), strides, [q[0] for q in padding], bias=False)
            for mode in ("eager", "channels_last"):
                fmt = torch.channels_last if mode == "channels_last" else torch.contiguous_format
                m = conv_t.to(memory_format=fmt)
                xt = torch.randn(lhs[0], ci, lhs[1], lhs[2]).contiguous(memory_format=fmt).requires_grad_()
                gt = torch.randn(y_shape[0], co, y_shape[1], y_shape[2]).contiguous(memory_format=fmt)

                def torch_fn(m=m, xt=xt, gt=gt):
                    xt.grad = None
                    m.weight.grad = None
                    m(xt).backward(gt)

                timers[f"torch_{mode}"] = torch_fn
        # Interleave: one call of each, repeated, keeping each one's fastest.
        best = {n: float("inf") for n in timers}
        for f in timers.values():
            f()
        for _ in range(args.steps):
            for n, f in timers.items():
                t0 = time.perf_counter()
                f()
                best[n] = min(best[n], time.perf_counter() - t0)
        for n, t in best.items():
            row[f"{n}_ms"] = 1e3 * t
            row[f"{n}_gflops"] = row["gflop_fwd_bwd"] / t
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    rows.sort(key=lambda r: -r["xla_ms"] * r["count"])
    names = [n for n in ("xla", "torch_eager", "torch_channels_last") if f"{n}_ms" in rows[0]]
    print(f"{args.model} batch {args.batch_size}, fwd+bwd per convolution, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}, "
          f"patches={args.patch}")
    print("| input (B,H,W,C) | kernel | stride | n | GFLOP (fwd+bwd, x n) | " + " | ".join(f"{n} ms (x n)" for n in names) + " |")
    print("|---|---|---|---:|---:|" + "---:|" * len(names))
    totals = {n: 0.0 for n in names}
    for r in rows:
        for n in names:
            totals[n] += r[f"{n}_ms"] * r["count"]
        cells = " | ".join(f"{r[f'{n}_ms'] * r['count']:.1f} ({r[f'{n}_gflops']:.0f} GF/s)" for n in names)
        print(f"| {tuple(r['lhs'])} | {r['kernel'][0]}x{r['kernel'][1]} {r['kernel'][2]}->{r['kernel'][3]} | {r['strides'][0]} | "
              f"{r['count']} | {r['gflop_fwd_bwd'] * r['count']:.1f} | {cells} |")
    total_gflop = sum(r["gflop_fwd_bwd"] * r["count"] for r in rows)
    print(f"| total | | | {sum(r['count'] for r in rows)} | {total_gflop:.1f} | "
          + " | ".join(f"{totals[n]:.0f} ({total_gflop / totals[n] * 1e3:.0f} GF/s)" for n in names) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "batch_size": args.batch_size, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       "rows": rows, "totals_ms": totals, "total_gflop": total_gflop}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
