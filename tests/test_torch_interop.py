"""PyTorch interop: checkpoint conversion, numerical parity with a PyTorch twin, export formats.

Parity tests build the PyTorch model (feratt_jax.interop.torch_model) with
random weights (BN affine parameters and running statistics randomised too,
and the STN regressor moved off the identity so the warp matters), convert its
state_dict, and compare every named output of the Flax model in eval mode
(1e-4 abs) and train mode (1e-3 abs), the BN running statistics after one
train-mode forward, the loss terms, and the per-parameter gradients of the
total loss (1e-3 relative norm). Batch 2 at 64x64, fp32.

Full-size FERAtt models have 45M parameters; the default-backbone
``ferattention`` parity and gradient tests run by default, the other
variants are marked slow.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402

from feratt_jax import losses  # noqa: E402
from feratt_jax.interop import torch_losses  # noqa: E402
from feratt_jax.optimizers import torch_adam  # noqa: E402
from feratt_jax.interop.torch_checkpoint import (  # noqa: E402
    export_reference_checkpoint,
    insert_attention_encoder,
    load_reference_checkpoint,
    load_torchvision_resnet34,
    state_dict_to_variables,
    variables_to_state_dict,
)
from feratt_jax.interop.torch_model import TorchvisionResNet, build_torch_model  # noqa: E402
from feratt_jax.model_io import CheckpointError, abstract_variables, load_model, save_model  # noqa: E402
from feratt_jax.models import build_model  # noqa: E402
from torch_parity import randomize_bn_and_stn_  # noqa: E402

C = 8
B = 2
EVAL_ATOL = 1e-4
TRAIN_ATOL = 1e-3
LOSS_RTOL = 1e-5


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Make BN layers and the STN regressor non-trivial so that the checks have teeth."""
    randomize_bn_and_stn_(model, seed)


def _no_dropout_(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _skip_flax_dropout(next_fun, args, kwargs, context):  # noqa: ANN001, ANN202
    """flax interceptor: Dropout is the identity (torch's dropout is off too), so train-mode
    parity with the cvgg head compares everything but the random masks."""
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
        return args[0]
    return next_fun(*args, **kwargs)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _inputs(seed: int = 0) -> tuple[torch.Tensor, jax.Array]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, 64, 64, generator=g)
    return x, jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def _pair(name: str, seed: int = 0, **options):  # noqa: ANN202
    torch.manual_seed(seed)
    tm = build_torch_model(name, num_classes=C, **options)
    _randomize_(tm, seed + 1)
    _no_dropout_(tm)
    fm = build_model(name, num_classes=C, **options)
    variables = state_dict_to_variables(tm.state_dict(), abstract_variables(fm))
    return tm, fm, variables


def _assert_outputs_close(torch_out: dict, jax_out: dict, atol: float, what: str) -> None:
    assert set(torch_out) == set(jax_out), (sorted(torch_out), sorted(jax_out))
    for key in torch_out:
        a, b = _nhwc(torch_out[key]), np.asarray(jax_out[key])
        assert a.shape == b.shape, (what, key, a.shape, b.shape)
        err = float(np.max(np.abs(a - b)))
        assert err <= atol, f"{what} output {key!r}: max abs diff {err:.3g} > {atol}"


def _flat_torch_stats(tm: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in tm.state_dict().items() if "running_" in k}


def _flat_jax_stats(batch_stats: dict) -> dict[str, np.ndarray]:
    ren = {"mean": "running_mean", "var": "running_var"}
    return {".".join(p[:-1] + (ren[p[-1]],)): np.asarray(v) for p, v in flatten_dict(batch_stats).items()}


