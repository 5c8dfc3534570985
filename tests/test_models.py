"""Model zoo: output names and shapes, parameter counts, layer semantics, init."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feratt_jax.models import MODEL_NAMES, build_model
from feratt_jax.models.layers import (
    BatchNorm2d,
    Conv2d,
    Linear,
    conv_as_matmul,
    conv_needs_matmul_form,
    normalize_layer,
    upsample_bilinear_2x,
)


def _abstract_init(model, size=64, batch=2):
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda: model.init(rngs, x, train=False))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# Reference totals (docs/reference.md 1.6) minus the 513,000 parameters of the
# unused torchvision encoder.fc, which we do not build.
REFERENCE_COUNTS = [
    ("ferattention", 8, 32, {}, 46_305_737 - 513_000),
    ("ferattention", 7, 32, {}, 46_302_059 - 513_000),
    ("ferattentiongmm", 8, 32, {}, 46_318_313 - 513_000),
    ("ferattentiongmm", 7, 32, {}, 46_315_115 - 513_000),
    ("ferattentiongmm", 8, 64, {}, 46_334_985 - 513_000),
    ("ferattentionstn", 8, 32, {}, 46_354_457 - 513_000),
    ("ferattentiongmmstn", 8, 32, {}, 46_367_033 - 513_000),
    ("ferattention", 8, 32, {"backbone": "resnet18"}, 46_316_233 - 513_000),
    ("ferattention", 8, 32, {"backbone": "cvgg13"}, 43_894_473 - 513_000),
    ("ferattentiongmm", 8, 32, {"backbone": "resnet18"}, 46_328_809 - 513_000),
    ("ferattentiongmm", 8, 32, {"backbone": "cvgg13"}, 42_869_737 - 513_000),
]


@pytest.mark.parametrize("name,num_classes,dim,options,expected", REFERENCE_COUNTS)
def test_feratt_parameter_counts_match_reference(name, num_classes, dim, options, expected):
    variables = _abstract_init(build_model(name, num_classes=num_classes, dim=dim, **options))
    assert _count(variables["params"]) == expected


@pytest.mark.parametrize(
    "name,size,expected",
    [("preactresnet18", 32, 11_170_120), ("resnet18", 224, 11_180_616), ("cvgg13", 64, 8_758_856)],
)
def test_baseline_parameter_counts_match_reference(name, size, expected):
    variables = _abstract_init(build_model(name, num_classes=8), size=size)
    assert _count(variables["params"]) == expected


def test_narrow_baseline_has_the_same_shape_as_feratts_narrow_classifier():
    narrow = _abstract_init(build_model("preactresnet18", num_classes=8, initial_channels=16), size=32)
    feratt = _abstract_init(build_model("ferattention", num_classes=8, backbone_width=16, num_filters=8, num_feature_blocks=2))
    shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)  # noqa: E731
    assert shapes(narrow["params"]) == shapes(feratt["params"]["netclass"])
    with pytest.raises(ValueError, match="initial_channels"):
        build_model("resnet18", num_classes=8, initial_channels=16)


def test_batch_stats_count_is_mean_and_var_of_every_bn():
    # 53 BN layers (36 in the ResNet-34 encoder, conv2_bn, 16 in PreActResNet18);
    # the reference's 23,867 buffers add one num_batches_tracked per BN.
    variables = _abstract_init(build_model("ferattention", num_classes=8))
    assert _count(variables["batch_stats"]) == 23_867 - 53


EXPECTED_OUTPUTS = {
    "ferattention": {"logits", "reconstruction", "attention", "features"},
    "ferattentiongmm": {"logits", "embedding", "reconstruction", "attention", "features"},
    "ferattentionstn": {"logits", "reconstruction", "attention", "features", "theta", "warped"},
    "ferattentiongmmstn": {"logits", "embedding", "reconstruction", "attention", "features", "theta", "warped"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUTS))
@pytest.mark.parametrize("backbone", ["preactresnet18", "resnet18", "cvgg13"])
def test_feratt_output_names_and_shapes(name, backbone):
    b, c, dim = 3, 7, 16
    model = build_model(name, num_classes=c, dim=dim, backbone=backbone)
    x = jnp.zeros((b, 64, 64, 3))
    variables = _abstract_init(model)
    rngs = {"dropout": jax.random.key(2)}
    out, _ = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs), variables)
    assert set(out) == EXPECTED_OUTPUTS[name]
    expected = {
        "logits": (b, c),
        "embedding": (b, dim),
        "reconstruction": (b, 64, 64, 3),
        "attention": (b, 64, 64, c),
        "features": (b, 64, 64, c),
        "theta": (b, 2, 3),
        "warped": (b, 64, 64, 3),
    }
    for key, value in out.items():
        assert value.shape == expected[key], key


def test_attention_channels_decouple_from_num_classes():
    model = build_model("ferattention", num_classes=8, attention_channels=2)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3))), _abstract_init(model))
    assert out["attention"].shape == (1, 64, 64, 2)
    assert out["features"].shape == (1, 64, 64, 2)
    assert out["logits"].shape == (1, 8)


@pytest.mark.parametrize("name,size", [("preactresnet18", 32), ("resnet18", 96), ("cvgg13", 64)])
def test_baselines_with_and_without_embedding(name, size):
    for embedding in (False, True):
        model = build_model(name, num_classes=5, dim=12, embedding=embedding)
        variables = _abstract_init(model, size=size)
        out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3))), variables)
        assert out["logits"].shape == (2, 5)
        assert ("embedding" in out) == embedding
        if embedding:
            assert out["embedding"].shape == (2, 12)


def test_bf16_compute_keeps_float32_params():
    model = build_model("ferattentiongmm", num_classes=8, dtype=jnp.bfloat16)
    variables = _abstract_init(model)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3))), variables)
    assert out["reconstruction"].dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="nope", num_classes=8), "unknown model"),
        (dict(name="ferattention", num_classes=8, backbone="inception"), "unknown backbone"),
        (dict(name="ferattention", num_classes=8, colour=True), "does not take option"),
        (dict(name="ferattention", num_classes=1), "num_classes"),
        (dict(name="ferattentiongmm", num_classes=8, dim=0), "dim"),
    ],
)
def test_build_model_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_wrong_input_shapes_raise_clear_errors():
    model = build_model("ferattention", num_classes=8)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1))))
    with pytest.raises(ValueError, match="divisible by 64"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3))))
    stn = build_model("ferattentionstn", num_classes=8)
    with pytest.raises(ValueError, match="divisible by 64|STN expects"):
        jax.eval_shape(lambda: stn.init(jax.random.key(0), jnp.zeros((1, 128, 128, 3))))


def test_model_names_cover_the_reference_arch_names():
    # ferattention_2019: the paper-era arch atentionresnet34 (tests/test_feratt_2019.py).
    assert set(MODEL_NAMES) == set(EXPECTED_OUTPUTS) | {"preactresnet18", "resnet18", "cvgg13", "ferattention_2019"}


# --------------------------------------------------------------------------
# Layer semantics, checked by hand
# --------------------------------------------------------------------------


def test_upsample_bilinear_2x_hand_values():
    # One row [0, 4, 8]: align_corners=False x2 samples at -0.25, 0.25, 0.75,
    # 1.25, 1.75, 2.25 -> clamp at the ends: 0, 1, 3, 5, 7, 8.
    x = jnp.asarray([0.0, 4.0, 8.0]).reshape(1, 1, 3, 1)
    y = upsample_bilinear_2x(jnp.broadcast_to(x, (1, 2, 3, 1)))
    np.testing.assert_allclose(y[0, 0, :, 0], [0, 1, 3, 5, 7, 8])
    assert y.shape == (1, 4, 6, 1)


def test_upsample_bilinear_2x_equals_jax_image_resize():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    expected = jax.image.resize(x, (2, 10, 14, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(upsample_bilinear_2x(x), expected, atol=1e-6)


def test_batchnorm_train_uses_biased_var_and_stores_unbiased():
    x = jnp.asarray([1.0, 2.0, 3.0, 6.0]).reshape(1, 2, 2, 1)  # mean 3, biased var 3.5
    bn = BatchNorm2d()
    variables = bn.init(jax.random.key(0), x, train=True)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y.ravel(), (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5 + 1e-5), rtol=1e-6)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], [0.9 * 0 + 0.1 * 3], rtol=1e-6)
    np.testing.assert_allclose(stats["var"], [0.9 * 1 + 0.1 * (3.5 * 4 / 3)], rtol=1e-6)
    # Eval mode reads the running statistics.
    y_eval = bn.apply({"params": variables["params"], "batch_stats": stats}, x, train=False)
    np.testing.assert_allclose(y_eval.ravel(), (np.array([1, 2, 3, 6]) - 0.3) / np.sqrt(stats["var"][0] + 1e-5), rtol=1e-6)


def test_conv2d_matches_direct_correlation():
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
    conv = Conv2d(3, 3, stride=2, padding=1)
    variables = conv.init(jax.random.key(1), x)
    y = conv.apply(variables, x)
    k, b = np.asarray(variables["params"]["kernel"]), np.asarray(variables["params"]["bias"])
    xp = np.pad(np.asarray(x)[0], ((1, 1), (1, 1), (0, 0)))
    expected = np.zeros((3, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = xp[2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            expected[i, j] = np.einsum("hwc,hwco->o", patch, k) + b
    np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "hw, k, stride, pad, expected",
    [
        ((2, 2), 3, 1, 1, True),  # the attention encoder's conv5 / U-Net centre
        ((4, 4), 3, 2, 1, True),  # 4x4 -> 2x2 output
        ((1, 1), 3, 1, 1, True),
        ((8, 8), 3, 1, 1, False),
        ((2, 2), 1, 1, 0, False),  # 1x1 kernels are matmuls already
        ((64, 64), 9, 1, 4, False),
    ],
)
def test_conv_needs_matmul_form_only_below_kernel_size(hw, k, stride, pad, expected):
    assert conv_needs_matmul_form(hw, k, stride, pad) is expected


def test_conv_needs_matmul_form_counts_the_dilated_extent():
    # The paper-era DilateCenter on 4x4 maps: dilation 2 spans 5 pixels, dilation 1 spans 3.
    assert conv_needs_matmul_form((4, 4), 3, 1, 2, dilation=2) is True
    assert conv_needs_matmul_form((4, 4), 3, 1, 1, dilation=1) is False


@pytest.mark.parametrize(
    "hw, stride, dilation", [((2, 2), 1, 1), ((4, 4), 2, 1), ((3, 5), 2, 1), ((1, 1), 1, 1), ((4, 4), 1, 3), ((2, 3), 1, 2)]
)
def test_conv_as_matmul_equals_xla_convolution_and_its_gradients(hw, stride, dilation):
    kx, kk = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (2, *hw, 5), jnp.float32)
    w = jax.random.normal(kk, (3, 3, 5, 7), jnp.float32)
    pad = dilation  # "same" for a 3x3 kernel

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def matmul(x, w):
        return conv_as_matmul(x, w, stride, pad, dilation)

    np.testing.assert_allclose(matmul(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
    g_matmul = jax.grad(lambda x, w: jnp.sum(jnp.sin(matmul(x, w))), argnums=(0, 1))(x, w)
    g_xla = jax.grad(lambda x, w: jnp.sum(jnp.sin(xla(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g_matmul, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv2d_uses_matmul_form_on_small_maps():
    # The lowered HLO of a 3x3 conv on a 2x2 map has a dot and no convolution.
    x = jnp.ones((1, 2, 2, 4))
    conv = Conv2d(4, 3, padding=1)
    variables = conv.init(jax.random.key(0), x)
    hlo = jax.jit(conv.apply).lower(variables, x).as_text()
    assert "convolution" not in hlo and "dot_general" in hlo
    hlo_big = jax.jit(conv.apply).lower(variables, jnp.ones((1, 8, 8, 4))).as_text()
    assert "convolution" in hlo_big


def test_torch_default_init_is_uniform_with_fan_in_bound():
    conv = Conv2d(256, 3)
    params = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 64)))["params"]
    bound = 1 / math.sqrt(64 * 9)
    for leaf in (params["kernel"], params["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.95 * bound
    # Uniform(-a, a) has std a/sqrt(3).
    np.testing.assert_allclose(float(jnp.std(params["kernel"])), bound / math.sqrt(3), rtol=0.02)
    dense = Linear(300).init(jax.random.key(0), jnp.zeros((1, 400)))["params"]
    np.testing.assert_allclose(float(jnp.std(dense["kernel"])), 1 / math.sqrt(400) / math.sqrt(3), rtol=0.02)


def test_kaiming_fan_out_init_for_resnet_and_cvgg_convs():
    conv = Conv2d(128, 3, init_style="kaiming_fan_out")
    params = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 64)))["params"]
    np.testing.assert_allclose(float(jnp.std(params["kernel"])), math.sqrt(2 / (9 * 128)), rtol=0.03)
    assert float(jnp.max(jnp.abs(params["bias"]))) == 0.0


@pytest.mark.slow  # initialises the full-size model
def test_stn_starts_at_identity():
    model = build_model("ferattentionstn", num_classes=8)
    variables = _abstract_init(model)
    fc = variables["params"]["stn"]["fc_loc"]["2"]
    assert fc["kernel"].shape == (32, 6)
    concrete = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))  # one compile, not one per op
    np.testing.assert_array_equal(concrete["params"]["stn"]["fc_loc"]["2"]["kernel"], 0.0)
    np.testing.assert_array_equal(concrete["params"]["stn"]["fc_loc"]["2"]["bias"], [1, 0, 0, 0, 1, 0])


def test_normalize_layer_constants():
    x = jnp.ones((1, 1, 1, 3)) * 0.5
    expected = (0.5 * np.array([0.2023, 0.1994, 0.2010]) + np.array([0.4914, 0.4822, 0.4465]) - 0.5) / 0.5
    np.testing.assert_allclose(normalize_layer(x).ravel(), expected, rtol=1e-6)


@pytest.mark.slow  # compiles the full-size model in train and eval mode
def test_ferattention_forward_train_and_eval():
    """One real forward of the full-size model: BN stats move, outputs are sane."""
    model = build_model("ferattentionstn", num_classes=8)
    x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
    variables = jax.jit(lambda: model.init(jax.random.key(1), x))()
    out, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    for key, value in out.items():
        assert bool(jnp.all(jnp.isfinite(value))), key
    assert float(jnp.min(out["reconstruction"])) >= 0.0  # final ReLU
    # At init the STN is the identity, so warped == normalize(reconstruction)
    # up to the sampler's float error.
    np.testing.assert_allclose(out["theta"], np.broadcast_to([[1, 0, 0], [0, 1, 0]], (2, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(out["warped"], normalize_layer(out["reconstruction"]), atol=1e-5)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))


def test_reconstruction_relu_off_leaves_the_batchnorm_output_as_is():
    """model.reconstruction_relu=False: same parameters, the reconstruction is BN(.) with its negative part kept."""
    from feratt_jax import model_io

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))  # the U-Net needs multiples of 64
    small = dict(num_filters=8, backbone_width=8, num_feature_blocks=1)
    ref = build_model("ferattention", num_classes=8, **small)
    off = build_model("ferattention", num_classes=8, reconstruction_relu=False, **small)
    # Jitted: eagerly every op of the U-Net is dispatched and compiled on its own.
    variables = jax.jit(lambda k: ref.init(k, x, train=False))(jax.random.PRNGKey(1))
    assert jax.tree_util.tree_structure(jax.eval_shape(lambda: off.init(jax.random.PRNGKey(1), x, train=False))) == jax.tree_util.tree_structure(variables)
    r_ref = jax.jit(lambda v: ref.apply(v, x, train=False)["reconstruction"])(variables)
    r_off = jax.jit(lambda v: off.apply(v, x, train=False)["reconstruction"])(variables)
    assert float(r_off.min()) < 0.0  # a fresh BN output is about half negative
    np.testing.assert_array_equal(np.asarray(r_ref), np.maximum(np.asarray(r_off), 0.0))
    # A saved model keeps the option (and the reference's default adds nothing to its spec).
    assert model_io.module_options(off)["reconstruction_relu"] is False
    assert "reconstruction_relu" not in model_io.module_options(ref)
