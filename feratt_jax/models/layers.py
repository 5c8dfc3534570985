"""Layers with PyTorch semantics, shared by every model in the package.

Parameter names follow one rule so that checkpoints convert mechanically:
the path of a Flax variable joined with "." is the key of the matching
tensor in the reference's PyTorch state_dict, with the leaf renamed
(``kernel``/``scale`` <-> ``weight``, ``mean``/``var`` <->
``running_mean``/``running_var``). Modules that PyTorch keeps in an
``nn.Sequential`` are therefore named "0", "1", ... here.

Initialisers reproduce PyTorch's defaults per layer type so that a model
trained from scratch starts where the reference starts.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

# --------------------------------------------------------------------------
# Initialisers
# --------------------------------------------------------------------------

# PyTorch's Conv2d/Linear default: kaiming_uniform_(a=sqrt(5)), which works
# out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling(1/3, fan_in,
# uniform) has bound sqrt(3 * (1/3) / fan_in), the same thing.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# torchvision ResNet and CVGG convs: kaiming_normal_(mode="fan_out",
# nonlinearity="relu"), i.e. N(0, 2 / (k*k*out_channels)), untruncated.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# CVGG linear layers: N(0, 0.01), bias 0.
cvgg_linear_init = nn.initializers.normal(stddev=0.01)


def torch_default_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# --------------------------------------------------------------------------
# Conv / Linear / BatchNorm
# --------------------------------------------------------------------------


def per_channel(v_C: jax.Array, ndim: int) -> jax.Array:
    """Reshape a (C,) vector to broadcast over the last axis of an ndim array.

    Written out explicitly because the tests run with
    ``jax_numpy_rank_promotion="raise"`` to catch accidental broadcasting.
    """
    return v_C.reshape((1,) * (ndim - 1) + (-1,))


def conv_needs_matmul_form(hw: tuple[int, int], kernel_size: int, stride: int, padding: int, dilation: int = 1) -> bool:
    """True for a convolution whose input or output map is smaller than its kernel.

    XLA's algebraic simplifier swaps the operands of such a convolution (the
    kernel becomes the "image") and the CPU backend runs the swapped form
    through a generic loop at ~1 GFLOP/s: the six 3x3 512->512 convolutions on
    the attention encoder's 2x2 maps took half of the FERAtt train step
    (docs/performance.md, section 1). As one matmul they run ~40x faster.
    """
    if kernel_size == 1:
        return False
    span = dilation * (kernel_size - 1) + 1  # the dilated kernel's extent
    out = [(n + 2 * padding - span) // stride + 1 for n in hw]
    return min(*hw, *out) < span


def conv_as_matmul(x_BHWC: jax.Array, kernel_HWIO: jax.Array, stride: int, padding: int, dilation: int = 1) -> jax.Array:
    """A convolution as explicit patches (pad + k*k strided slices) times the flattened kernel.

    Same sum as ``conv_general_dilated`` in another order (float32 results
    differ by rounding, ~1e-6 relative); same parameters, same gradients up to
    rounding. Only used where the patch tensor is small (maps below kernel size).
    """
    kh, kw, ci, co = kernel_HWIO.shape
    d = dilation
    xp = jnp.pad(x_BHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (xp.shape[1] - d * (kh - 1) - 1) // stride + 1
    wo = (xp.shape[2] - d * (kw - 1) - 1) // stride + 1
    taps_BHWC = [
        xp[:, i * d : i * d + (ho - 1) * stride + 1 : stride, j * d : j * d + (wo - 1) * stride + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    # Tap order (i, j, c) matches the HWIO kernel flattened row-major.
    return jnp.dot(jnp.concatenate(taps_BHWC, axis=-1), kernel_HWIO.reshape(kh * kw * ci, co))


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` in NHWC: symmetric explicit padding, HWIO kernel.

    ``init_style`` picks the initialiser family: "torch" (PyTorch default,
    also for the bias), "kaiming_fan_out" (torchvision ResNet / CVGG; bias 0).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    init_style: str = "torch"
    dtype: Dtype = jnp.float32
    dilation: int = 1

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        in_features = x_BHWC.shape[-1]
        k = self.kernel_size
        fan_in = in_features * k * k
        if self.init_style == "torch":
            kernel_init, bias_init = torch_default_kernel_init, torch_default_bias_init(fan_in)
        elif self.init_style == "kaiming_fan_out":
            kernel_init, bias_init = kaiming_normal_fan_out, nn.initializers.zeros
        else:
            raise ValueError(f"unknown init_style {self.init_style!r}")
        kernel = self.param("kernel", kernel_init, (k, k, in_features, self.features), jnp.float32)
        x, w = x_BHWC.astype(self.dtype), kernel.astype(self.dtype)
        if conv_needs_matmul_form(x.shape[1:3], k, self.stride, self.padding, self.dilation):
            y = conv_as_matmul(x, w, self.stride, self.padding, self.dilation)
        else:
            pad = self.padding
            y = jax.lax.conv_general_dilated(
                x,
                w,
                window_strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                rhs_dilation=(self.dilation, self.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        if self.use_bias:
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + per_channel(bias.astype(self.dtype), y.ndim)
        return y


class ConvTranspose2d(nn.Module):
    """``torch.nn.ConvTranspose2d`` in NHWC (no output_padding, groups or dilation).

    The kernel is stored as (kH, kW, out, in): the generic HWIO <-> OIHW
    transpose of the checkpoint converter then yields PyTorch's own
    (in, out, kH, kW) layout, and Flax's fan-in rule (axis -2 times the
    receptive field) gives PyTorch's default init bound 1/sqrt(out * k * k).
    Computed as the equivalent forward convolution: the input dilated by the
    stride, padded by k - 1 - padding, with the kernel flipped in space.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        k = self.kernel_size
        fan_in = self.features * k * k
        kernel = self.param("kernel", torch_default_kernel_init, (k, k, self.features, x_BHWC.shape[-1]), jnp.float32)
        w_HWIO = jnp.flip(kernel.astype(self.dtype), axis=(0, 1)).transpose(0, 1, 3, 2)
        edge = k - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x_BHWC.astype(self.dtype),
            w_HWIO,
            window_strides=(1, 1),
            padding=((edge, edge), (edge, edge)),
            lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        bias = self.param("bias", torch_default_bias_init(fan_in), (self.features,), jnp.float32)
        return y + per_channel(bias.astype(self.dtype), y.ndim)