FERATT_CONFIGS = [
    pytest.param("ferattention", {}, id="ferattention"),
    pytest.param("ferattentiongmm", {}, id="ferattentiongmm", marks=pytest.mark.slow),
    pytest.param("ferattentionstn", {}, id="ferattentionstn", marks=pytest.mark.slow),
    pytest.param("ferattentiongmmstn", {}, id="ferattentiongmmstn", marks=pytest.mark.slow),
    pytest.param("ferattention", {"backbone": "resnet18"}, id="ferattention-resnet18", marks=pytest.mark.slow),
    pytest.param("ferattentiongmm", {"backbone": "resnet18"}, id="ferattentiongmm-resnet18", marks=pytest.mark.slow),
    pytest.param("ferattentionstn", {"backbone": "cvgg13"}, id="ferattentionstn-cvgg13", marks=pytest.mark.slow),
    pytest.param(
        "ferattentiongmmstn",
        {"backbone": "cvgg13", "gmmstn_cvgg_skips_warp": True},
        id="ferattentiongmmstn-cvgg13-skipwarp",
        marks=pytest.mark.slow,
    ),
]
BASELINE_CONFIGS = [
    pytest.param("preactresnet18", {}, id="preactresnet18"),
    pytest.param("resnet18", {}, id="resnet18"),
    pytest.param("cvgg13", {}, id="cvgg13"),
    pytest.param("preactresnet18", {"embedding": True}, id="preactresnet18-emb"),
    pytest.param("cvgg13", {"embedding": True}, id="cvgg13-emb"),
]


# --------------------------------------------------------------------------
# Key sets
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options",
    [pytest.param(*p.values, id=p.id) for p in FERATT_CONFIGS + BASELINE_CONFIGS],  # cheap: no marks
)
def test_state_dict_keys_and_shapes_match_the_flax_variables(name: str, options: dict) -> None:
    tm = build_torch_model(name, num_classes=C, **options)
    fm = build_model(name, num_classes=C, **options)
    sd = {k: v for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = variables_to_state_dict(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(fm)), num_batches_tracked=None
    )
    assert set(sd) == set(ours)
    for k in sd:
        assert tuple(sd[k].shape) == ours[k].shape, k


def test_reference_key_layout_with_encoder_alias() -> None:
    # docs/reference.md 1.6: 609 keys for C=8 (encoder twice + encoder.fc), 46,305,737 params incl. the dead fc.
    tm = build_torch_model("ferattention", num_classes=C, include_encoder_alias=True)
    assert len(tm.state_dict()) == 609
    assert sum(p.numel() for p in tm.parameters()) == 46_305_737
    fm = build_model("ferattention", num_classes=C)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(fm))
    ours = variables_to_state_dict(zeros, include_encoder_alias=True)
    assert set(ours) == set(tm.state_dict())


# --------------------------------------------------------------------------
# Forward parity
# --------------------------------------------------------------------------


def _check_forward_parity(name: str, options: dict) -> None:
    tm, fm, variables = _pair(name, **options)
    x_t, x_j = _inputs()

    @jax.jit
    def both(v, x):  # noqa: ANN001, ANN202
        with nn.intercept_methods(_skip_flax_dropout):
            ev = fm.apply(v, x, train=False)
            tr, updates = fm.apply(v, x, train=True, mutable=["batch_stats"])
        return ev, tr, updates.get("batch_stats", {})

    ev_j, tr_j, stats_j = both(variables, x_j)
    tm.eval()
    with torch.no_grad():
        ev_t = tm(x_t)
    tm.train()
    with torch.no_grad():
        tr_t = tm(x_t)
    _assert_outputs_close(ev_t, ev_j, EVAL_ATOL, "eval")
    _assert_outputs_close(tr_t, tr_j, TRAIN_ATOL, "train")
    stats_t = _flat_torch_stats(tm)
    stats_jn = _flat_jax_stats(stats_j)
    assert set(stats_t) == set(stats_jn)
    for k in stats_t:
        np.testing.assert_allclose(stats_jn[k], stats_t[k], rtol=1e-4, atol=1e-5, err_msg=k)

    if "reconstruction" in tr_t:  # the reference's loss terms on the train-mode outputs
        x_org_t, labels_t, theta_t = _batch()
        lam, perm = 0.3, [1, 0]
        terms_t = _torch_terms(tr_t, x_org_t, labels_t, theta_t, lam, torch.tensor(perm))
        x_org_j = jnp.asarray(x_org_t.permute(0, 2, 3, 1).numpy())
        terms_j = _jax_terms(tr_j, x_org_j, jnp.asarray(labels_t.numpy()), jnp.asarray(theta_t.numpy()), lam, jnp.asarray(perm))
        assert set(terms_t) == set(terms_j)
        for k in terms_t:
            a, b = float(terms_t[k]), float(terms_j[k])
            assert abs(a - b) <= LOSS_RTOL * abs(a), f"loss {k}: torch {a!r} jax {b!r}"


