"""Time the JAX FERAtt train step under candidate CPU speed-ups (docs/performance.md).

Each variant is one process (XLA_FLAGS are read once, when the backend
starts), so run the variants one after the other, alternating, and compare
medians. Model-formulation
variants are applied by monkeypatching ``jax.lax.conv_general_dilated``
before the model is traced, so the models' source stays untouched while
they are being evaluated:

* ``small-conv-im2col``: a convolution whose input (or output) is smaller
  than its kernel in a spatial dimension (the 2x2 maps of the attention
  encoder's last stage and of the U-Net centre) is computed as pad + k*k
  slices + one matmul. XLA's algebraic simplifier otherwise swaps the
  operands of such a convolution (kernel larger than the image) and the CPU
  backend runs the swapped form through a slow generic loop (~1 GFLOP/s).

Usage (every option but ``--patch`` is ``feratt bench``'s)::

    python experiments/cpu_variants.py --patch small-conv-im2col --model ferattention --compare-torch \
        --json out.json
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \
        python experiments/cpu_variants.py --model ferattention --render-batch-size
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_ORIGINAL_CONV = jax.lax.conv_general_dilated


def im2col_conv(x_BHWC: jax.Array, kernel_HWIO: jax.Array, strides: tuple[int, int], padding: Any) -> jax.Array:
    """NHWC/HWIO convolution as explicit patches times the flattened kernel (one matmul)."""
    kh, kw, ci, co = kernel_HWIO.shape
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x_BHWC, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    sh, sw = strides
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    taps = [
        xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :] for i in range(kh) for j in range(kw)
    ]
    cols = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return jnp.dot(cols, kernel_HWIO.reshape(kh * kw * ci, co))


def _small_spatial_conv(lhs, rhs, window_strides, padding, *args, dimension_numbers=None, **kwargs):
    plain = dimension_numbers == ("NHWC", "HWIO", "NHWC") and not args and not kwargs and not isinstance(padding, str)
    if plain:
        kh, kw = rhs.shape[:2]
        (pt, pb), (pl, pr) = padding
        ho = (lhs.shape[1] + pt + pb - kh) // window_strides[0] + 1
        wo = (lhs.shape[2] + pl + pr - kw) // window_strides[1] + 1
        if kh * kw > 1 and (min(lhs.shape[1], ho) < kh or min(lhs.shape[2], wo) < kw):
            return im2col_conv(lhs, rhs, window_strides, padding)
    return _ORIGINAL_CONV(lhs, rhs, window_strides, padding, *args, dimension_numbers=dimension_numbers, **kwargs)


def _upsample_matrix(n: int) -> np.ndarray:
    """(2n, n) weights of the x2 bilinear upsample with half-pixel centres and edge clamp."""
    m = np.zeros((2 * n, n), np.float32)
    for i in range(n):
        m[2 * i, i] += 0.75
        m[2 * i, max(i - 1, 0)] += 0.25
        m[2 * i + 1, i] += 0.75
        m[2 * i + 1, min(i + 1, n - 1)] += 0.25
    return m


def upsample_bilinear_2x_matmul(x_BHWC: jax.Array) -> jax.Array:
    """The decoder's x2 bilinear upsample as two small matmuls (one per axis).

    Each output is 0.75 * x[i] + 0.25 * x[i -/+ 1], as in
    ``layers.upsample_bilinear_2x``; the other weights are exact zeros.
    """
    _, h, w, _ = x_BHWC.shape
    mh = jnp.asarray(_upsample_matrix(h), x_BHWC.dtype)
    mw = jnp.asarray(_upsample_matrix(w), x_BHWC.dtype)
    y = jnp.einsum("oh,bhwc->bowc", mh, x_BHWC)
    return jnp.einsum("pw,bowc->bopc", mw, y)


def _patch_conv() -> None:
    jax.lax.conv_general_dilated = _small_spatial_conv


def _patch_upsample() -> None:
    from feratt_jax.models import attention_unet

    attention_unet.upsample_bilinear_2x = upsample_bilinear_2x_matmul


PATCHES = {"small-conv-im2col": _patch_conv, "upsample-matmul": _patch_upsample}


def apply_patches(names: list[str]) -> None:
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; choose from {sorted(PATCHES)}")
        PATCHES[name]()


def main(argv: list[str] | None = None) -> int:
    """``--patch NAME`` (repeatable), then everything else is passed to ``feratt bench``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES))
    args, rest = p.parse_known_args(argv)
    apply_patches(args.patch)

    from feratt_jax.cli import main as feratt_main

    status = feratt_main(["bench", *rest])
    json_out = argparse.ArgumentParser(add_help=False)
    json_out.add_argument("--json", default=None)
    json_path = json_out.parse_known_args(rest)[0].json
    if status == 0 and json_path:
        # Record what was patched next to the figures.
        path = pathlib.Path(json_path)
        report = json.loads(path.read_text())
        report["meta"]["patches"] = args.patch
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