class Linear(nn.Module):
    """``torch.nn.Linear``: kernel (in, out), PyTorch default or CVGG init."""

    features: int
    use_bias: bool = True
    init_style: str = "torch"
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        if self.init_style == "torch":
            kernel_init, bias_init = torch_default_kernel_init, torch_default_bias_init(fan_in)
        elif self.init_style == "cvgg":
            kernel_init, bias_init = cvgg_linear_init, nn.initializers.zeros
        else:
            raise ValueError(f"unknown init_style {self.init_style!r}")
        kernel_init = self.kernel_init or kernel_init
        bias_init = self.bias_init or bias_init
        kernel = self.param("kernel", kernel_init, (fan_in, self.features), jnp.float32)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + per_channel(bias.astype(self.dtype), y.ndim)
        return y


def statistics_dtype(dtype: Dtype) -> Any:
    """The dtype for reductions (BN statistics, pooling): at least float32, float64 when computing in float64."""
    return jnp.promote_types(jnp.float32, dtype)


class BatchNorm2d(nn.Module):
    """``torch.nn.BatchNorm2d`` with PyTorch's exact running-statistics rule.

    Training normalises with the biased batch variance but stores the
    *unbiased* one (n / (n - 1)) in the running average, as PyTorch does;
    Flax's own BatchNorm stores the biased one, which would make eval-mode
    outputs drift from a converted reference model. Statistics are computed
    in float32 for float32/bfloat16 compute and in float64 for float64. Under ``jax.jit`` with a batch
    sharded over a ("data",) mesh the reductions are global, so the
    statistics are those of the global batch.

    ``momentum`` is Flax's convention: new = momentum * old + (1 - momentum)
    * batch; 0.9 equals PyTorch's momentum=0.1.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        x32 = x.astype(statistics_dtype(self.dtype))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            # E[(x - mean)^2] rather than E[x^2] - mean^2: no cancellation.
            var = jnp.mean(jnp.square(x32 - per_channel(mean, x.ndim)), axis=axes)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = x32 * per_channel(inv, x.ndim) + per_channel(bias - mean * inv, x.ndim)
        return y.astype(self.dtype)


# --------------------------------------------------------------------------
# Functional layers
# --------------------------------------------------------------------------


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(2, 2)``: floor mode, odd trailing rows/cols dropped."""
    return nn.max_pool(x_BHWC, (2, 2), strides=(2, 2), padding="VALID")