@pytest.mark.parametrize("name,options", FERATT_CONFIGS)
def test_feratt_forward_parity(name: str, options: dict) -> None:
    _check_forward_parity(name, options)


@pytest.mark.parametrize("name,options", BASELINE_CONFIGS)
def test_baseline_forward_parity(name: str, options: dict) -> None:
    _check_forward_parity(name, options)


# --------------------------------------------------------------------------
# Losses and gradients
# --------------------------------------------------------------------------


def _batch(seed: int = 3):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    x_org = torch.rand(B, 3, 64, 64, generator=g)
    labels = torch.tensor([3.0, 5.0])
    theta = torch.eye(2, 3).repeat(B, 1, 1) + 0.1 * torch.randn(B, 2, 3, generator=g)
    return x_org, labels, theta


def _torch_terms(out: dict, x_org, labels, theta, lam: float, perm) -> dict:  # noqa: ANN001
    terms = {
        "cross_entropy": torch_losses.cross_entropy(out["logits"], labels),
        "reconstruction": torch_losses.att_loss(x_org, out["reconstruction"]),
    }
    if "theta" in out:
        terms["stn"] = torch_losses.stn_loss(x_org, out["theta"], theta)
    if "embedding" in out:
        terms["gaussian_space"] = torch_losses.dgmm_loss(out["embedding"], labels, lam, perm, num_classes=C)
        terms["embedding_norm"] = out["embedding"].norm(2)
    return terms


def _jax_terms(out: dict, x_org, labels, theta, lam: float, perm) -> dict:  # noqa: ANN001
    terms = {
        "cross_entropy": losses.cross_entropy(out["logits"], labels),
        "reconstruction": losses.reconstruction_loss(x_org, out["reconstruction"]),
    }
    if "theta" in out:
        terms["stn"] = losses.stn_loss(x_org, out["theta"], theta)
    if "embedding" in out:
        terms["gaussian_space"] = losses.gaussian_space_loss_with_mix(
            out["embedding"], labels, lam, perm, num_classes=C, mixup_label_mode="reference",
            class_mean_includes_self=True,
        )
        terms["embedding_norm"] = losses.embedding_norm(out["embedding"])
    return terms


def _total(terms: dict) -> object:
    # The reference's attgmmstnnet/attnet totals (embedding norm weighted 1e-4), backward on loss * B.
    return B * sum(v * (1e-4 if k == "embedding_norm" else 1.0) for k, v in terms.items())


GRAD_CONFIGS = [
    pytest.param("ferattention", id="ferattention"),
    pytest.param("ferattentiongmmstn", id="ferattentiongmmstn", marks=pytest.mark.slow),
]


@contextlib.contextmanager
def _x64() -> Iterator[None]:
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        with enable(True):
            yield
        return
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _gradients(name: str, dtype: np.dtype) -> tuple[dict, dict, dict, dict]:
    """Loss terms and per-parameter gradients (reference names, float64 NumPy) of the
    reference's total loss in train mode, from PyTorch and from Flax, computed in ``dtype``."""
    tm, _, variables = _pair(name, seed=7)
    x_t, _ = _inputs(seed=8)
    x_org_t, labels_t, theta_t = _batch()
    lam, perm = 0.3, [1, 0]
    tdtype = torch.float64 if dtype == np.float64 else torch.float32

    tm = tm.to(tdtype).train()
    terms_t = _torch_terms(tm(x_t.to(tdtype)), x_org_t.to(tdtype), labels_t, theta_t.to(tdtype), lam, torch.tensor(perm))
    _total(terms_t).backward()
    grads_t = {k: np.zeros(tuple(p.shape)) if p.grad is None else p.grad.double().numpy() for k, p in tm.named_parameters()}

    fm = build_model(name, num_classes=C, dtype=jnp.dtype(dtype))
    nhwc = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy().astype(dtype))  # noqa: E731
    v = jax.tree.map(lambda a: np.asarray(a, dtype), variables)
    x_j, x_org_j, theta_j = nhwc(x_t), nhwc(x_org_t), jnp.asarray(theta_t.numpy().astype(dtype))

    def loss_fn(params):  # noqa: ANN001, ANN202
        out, _ = fm.apply({"params": params, "batch_stats": v["batch_stats"]}, x_j, train=True, mutable=["batch_stats"])
        terms = _jax_terms(out, x_org_j, jnp.asarray(labels_t.numpy()), theta_j, lam, jnp.asarray(perm))
        return _total(terms), terms

    (_, terms_j), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(v["params"])
    grads_j = {k: np.asarray(g, np.float64) for k, g in variables_to_state_dict({"params": grads}, num_batches_tracked=None).items()}
    as_float = lambda d: {k: float(np.asarray(t.detach() if hasattr(t, "detach") else t)) for k, t in d.items()}  # noqa: E731
    return as_float(terms_t), grads_t, as_float(terms_j), grads_j


def _worst_relative(ours: dict, ref: dict) -> tuple[float, str]:
    assert set(ours) == set(ref)
    scale = {k: float(np.linalg.norm(ref[k])) for k in ref}
    # reconstruction.1.bias feeds a train-mode BN, so its exact gradient is 0 and both sides
    # return rounding noise: judge it against the layer's weight-gradient scale.
    scale["reconstruction.1.bias"] = max(scale["reconstruction.1.bias"], scale["reconstruction.1.weight"])
    return max((float(np.linalg.norm(ours[k] - ref[k])) / max(scale[k], 1e-30), k) for k in ref)


@pytest.mark.parametrize("name", GRAD_CONFIGS)
def test_train_mode_gradients_match_in_float64(name: str) -> None:
    """Per-parameter gradients of the reference's total loss (train mode) to float64 rounding.

    In float64 on both sides: with random weights and batch 2, train-mode BN
    makes the encoder gradients ill-conditioned, so fp32 PyTorch is itself
    ~3e-3 (B=2) / ~1.5e-3 (B=8) away from its own float64 gradients in
    attention_map.conv2-conv4, and a check in fp32 would measure rounding.
    In float64 every layer (BN statistics and heads included) computes in
    float64, and the two frameworks agree to ~1e-13 (observed 6.7e-14 for
    ferattention): the bound 1e-9 leaves room for summation order only.
    ``test_train_mode_gradients_fp32`` checks the fp32 path.
    """
    with _x64():
        terms_t, grads_t, terms_j, grads_j = _gradients(name, np.float64)
    for k in terms_t:
        assert abs(terms_t[k] - terms_j[k]) <= 1e-12 * abs(terms_t[k]), (k, terms_t[k], terms_j[k])
    worst = _worst_relative(grads_j, grads_t)
    assert worst[0] <= 1e-9, f"worst relative gradient error {worst[0]:.3g} at {worst[1]}"