def avg_pool(x_BHWC: jax.Array, k: int) -> jax.Array:
    """``F.avg_pool2d(x, k)``: non-overlapping k x k mean."""
    return nn.avg_pool(x_BHWC, (k, k), strides=(k, k), padding="VALID")


def _upsample_axis_2x(x: jax.Array, axis: int) -> jax.Array:
    """Bilinear x2 along one axis with half-pixel centres (align_corners=False).

    Output 2i samples source i - 1/4 and output 2i+1 samples i + 1/4, so the
    weights are (1/4, 3/4) with the neighbour clamped at the border, exactly
    what PyTorch's interpolate does (it clamps negative source coordinates to
    0). Written as shifts and a weighted sum so XLA fuses it; a general
    resize would go through a gather or a dense matrix.
    """
    n = x.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    stacked = jnp.stack([even, odd], axis=axis + 1)
    new_shape = x.shape[:axis] + (2 * n,) + x.shape[axis + 1 :]
    return stacked.reshape(new_shape)


def upsample_bilinear_2x(x_BHWC: jax.Array) -> jax.Array:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``."""
    return _upsample_axis_2x(_upsample_axis_2x(x_BHWC, 1), 2)


def resize_bilinear(x_BHWC: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize with half-pixel centres, PyTorch align_corners=False.

    Used for upsampling only (backbone inputs of 224); for upsampling,
    ``jax.image.resize`` with its triangle kernel equals PyTorch's bilinear
    (out-of-range taps are dropped and the weights renormalised, which is
    PyTorch's clamp at the border).
    """
    b, h, w, c = x_BHWC.shape
    if height < h or width < w:
        raise ValueError(f"resize_bilinear only upsamples; got {h}x{w} -> {height}x{width}")
    return jax.image.resize(x_BHWC, (b, height, width, c), method="bilinear", antialias=False)


# The reference's fixed "normalize_layer": the CIFAR-10 mean/std, mapped so
# that y = ((x * std + mean) - 0.5) / 0.5 per channel.
NORMALIZE_MEAN = (0.4914, 0.4822, 0.4465)
NORMALIZE_STD = (0.2023, 0.1994, 0.2010)


def normalize_layer(x_BHWC: jax.Array) -> jax.Array:
    """The reference's non-trainable per-channel affine map applied to I_att."""
    channels = x_BHWC.shape[-1]
    if channels != 3:
        raise ValueError(f"normalize_layer expects 3 channels, got {channels}")
    mean = jnp.asarray(NORMALIZE_MEAN, x_BHWC.dtype)
    std = jnp.asarray(NORMALIZE_STD, x_BHWC.dtype)
    return x_BHWC * per_channel(std / 0.5, 4) + per_channel((mean - 0.5) / 0.5, 4)