@pytest.mark.slow
def test_train_mode_gradients_fp32() -> None:
    """fp32 gradients: within the fp32 noise floor described above (bound 5e-2; observed ~1e-2)."""
    terms_t, grads_t, terms_j, grads_j = _gradients("ferattention", np.float32)
    for k in terms_t:
        assert abs(terms_t[k] - terms_j[k]) <= LOSS_RTOL * abs(terms_t[k]), (k, terms_t[k], terms_j[k])
    worst = _worst_relative(grads_j, grads_t)
    assert worst[0] <= 5e-2, f"worst relative gradient error {worst[0]:.3g} at {worst[1]}"


def test_loss_functions_match_the_reference_definitions() -> None:
    g = torch.Generator().manual_seed(11)
    x_org = torch.rand(4, 3, 64, 64, generator=g)
    att = torch.rand(4, 3, 64, 64, generator=g) * 1.5
    logits = torch.randn(4, C, generator=g)
    z = 0.25 * torch.randn(6, 16, generator=g)  # close enough to the class means for a non-trivial loss
    theta = torch.eye(2, 3).repeat(4, 1, 1) + 0.2 * torch.randn(4, 2, 3, generator=g)
    target = torch.eye(2, 3).repeat(4, 1, 1) + 0.2 * torch.randn(4, 2, 3, generator=g)
    nhwc = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy())  # noqa: E731
    pairs = {
        "cross_entropy": (
            torch_losses.cross_entropy(logits, torch.tensor([0.0, 3.0, 7.0, 3.0])),
            losses.cross_entropy(jnp.asarray(logits.numpy()), jnp.asarray([0.0, 3.0, 7.0, 3.0])),
        ),
        "reconstruction": (torch_losses.att_loss(x_org, att), losses.reconstruction_loss(nhwc(x_org), nhwc(att))),
        "stn": (
            torch_losses.stn_loss(x_org, theta, target),
            losses.stn_loss(nhwc(x_org), jnp.asarray(theta.numpy()), jnp.asarray(target.numpy())),
        ),
        "embedding_norm": (z.norm(2), losses.embedding_norm(jnp.asarray(z.numpy()))),
    }
    labels = torch.tensor([0.0, 2.0, 2.0, 5.0, 0.0, 2.0])
    perm = torch.tensor([1, 2, 0, 5, 4, 3])
    for lam in (None, 0.5, 0.37):
        pairs[f"dgmm-{lam}"] = (
            torch_losses.dgmm_loss(z, labels, lam, perm if lam is not None else None, num_classes=C),
            losses.gaussian_space_loss_with_mix(
                jnp.asarray(z.numpy()), jnp.asarray(labels.numpy()), lam,
                jnp.asarray(perm.numpy()) if lam is not None else None,
                num_classes=C, mixup_label_mode="reference", class_mean_includes_self=True,
            ),
        )  # fmt: skip
    for key, (a, b) in pairs.items():
        a, b = float(a), float(b)
        assert abs(a - b) <= LOSS_RTOL * abs(a), f"{key}: torch {a!r} jax {b!r}"


def test_torch_adam_amsgrad_matches_pytorch_and_optax_amsgrad_does_not() -> None:
    rng = np.random.default_rng(0)
    # Shrinking gradients: the regime where the two AMSGrad maxima differ.
    grads = [rng.normal(size=(5, 7)).astype(np.float32) * (0.7**i) for i in range(30)]
    p0 = rng.normal(size=(5, 7)).astype(np.float32)

    p_t = torch.nn.Parameter(torch.tensor(p0))
    opt_t = torch.optim.Adam([p_t], lr=1e-2, amsgrad=True)
    for g in grads:
        p_t.grad = torch.tensor(g)
        opt_t.step()

    def run(tx: optax.GradientTransformation) -> np.ndarray:
        p = jnp.asarray(p0)
        state = tx.init(p)
        for g in grads:
            updates, state = tx.update(jnp.asarray(g), state, p)
            p = optax.apply_updates(p, updates)
        return np.asarray(p)

    ours = run(torch_adam(1e-2, amsgrad=True))
    np.testing.assert_allclose(ours, p_t.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(run(optax.amsgrad(1e-2)) - p_t.detach().numpy())) > 1e-3

    # Plain Adam too.
    p_t = torch.nn.Parameter(torch.tensor(p0))
    opt_t = torch.optim.Adam([p_t], lr=1e-2)
    for g in grads:
        p_t.grad = torch.tensor(g)
        opt_t.step()
    np.testing.assert_allclose(run(torch_adam(1e-2)), p_t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_adam_matches_pytorch_to_float64_precision() -> None:
    """In float64 the update rule is PyTorch's to rounding (bias corrections included:
    computing 1 - 0.999**t in float32 once moved every update by ~6e-6)."""
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(4, 3)) * (0.8**i) for i in range(40)]
    p0 = rng.normal(size=(4, 3))
    p_t = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt_t = torch.optim.Adam([p_t], lr=1e-3, amsgrad=True)
    for g in grads:
        p_t.grad = torch.tensor(g, dtype=torch.float64)
        opt_t.step()
    with _x64():
        tx = torch_adam(1e-3, amsgrad=True)
        p = jnp.asarray(p0, jnp.float64)
        state = tx.init(p)
        for g in grads:
            updates, state = tx.update(jnp.asarray(g, jnp.float64), state, p)
            p = optax.apply_updates(p, updates)
        assert p.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(p), p_t.detach().numpy(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------
# Files: round trips, reference-style files, errors
# --------------------------------------------------------------------------


def _random_variables(fm: nn.Module, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract_variables(fm))


def _assert_trees_equal(a: dict, b: dict) -> None:
    fa, fb = flatten_dict(a), flatten_dict(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


@pytest.mark.parametrize("legacy_format", [True, False])
def test_round_trip_flax_torch_flax_is_exact_and_loads_strictly(tmp_path: Path, legacy_format: bool) -> None:
    fm = build_model("ferattentionstn", num_classes=7)
    variables = _random_variables(fm)
    path = export_reference_checkpoint(
        variables, "ferattentionstn", tmp_path / "chk.pth.tar", num_classes=7, legacy_format=legacy_format
    )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"epoch", "arch", "imsize", "num_output_channels", "num_input_channels", "num_classes", "state_dict", "prec", "optimizer"} <= set(ckpt)
    assert ckpt["arch"] == "ferattentionstn" and ckpt["num_classes"] == 7 and ckpt["num_output_channels"] == 32
    # The reference's own loader: load_state_dict(strict=True) into the module with the encoder alias.
    tm = build_torch_model("ferattentionstn", num_classes=7, include_encoder_alias=True)
    tm.load_state_dict(ckpt["state_dict"], strict=True)
    back = load_reference_checkpoint(path, "ferattentionstn", num_classes=7)
    _assert_trees_equal(back, variables)


def test_reference_style_file_with_module_prefix_and_numpy_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tm = build_torch_model("ferattention", num_classes=C, include_encoder_alias=True)
    _randomize_(tm, 1)
    plain = build_torch_model("ferattention", num_classes=C)
    plain.load_state_dict({k: v for k, v in tm.state_dict().items() if ".encoder." not in k}, strict=True)
    fm = build_model("ferattention", num_classes=C)
    expected = state_dict_to_variables(plain.state_dict(), abstract_variables(fm))

    sd = {f"module.{k}": v for k, v in tm.state_dict().items()}  # as saved from nn.DataParallel
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 10, "arch": "ferattention", "state_dict": sd, "prec": np.float64(71.5), "optimizer": {"state": {}, "param_groups": []}}, path)
    _assert_trees_equal(load_reference_checkpoint(path, "ferattention", num_classes=C), expected)

    bare = tmp_path / "bare.pth"
    torch.save(tm.state_dict(), bare)
    _assert_trees_equal(load_reference_checkpoint(bare, "ferattention", num_classes=C), expected)

    # A duplicated encoder tensor that disagrees with its alias is reported with both names.
    bad = dict(tm.state_dict())
    bad["attention_map.encoder.layer2.0.conv1.weight"] = bad["attention_map.encoder.layer2.0.conv1.weight"] + 1
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"attention_map\.encoder\.layer2\.0\.conv1\.weight.*attention_map\.conv3\.0\.conv1\.weight"):
        load_reference_checkpoint(tmp_path / "bad.pth", "ferattention", num_classes=C)


def test_torchvision_resnet34_weights_load_into_the_encoder(tmp_path: Path) -> None:
    torch.manual_seed(3)
    resnet = TorchvisionResNet((3, 4, 6, 3), num_classes=1000)
    _randomize_(resnet, 4)
    path = tmp_path / "resnet34.pth"
    torch.save(resnet.state_dict(), path)
    encoder = load_torchvision_resnet34(path)

    tm = build_torch_model("ferattention", num_classes=C, include_encoder_alias=True)
    fm = build_model("ferattention", num_classes=C)
    before = state_dict_to_variables(tm.state_dict(), abstract_variables(fm))
    tm.attention_map.encoder.load_state_dict(resnet.state_dict())  # the reference's pretrained=True
    expected = state_dict_to_variables(tm.state_dict(), abstract_variables(fm))
    _assert_trees_equal(insert_attention_encoder(before, encoder), expected)
    assert not np.array_equal(before["params"]["attention_map"]["conv1"]["0"]["kernel"], expected["params"]["attention_map"]["conv1"]["0"]["kernel"])

    sd = resnet.state_dict()
    del sd["layer3.5.bn2.running_var"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'conv4\.5\.bn2\.running_var' \(model expects shape \(256,\)\)"):
        load_torchvision_resnet34(tmp_path / "broken.pth")


def test_checkpoint_errors_name_the_problem(tmp_path: Path) -> None:
    tm = build_torch_model("preactresnet18", num_classes=C)
    sd = tm.state_dict()

    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"\x80\x02 definitely not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pth.tar"):
        load_reference_checkpoint(corrupt, "preactresnet18", num_classes=C)
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: 50_000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_reference_checkpoint(truncated, "preactresnet18", num_classes=C)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_reference_checkpoint(tmp_path / "nope.pth", "preactresnet18", num_classes=C)

    missing = dict(sd)
    del missing["layer2.0.shortcut.0.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing key 'layer2\.0\.shortcut\.0\.weight' \(model expects shape \(128, 64, 1, 1\)\)"):
        load_reference_checkpoint(tmp_path / "missing.pth", "preactresnet18", num_classes=C)

    unexpected = dict(sd)
    unexpected["layer9.weight"] = torch.zeros(3, 4)
    torch.save(unexpected, tmp_path / "unexpected.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key 'layer9\.weight' \(shape \(3, 4\)\)"):
        load_reference_checkpoint(tmp_path / "unexpected.pth", "preactresnet18", num_classes=C)

    # A C=8 file loaded as C=7: the head's key and both shapes.
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'linear\.weight': checkpoint has \(8, 512\), model expects \(7, 512\)"):
        load_reference_checkpoint(good, "preactresnet18", num_classes=7)


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from feratt_jax.interop import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'feratt-jax\[torch\]'"):
        require_torch()


# --------------------------------------------------------------------------
# model_io and the convert CLI
# --------------------------------------------------------------------------


def test_model_io_round_trip_and_replacement(tmp_path: Path) -> None:
    fm = build_model("resnet18", num_classes=C, dim=16, embedding=True)
    variables = _random_variables(fm, 1)
    save_model(tmp_path, variables, model_name="resnet18", num_classes=C, dim=16, model_options={"embedding": True}, extra={"step": 3})
    module, loaded, spec = load_model(tmp_path)
    assert spec["model_name"] == "resnet18" and spec["extra"] == {"step": 3} and module.dim == 16
    _assert_trees_equal(jax.tree.map(np.asarray, loaded), variables)

    # Saving again replaces the export and leaves a single variables file.
    variables2 = _random_variables(fm, 2)
    save_model(tmp_path, variables2, model_name="resnet18", num_classes=C, dim=16, model_options={"embedding": True})
    assert len(list(tmp_path.glob("variables-*.npz"))) == 1
    _assert_trees_equal(jax.tree.map(np.asarray, load_model(tmp_path)[1]), variables2)
    assert not list(tmp_path.glob(".*tmp"))


def test_model_io_errors_name_the_file(tmp_path: Path) -> None:
    fm = build_model("preactresnet18", num_classes=C)
    variables = _random_variables(fm)
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)
    save_model(tmp_path, variables, model_name="preactresnet18", num_classes=C, dim=32)
    spec = json.loads((tmp_path / "model.json").read_text())
    npz = tmp_path / spec["variables_file"]

    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=spec["variables_file"]):
        load_model(tmp_path)
    # Without the checksum the reader itself must still name the file.
    spec_nohash = dict(spec, variables_sha256=None)
    (tmp_path / "model.json").write_text(json.dumps(spec_nohash))
    with pytest.raises(CheckpointError, match=spec["variables_file"]):
        load_model(tmp_path)
    npz.unlink()
    with pytest.raises(FileNotFoundError, match=spec["variables_file"]):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path)

    # Variables that do not fit the spec'd model: the path and both shapes.
    other = tmp_path / "other"
    save_model(other, variables, model_name="preactresnet18", num_classes=7, dim=32)
    with pytest.raises(CheckpointError, match=r"params/linear/kernel.*\(512, 8\).*\(512, 7\)"):
        load_model(other)


def test_convert_cli_round_trip(tmp_path: Path) -> None:
    from feratt_jax.cli import main

    torch.manual_seed(5)
    tm = build_torch_model("preactresnet18", num_classes=C)
    _randomize_(tm, 6)
    src = tmp_path / "ref.pth.tar"
    torch.save({"epoch": 3, "arch": "preactresnet18", "num_classes": C, "num_output_channels": 32, "state_dict": tm.state_dict(), "prec": 50.0, "optimizer": None}, src)

    # arch / num_classes come from the file.
    assert main(["convert", "--from-torch", str(src), "--out", str(tmp_path / "export")]) == 0
    module, variables, spec = load_model(tmp_path / "export")
    assert spec["extra"]["reference_epoch"] == 3

    assert main(["convert", "--to-torch", str(tmp_path / "export"), "--out", str(tmp_path / "back.pth.tar")]) == 0
    back = torch.load(tmp_path / "back.pth.tar", map_location="cpu", weights_only=True)
    for k, v in tm.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(back["state_dict"][k], v), k

    # Mismatched flags give one error line and exit status 2.
    assert main(["convert", "--from-torch", str(src), "--model", "preactresnet18", "--num-classes", "7", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x" / "model.json").exists()


@pytest.mark.slow
def test_convert_cli_feratt_with_backbone(tmp_path: Path) -> None:
    from feratt_jax.cli import main

    tm = build_torch_model("ferattentiongmm", num_classes=7, dim=16, include_encoder_alias=True, backbone="resnet18")
    src = tmp_path / "bare.pth"
    torch.save(tm.state_dict(), src)
    argv = ["convert", "--from-torch", str(src), "--model", "ferattentiongmm", "--num-classes", "7", "--dim", "16", "--backbone", "resnet", "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    module, _, spec = load_model(tmp_path / "e")
    assert module.backbone == "resnet18" and spec["model_options"] == {"backbone": "resnet18"}
    assert main(["convert", "--to-torch", str(tmp_path / "e"), "--out", str(tmp_path / "b.pth.tar")]) == 0
    back = torch.load(tmp_path / "b.pth.tar", map_location="cpu", weights_only=True)
    tm.load_state_dict(back["state_dict"], strict=True)
    assert back["feratt_jax_model_options"] == {"backbone": "resnet18"}
    assert os.path.getsize(tmp_path / "b.pth.tar") > 100e6
